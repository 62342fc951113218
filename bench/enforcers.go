package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/podgate/podgate/bench/iptables"
	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Setting each enforcer up for a measurement: plain routing, the iptables
// baseline (package iptables), and the podgate agent in its configurations.

// measureNone measures plain kernel routing.
func (e *env) measureNone(ctx context.Context) error {
	r := Result{Enforcer: EnforcerNone}
	if err := e.verify(ctx, EnforcerNone, true); err != nil {
		return err
	}
	if err := e.measureAll(ctx, &r); err != nil {
		return err
	}
	e.add(r)
	return nil
}

// compiledSet is the manifests of a policy count, compiled.
type compiledSet struct {
	m   *policy.Manifests
	t   *table.Table
	dur time.Duration // median of three compiles
}

// compiled loads and compiles the manifests of a policy count in-process,
// three times, the first time it is asked for that count, and returns the
// result and the median compile time.
func (e *env) compiled(p int) (*policy.Manifests, *table.Table, time.Duration, error) {
	if c, ok := e.compiledSets[p]; ok {
		return c.m, c.t, c.dur, nil
	}
	m, t, d, err := compilePolicies(e.dirs[p])
	if err != nil {
		return nil, nil, 0, err
	}
	e.compiledSets[p] = compiledSet{m: m, t: t, dur: d}
	return m, t, d, nil
}

func compilePolicies(dir string) (*policy.Manifests, *table.Table, time.Duration, error) {
	m, err := policy.Load(dir)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("bench: %w", err)
	}
	var t *table.Table
	var ds []time.Duration
	for range 3 {
		start := time.Now()
		t, err = policy.Compile(&m.Cluster)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("bench: %w", err)
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return m, t, ds[1], nil
}

// measureIPTables applies the kernel rules for policy count p, verifies
// them and measures (everything, or with flows given, the forwarding rate
// with that many flows tracked).
func (e *env) measureIPTables(ctx context.Context, p int, flows *int) (err error) {
	m, t, compileDur, err := e.compiled(p)
	if err != nil {
		return err
	}
	kstart := time.Now()
	rules, err := iptables.Compile(&m.Cluster, t, NodeName)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	kernelCompile := time.Since(kstart)
	node := e.lab.Node().NS
	if err := iptables.Clear(ctx, node); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer func() {
		if cerr := iptables.Clear(context.WithoutCancel(ctx), node); cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench: %w", cerr))
		}
	}()
	applyDur, err := iptables.Apply(ctx, node, rules)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if flows == nil && !e.busy {
		_ = os.WriteFile(filepath.Join(e.cfg.Out, fmt.Sprintf("iptables-%d.rules", p)), []byte(rules.IPTables), 0o644)
		_ = os.WriteFile(filepath.Join(e.cfg.Out, fmt.Sprintf("ipset-%d.restore", p)), []byte(rules.IPSet), 0o644)
		for _, n := range rules.Notes {
			e.report.note("iptables: " + n)
		}
		mem, err := iptables.SetMemory(ctx, node)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		e.report.Control = append(e.report.Control, Control{
			Enforcer: EnforcerIPTables, Policies: p,
			CompileSeconds: compileDur.Seconds(), RuleCompileSeconds: kernelCompile.Seconds(), ApplySeconds: applyDur.Seconds(),
			Rules: rules.Rules, Chains: rules.Chains, Sets: rules.Sets, SetMembers: rules.Members, KernelSetBytes: mem,
		})
	}
	if flows == nil {
		if err := e.verify(ctx, EnforcerIPTables, false); err != nil {
			return err
		}
	}
	return e.measureEnforcer(ctx, EnforcerIPTables, p, flows, func() (float64, error) {
		return kernelConntrackCount(node)
	})
}

// measureEnforcer measures an enforcer that is in place: everything, or
// with flows, the prefill and the forwarding rate. entries reads the
// enforcer's conntrack size.
func (e *env) measureEnforcer(ctx context.Context, enforcer string, p int, flows *int, entries func() (float64, error)) error {
	r := Result{Enforcer: enforcer, Policies: p}
	if flows == nil {
		if err := e.measureAll(ctx, &r); err != nil {
			return err
		}
		e.add(r)
		return nil
	}
	ph := e.begin()
	r.Flows = *flows
	// Prefill at 80% of the rate this enforcer forwarded without the
	// flows, or, if it lost packets at every rate, at 30% of what it
	// forwarded saturated.
	rate := 0.2 * e.genCap
	if base := e.find(enforcer, p, 0); base != nil && base.Forwarding != nil {
		rate = 0.8 * base.Forwarding.Rate
		if rate == 0 {
			rate = 0.3 * base.Forwarding.Saturated
		}
	}
	rate = max(rate, 1000)
	// Passes until 99% of the flows are tracked or a pass adds less than
	// 1% of them (a full kernel table: nf_conntrack_max is host-wide and
	// left alone). Each pass goes at half the rate of the one before
	// until a pass would take longer than half the UDP timeout (every
	// pass sends every flow, so none of the tracked ones expires); then
	// at that rate, for at most prefillBudget. An enforcer that judges
	// first packets in user space admits new flows more slowly than the
	// kernel does, and when offered them faster than that it admits
	// fewer still (each pass's admission rate is in the report): later,
	// slower passes fill its table.
	minRate := float64(*flows) / prefillPassMax.Seconds()
	rate = max(rate, minRate)
	prefillStart := time.Now()
	for pass := 0; ; pass++ {
		e.logf("%s, %d policies, %d flows: prefill pass %d at %.0f pps", enforcer, p, *flows, pass+1, rate)
		s, err := e.prefill(ctx, *flows, rate)
		if err != nil {
			return err
		}
		r.PrefillSent += s.Frames
		// Let the enforcer finish the last batch and publish its counters.
		time.Sleep(300 * time.Millisecond)
		n, err := entries()
		if err != nil {
			return err
		}
		grew := n - r.ConntrackBefore
		r.ConntrackBefore = n
		r.Prefill = append(r.Prefill, PrefillPass{Rate: rate, Sent: s.Frames, Seconds: s.Elapsed.Seconds(), Tracked: n, Admitted: grew / s.Elapsed.Seconds()})
		e.logf("  %d sent in %.1fs, %.0f tracked (%.0f new flows/s admitted)", s.Frames, s.Elapsed.Seconds(), n, grew/s.Elapsed.Seconds())
		if n >= 0.99*float64(*flows) || (pass > 0 && grew < 0.01*float64(*flows)) || time.Since(prefillStart) > prefillBudget {
			break
		}
		rate = max(rate/2, minRate)
	}
	// The search goes round-robin through all the flows, so that they
	// stay tracked (unreplied UDP flows expire after 30 s) and every
	// packet looks up another entry of the full table.
	fw, err := e.searchRate(ctx, *flows)
	if err != nil {
		return err
	}
	r.Forwarding = &fw
	if r.ConntrackAfter, err = entries(); err != nil {
		return err
	}
	e.end(ph, &r)
	e.logf("  %.0f pps (saturated %.0f), %.0f tracked after", fw.Rate, fw.Saturated, r.ConntrackAfter)
	e.add(r)
	return nil
}

// prefillPassMax is the longest prefill pass: half the agent's UDP
// timeout (30 s), so that no flow of a pass expires before the next pass
// sends it again. prefillBudget bounds the prefill's passes.
const (
	prefillPassMax = 15 * time.Second
	prefillBudget  = 2 * time.Minute
)

// defaultConntrackMax is the agent's --conntrack-max default, which the
// bench passes unless the flow table needs more.
const defaultConntrackMax = 262144

// agentArgs returns the arguments of `podgate agent` for a configuration
// on lab l (--manifests, --node-name and --metrics-addr come from the
// lab).
func agentArgs(l *lab.Lab, pg podgateRun, ctMax int) []string {
	args := []string{
		"--state-dir", filepath.Join(l.Dir(), "agent-state"),
		"--conntrack-max", strconv.Itoa(ctMax),
		"--log-level", "warn",
	}
	return append(args, pg.args...)
}

// measurePodgate starts an agent configuration for policy count p (with
// --conntrack-max fitting flows), pins it, verifies and measures.
func (e *env) measurePodgate(ctx context.Context, pg podgateRun, p int, flows *int) (err error) {
	ctMax := defaultConntrackMax
	if flows != nil {
		ctMax = max(ctMax, *flows+*flows/8)
	}
	start := time.Now()
	if err := e.lab.StartAgent(ctx, e.cfg.AgentBinary, agentArgs(e.lab, pg, ctMax)...); err != nil {
		return fmt.Errorf("bench: %s (agent arguments %q): %w", pg.enforcer, pg.args, err)
	}
	ready := time.Since(start)
	defer func() {
		if serr := e.lab.StopAgent(syscall.SIGTERM); serr != nil {
			err = errors.Join(err, fmt.Errorf("bench: %s: %w", pg.enforcer, serr))
		}
	}()
	if e.pin {
		if err := pinProcess(e.lab.AgentPID(), cpuSet(e.cfg.EnforcerCPU)); err != nil {
			return fmt.Errorf("bench: pin agent: %w", err)
		}
	}
	want := float64(p + BenchPolicies)
	met, err := e.waitMetric(ctx, "podgate_table_policies", want)
	if err != nil {
		return err
	}
	e.logf("%s, %d policies: agent ready in %.1fs, table of %.0f pods compiled in %.0f ms",
		pg.enforcer, p, ready.Seconds(), met.Get("podgate_table_endpoints"), 1000*met.Get("podgate_table_compile_duration_seconds"))
	if flows == nil {
		if err := e.verify(ctx, pg.enforcer, false); err != nil {
			return err
		}
		if !e.busy {
			_, _, compileDur, err := e.compiled(p)
			if err != nil {
				return err
			}
			e.report.Control = append(e.report.Control, Control{
				Enforcer: pg.enforcer, Policies: p,
				CompileSeconds:      compileDur.Seconds(),
				AgentCompileSeconds: met.Get("podgate_table_compile_duration_seconds"),
				AgentReadySeconds:   ready.Seconds(),
				Rules:               int(met.Get("podgate_table_rules")),
				RSSBytes:            met.Get("process_resident_memory_bytes"),
				ConntrackCapacity:   ctMax,
			})
		}
	}
	if err := e.measureEnforcer(ctx, pg.enforcer, p, flows, func() (float64, error) {
		m, err := e.metrics(ctx)
		if err != nil {
			return 0, err
		}
		return m.Get("podgate_conntrack_entries"), nil
	}); err != nil {
		return err
	}
	m, err := e.metrics(ctx)
	if err != nil {
		return err
	}
	rss := m.Get("process_resident_memory_bytes")
	switch {
	case e.busy:
	case flows != nil:
		e.report.Control = append(e.report.Control, Control{
			Enforcer: pg.enforcer, Policies: p, Flows: *flows,
			RSSBytes: rss, ConntrackCapacity: ctMax,
			AgentCompileSeconds: m.Get("podgate_table_compile_duration_seconds"),
		})
	default:
		if c := e.report.control(pg.enforcer, p, 0); c != nil {
			c.RSSAfterBytes = rss
		}
	}
	e.report.addDrops(pg.enforcer, e.busy, p, flows, m)
	return nil
}
