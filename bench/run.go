package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy/table"
)

// env is the state of a run.
type env struct {
	cfg     Config
	lab     *lab.Lab
	client  *lab.Endpoint
	server  *lab.Endpoint
	gen     *Generator
	genCap  float64
	dirs    map[int]string // manifests per policy count
	pin     bool
	report  *Report
	started time.Time
	// busy is set during the busy-node pass, whose hogs are hogs.
	busy bool
	hogs *Hogs
	// compiledSets caches the in-process compile of each policy count.
	compiledSets map[int]compiledSet
}

func (e *env) logf(format string, args ...any) {
	tag := ""
	if e.busy {
		tag = "busy node: "
	}
	fmt.Fprintf(e.cfg.Log, "[%6.1fs] %s%s\n", time.Since(e.started).Seconds(), tag, fmt.Sprintf(format, args...))
}

// add records a result: a quiet one of none, iptables or podgate in
// Report.Results, a quiet variant's in VariantResults, and every result
// of the busy-node pass in BusyResults.
func (e *env) add(r Result) {
	switch {
	case e.busy:
		e.report.BusyResults = append(e.report.BusyResults, r)
	case slices.Contains(enforcers(), r.Enforcer):
		e.report.Results = append(e.report.Results, r)
	default:
		e.report.VariantResults = append(e.report.VariantResults, r)
	}
}

// find returns a result of the current pass.
func (e *env) find(enforcer string, policies, flows int) *Result {
	return e.report.lookup(e.busy, enforcer, policies, flows)
}

// phase is the start of a measurement, for its load and hogs' share.
type phase struct{ hogs HogSample }

func (e *env) begin() phase {
	var ph phase
	if e.hogs != nil {
		ph.hogs, _ = e.hogs.Sample()
	}
	return ph
}

// end records the load average and, on a busy node, the hogs' CPU share
// since ph.
func (e *env) end(ph phase, r *Result) {
	r.Load = loadAvg()
	if e.hogs != nil && ph.hogs.cpu != nil {
		if s, err := e.hogs.Sample(); err == nil {
			r.HogShare, _ = ph.hogs.Share(s)
		}
	}
}

// Run builds the lab, measures every enforcer and returns the report. It
// needs root. Everything it creates (namespaces, the agent, iperf3, XDP
// programs, iptables rules and ipsets, all inside the lab's namespaces) is
// removed before it returns, also on failure or when ctx is cancelled.
func Run(ctx context.Context, cfg Config) (_ *Report, err error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: needs root (network namespaces, XDP, iptables)")
	}
	e := &env{cfg: cfg, started: time.Now(), dirs: map[int]string{}, compiledSets: map[int]compiledSet{}}
	e.report = &Report{
		Started: e.started, Quick: cfg.Quick, Machine: machineInfo(),
		Cluster: ClusterSize{Namespaces: cfg.Namespaces, Pods: cfg.Namespaces * cfg.PodsPerNamespace, BenchPolicies: BenchPolicies},
		Settings: Settings{
			Step: cfg.Step.Seconds(), MaxTrials: cfg.MaxTrials, MaxLoss: DefaultMaxLoss, MeasureFlows: cfg.MeasureFlows,
			FrameBytes: FrameLen, TCPSeconds: cfg.TCPDuration.Seconds(), ConnSeconds: cfg.ConnDuration.Seconds(),
			ConnWorkers: cfg.ConnWorkers, LatencySeconds: cfg.LatencyDuration.Seconds(), LatencyRate: cfg.LatencyRate,
			Policies: cfg.Policies, Flows: cfg.Flows, AgentArgs: cfg.AgentArgs,
		},
		Variants: cfg.Variants,
	}
	if cfg.BusyNode {
		e.report.Settings.BusyFlows = cfg.BusyFlows
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if err := EnsureTools(ctx, cfg.Log); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if err := checkAgentArgs(ctx, cfg.AgentBinary, cfg.podgateRuns()); err != nil {
		return nil, err
	}
	e.report.Baseline = baselineVersions(ctx)
	e.logf("writing manifests: %d pods, policies %v", e.report.Cluster.Pods, cfg.Policies)
	for _, p := range cfg.Policies {
		dir := filepath.Join(cfg.Out, "manifests", fmt.Sprintf("policies-%d", p))
		if err := writeManifests(dir, cfg.Namespaces, cfg.PodsPerNamespace, p, 0); err != nil {
			return nil, err
		}
		e.dirs[p] = dir
	}

	e.logf("building the lab")
	e.lab, err = lab.Build(ctx, lab.Spec{
		Manifests: []string{e.dirs[cfg.Policies[0]]}, NodeName: NodeName, Prefix: cfg.Prefix,
		Enforcer: lab.EnforcerNone, ProbeTimeout: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer func() {
		if cerr := e.lab.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := e.setUp(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if cerr := e.tearDown(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	if err := e.measureGenerator(ctx); err != nil {
		return nil, err
	}
	if err := e.measurePass(ctx, cfg.Flows); err != nil {
		return nil, err
	}
	if cfg.IdlePods > 0 && len(cfg.podgateRuns()) > 0 {
		if err := e.measureIdle(ctx); err != nil {
			return nil, err
		}
	}
	if cfg.BusyNode {
		if err := e.measureBusy(ctx); err != nil {
			return nil, err
		}
	}
	e.report.explain(cfg)
	e.report.Finished = time.Now()
	e.report.Seconds = e.report.Finished.Sub(e.started).Seconds()
	e.report.LoadAtEnd = loadAvg()
	e.report.evaluate()
	e.logf("done in %.0fs", e.report.Seconds)
	return e.report, nil
}

// measurePass measures every enforcer: plain routing, then for each
// policy count iptables and every agent configuration, then the same with
// the flow table full, for each count of flows.
func (e *env) measurePass(ctx context.Context, flows []int) error {
	runs := func(name string) bool { return slices.Contains(e.cfg.Enforcers, name) }
	pgs := e.cfg.podgateRuns()
	if runs(EnforcerNone) {
		if err := e.measureNone(ctx); err != nil {
			return err
		}
	}
	for _, p := range e.cfg.Policies {
		if err := e.lab.Apply(e.dirs[p]); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if runs(EnforcerIPTables) {
			if err := e.measureIPTables(ctx, p, nil); err != nil {
				return err
			}
		}
		for _, pg := range pgs {
			if err := e.measurePodgate(ctx, pg, p, nil); err != nil {
				return err
			}
		}
	}
	last := e.cfg.Policies[len(e.cfg.Policies)-1]
	for _, f := range flows {
		if runs(EnforcerIPTables) {
			if err := e.measureIPTables(ctx, last, &f); err != nil {
				return err
			}
		}
		for _, pg := range pgs {
			if err := e.measurePodgate(ctx, pg, last, &f); err != nil {
				return err
			}
		}
	}
	return nil
}

// measureBusy starts a hog on every CPU and measures the generator and
// every enforcer again.
func (e *env) measureBusy(ctx context.Context) (err error) {
	cpus := e.report.Machine.CPUs
	hogs, err := StartHogs(cpus, hogName(e.cfg.Prefix, os.Getpid()))
	if err != nil {
		return fmt.Errorf("bench: busy node: %w", err)
	}
	bn := &BusyNode{Hogs: cpus, Command: "sh -c '" + hogScript + "'", LoadAtStart: loadAvg()}
	e.report.BusyNode = bn
	start, serr := hogs.Sample()
	e.busy, e.hogs = true, hogs
	e.logf("%d CPU hogs (nice 0, one pinned to each CPU)", cpus)
	defer func() {
		e.busy, e.hogs = false, nil
		end, eerr := hogs.Sample()
		if serr == nil && eerr == nil {
			bn.HogShare, bn.HogSharePerCPU = start.Share(end)
			bn.Seconds = end.at.Sub(start.at).Seconds()
		}
		bn.LoadAtEnd = loadAvg()
		if herr := hogs.Stop(); herr != nil {
			err = errors.Join(err, fmt.Errorf("bench: busy node: %w", herr))
		}
	}()
	if serr != nil {
		return fmt.Errorf("bench: busy node: %w", serr)
	}
	if err := e.measureGenerator(ctx); err != nil {
		return err
	}
	return e.measurePass(ctx, e.cfg.BusyFlows)
}

// measureGenerator measures the generator into the sink over a veth pair
// of their own between the client's and the server's namespaces: the
// ceiling of every forwarding figure.
func (e *env) measureGenerator(ctx context.Context) (err error) {
	e.logf("generator capacity (direct veth pair)")
	v, err := netns.AddVeth(netns.VethConfig{NS: e.client.NS, Name: "bgen0", PeerNS: e.server.NS, PeerName: "bsink0"})
	if err != nil {
		return fmt.Errorf("bench: generator pair: %w", err)
	}
	defer func() {
		h, herr := e.client.NS.Handle()
		if herr != nil {
			err = errors.Join(err, herr)
			return
		}
		defer h.Close()
		if l, lerr := h.LinkByIndex(v.Index); lerr == nil {
			err = errors.Join(err, h.LinkDel(l))
		}
	}()
	sink, err := NewSink(e.server.NS, "bsink0", FloodPortLo, FloodPortHi)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer func() { err = errors.Join(err, sink.Close()) }()
	g, err := NewGenerator(GeneratorConfig{
		NS: e.client.NS, Ifname: "bgen0", SrcMAC: v.MAC, DstMAC: v.PeerMAC,
		Src: e.client.IPs[0], Dst: e.server.IPs[0],
		SrcPortBase: FloodSrcBase, SrcPorts: FloodSrcN, DstPortBase: FloodPortLo,
	})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer func() { err = errors.Join(err, g.Close()) }()
	// Warm up, then measure.
	if _, err := g.Send(ctx, Offer{Duration: 200 * time.Millisecond, Flows: e.cfg.MeasureFlows}); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	t, err := forwardingTrial(g, sink, 2*e.cfg.Step, 0, e.cfg.MeasureFlows, nil)(ctx, 0)
	if err != nil {
		return fmt.Errorf("bench: generator capacity: %w", err)
	}
	e.genCap = t.Delivered
	gc := GeneratorCapacity{PPS: t.Delivered, OfferedPPS: t.Offered, Sent: t.Sent, Received: t.Received}
	if e.busy {
		e.report.BusyNode.Generator = gc
	} else {
		e.report.Generator = gc
	}
	e.logf("generator: %.0f pps offered, %.0f pps counted", t.Offered, t.Delivered)
	if e.genCap <= 0 {
		return errors.New("bench: the generator sent nothing")
	}
	return nil
}

// measureAll runs the forwarding-rate search, iperf3, the connection rate
// and the latency for one enforcer set-up. The latency is measured in
// latencyTrials trials spread between the others (see [latencyTrials]).
func (e *env) measureAll(ctx context.Context, r *Result) error {
	ph := e.begin()
	var lats []Latency
	latency := func() error {
		lat, err := e.latencyTrial(ctx)
		if err != nil {
			return fmt.Errorf("bench: %s: %w", r.Enforcer, err)
		}
		lats = append(lats, lat)
		return nil
	}
	e.logf("%s, %d policies: forwarding rate", r.Enforcer, r.Policies)
	fw, err := e.searchRate(ctx, e.cfg.MeasureFlows)
	if err != nil {
		return err
	}
	r.Forwarding = &fw
	e.logf("  %.0f pps (saturated %.0f, %d trials)", fw.Rate, fw.Saturated, len(fw.Trials))
	if err := latency(); err != nil {
		return err
	}
	ip, err := runIPerf(ctx, e.client.NS, e.server.NS, e.client.IPs[0], e.server.IPs[0], e.cfg.TCPDuration, e.loadSet())
	if err != nil {
		return fmt.Errorf("bench: %s: %w", r.Enforcer, err)
	}
	r.TCP = &ip
	e.logf("  iperf3 %.2f Gbit/s, %d retransmits", ip.BitsPerSecond/1e9, ip.Retransmits)
	if err := latency(); err != nil {
		return err
	}
	cr, err := runConnRateTrials(ctx, connTrials, e.client.NS, e.server.NS, e.server.IPs[0], e.cfg.ConnWorkers, e.cfg.ConnDuration)
	if err != nil {
		return fmt.Errorf("bench: %s: %w", r.Enforcer, err)
	}
	r.Conn = &cr
	e.logf("  %.0f connections/s, median of %.0f (%d failed)", cr.PerSecond, cr.Trials, cr.Failed)
	for len(lats) < latencyTrials {
		if err := latency(); err != nil {
			return err
		}
	}
	lat := mergeLatency(lats)
	r.Latency = &lat
	var trials []string
	for _, t := range lat.Trials {
		trials = append(trials, fmt.Sprintf("%.1f", t.P99))
	}
	e.logf("  latency p50 %.1f µs, p99 %.1f µs (trials' p99 %s µs; %d lost)", lat.P50, lat.P99, strings.Join(trials, ", "), lat.Lost)
	e.end(ph, r)
	return nil
}

// latencyTrial runs one latency trial with RPS off.
func (e *env) latencyTrial(ctx context.Context) (Latency, error) {
	if err := e.steer(ctx, false); err != nil {
		return Latency{}, err
	}
	lat, err := runLatency(ctx, e.client.NS, e.server.NS, e.client.IPs[0], e.server.IPs[0], e.cfg.LatencyRate, e.cfg.LatencyDuration)
	if serr := e.steer(ctx, true); serr != nil {
		err = errors.Join(err, serr)
	}
	return lat, err
}

// searchRate attaches the sink to the server's eth0 and searches the
// forwarding rate over flows flows (round-robin across trials).
func (e *env) searchRate(ctx context.Context, flows int) (_ SearchResult, err error) {
	sink, err := NewSink(e.server.NS, "eth0", FloodPortLo, FloodPortHi)
	if err != nil {
		return SearchResult{}, fmt.Errorf("bench: %w", err)
	}
	defer func() { err = errors.Join(err, sink.Close()) }()
	run := forwardingTrial(e.gen, sink, e.cfg.Step, 0, flows, func() (map[string]uint64, error) {
		return e.dropCounters()
	})
	// Warm up: conntrack entries, caches, the agent's learning of MACs.
	if _, err := run(ctx, 10000); err != nil {
		return SearchResult{}, fmt.Errorf("bench: warm-up: %w", err)
	}
	res, err := Search(ctx, SearchConfig{Max: e.genCap, MaxTrials: e.cfg.MaxTrials}, run)
	if err != nil {
		return res, fmt.Errorf("bench: %w", err)
	}
	return res, nil
}

// prefill sends flows distinct flows once each at rate, for the
// flow-table measurements.
func (e *env) prefill(ctx context.Context, flows int, rate float64) (Sent, error) {
	sink, err := NewSink(e.server.NS, "eth0", FloodPortLo, FloodPortHi)
	if err != nil {
		return Sent{}, fmt.Errorf("bench: %w", err)
	}
	defer sink.Close()
	d := time.Duration(float64(flows)/rate*float64(time.Second)) + 5*time.Second
	s, err := e.gen.Send(ctx, Offer{Rate: rate, Duration: d, Count: uint64(flows), Flows: flows})
	if err != nil {
		return s, fmt.Errorf("bench: prefill: %w", err)
	}
	return s, nil
}

// verify probes an allowed pair and two denied ones (or, without
// enforcement, only that they all connect) and records the outcome; a
// wrong outcome fails the run.
func (e *env) verify(ctx context.Context, enforcer string, none bool) error {
	checks := []Check{
		{From: ClientPod, To: ServerPod, Port: ProbePort, Expected: "allow"},
		{From: OtherPod, To: ServerPod, Port: ProbePort, Expected: "deny"},
		{From: ClientPod, To: ServerPod, Port: DeniedPort, Expected: "deny"},
	}
	// The probes run at once: a denied one waits for its timeout. A probe
	// that should connect and does not is made again, up to
	// allowAttempts times: on a loaded machine a SYN can wait longer than
	// the probe timeout, but no delay makes a denied connection succeed.
	results := make([]lab.Result, len(checks))
	attempts := make([]int, len(checks))
	perr := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			for attempts[i] < allowAttempts {
				attempts[i]++
				results[i], perr[i] = e.lab.ProbeResult(ctx, c.From, c.To, table.PortSpec{Port: uint16(c.Port), Protocol: table.TCP})
				if perr[i] != nil || results[i].Observed || (c.Expected == "deny" && !none) {
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(perr...); err != nil {
		return fmt.Errorf("bench: verify %s: %w", enforcer, err)
	}
	var errs []error
	for i, c := range checks {
		c.Enforcer, c.Busy = enforcer, e.busy
		if none {
			c.Expected = "allow"
		}
		c.Observed = "deny"
		if results[i].Observed {
			c.Observed = "allow"
		}
		c.Attempts, c.Detail = attempts[i], results[i].Detail
		e.report.Checks = append(e.report.Checks, c)
		if c.Observed != c.Expected {
			errs = append(errs, fmt.Errorf("%s → %s TCP %d: %s (%d attempts: %s), expected %s", c.From, c.To, c.Port, c.Observed, c.Attempts, c.Detail, c.Expected))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: %s does not enforce as expected: %w", enforcer, errors.Join(errs...))
	}
	return nil
}

// allowAttempts is how many times a probe that should connect is made
// before the check fails.
const allowAttempts = 3
