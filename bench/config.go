package bench

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// The configuration of a bench run: what is measured, at which sizes, for how long.

// Enforcer names in results.
const (
	EnforcerNone     = "none"
	EnforcerIPTables = "iptables"
	EnforcerPodgate  = "podgate"
)

// Config describes a bench run. Zero fields take the defaults of
// [FullConfig].
type Config struct {
	// AgentBinary is the podgate binary the agent runs from (required).
	AgentBinary string
	// AgentArgs are extra arguments for `podgate agent` (for example
	// --busy-poll=1ms); the report records them.
	AgentArgs []string
	// Out is the directory results are written to (required).
	Out string
	// Quick marks a quick run (for the report only; the sizes below
	// decide what runs).
	Quick bool
	// Namespaces and PodsPerNamespace size the synthetic cluster in the
	// table (default 1,000 × 10 = 10,000 pods).
	Namespaces, PodsPerNamespace int
	// Policies are the synthetic policy counts measured (default 0, 100,
	// 2,000); the bench namespace's own BenchPolicies come on top.
	Policies []int
	// Flows are the conntrack sizes measured, with the largest policy
	// count (default 100,000 and 1,000,000).
	Flows []int
	// Step is the duration of one rate-search trial (default 3s);
	// MaxTrials bounds a search (default 10).
	Step      time.Duration
	MaxTrials int
	// MeasureFlows is the number of UDP flows of the forwarding-rate
	// measurement (default 1,000).
	MeasureFlows int
	// TCPDuration, ConnDuration and LatencyDuration are the lengths of
	// the iperf3, connection-rate and latency runs (default 5s each).
	TCPDuration, ConnDuration, LatencyDuration time.Duration
	// ConnWorkers is the number of parallel connection openers (default 8).
	ConnWorkers int
	// LatencyRate is the ping-pong rate (default 1,000/s).
	LatencyRate float64
	// EnforcerCPU runs the agent and steers the kernel's forwarding to it
	// (RPS on the node ends of the pods' veths); the bench process, its
	// generator and iperf3 run on LoadCPU. Default 0 and 1; equal values
	// (on a one-CPU machine) turn pinning off.
	EnforcerCPU, LoadCPU int
	// Enforcers are the enforcers measured (default none, iptables,
	// podgate and every variant's "podgate-NAME": ratios need the first
	// three).
	Enforcers []string
	// Variants are agent configurations measured besides the agent with
	// default flags, each under its own enforcer name (nil:
	// [DefaultVariants]; empty: none).
	Variants []Variant
	// BusyNode measures everything a second time with a CPU hog on every
	// CPU ([StartHogs]), after the quiet run; the report then has both.
	// BusyFlows are the flow counts of the busy pass (nil: Flows).
	BusyNode  bool
	BusyFlows []int
	// IdlePods is the number of pods on the node of the idle-cost lab
	// (default 100; negative: no idle-cost measurement), IdleDuration its
	// window (default 10s).
	IdlePods     int
	IdleDuration time.Duration
	// Prefix names the lab (default "pgbench").
	Prefix string
	// Log receives progress lines (default io.Discard).
	Log io.Writer
}

// FullConfig returns the defaults: the full bench.
func FullConfig() Config {
	return Config{
		Namespaces: 1000, PodsPerNamespace: 10,
		Policies:  []int{0, 100, 2000},
		Flows:     []int{100_000, 1_000_000},
		Step:      3 * time.Second,
		MaxTrials: 10, MeasureFlows: 1000,
		TCPDuration: 5 * time.Second, ConnDuration: 5 * time.Second, LatencyDuration: 5 * time.Second,
		ConnWorkers: 8, LatencyRate: 1000,
		EnforcerCPU: 0, LoadCPU: 1,
		IdlePods: 100, IdleDuration: 10 * time.Second,
		Prefix: "pgbench",
	}
}

// QuickConfig returns the quick bench: 0 and 2,000 policies, 100,000
// flows, one-second steps; a busy pass leaves the flow table out. With
// one variant it takes about four minutes, six with the busy pass.
func QuickConfig() Config {
	c := FullConfig()
	c.Quick = true
	c.Policies = []int{0, 2000}
	c.Flows = []int{100_000}
	c.BusyFlows = []int{}
	c.Step = time.Second
	c.MaxTrials = 7
	c.TCPDuration, c.ConnDuration, c.LatencyDuration = 2*time.Second, 2*time.Second, 2*time.Second
	return c
}

func (c Config) withDefaults() Config {
	d := FullConfig()
	c.Namespaces = cmp.Or(c.Namespaces, d.Namespaces)
	c.PodsPerNamespace = cmp.Or(c.PodsPerNamespace, d.PodsPerNamespace)
	if c.Policies == nil {
		c.Policies = d.Policies
	}
	if c.Flows == nil {
		c.Flows = d.Flows
	}
	if c.BusyFlows == nil {
		c.BusyFlows = c.Flows
	}
	c.Step = cmp.Or(c.Step, d.Step)
	c.MaxTrials = cmp.Or(c.MaxTrials, d.MaxTrials)
	c.MeasureFlows = cmp.Or(c.MeasureFlows, d.MeasureFlows)
	c.TCPDuration = cmp.Or(c.TCPDuration, d.TCPDuration)
	c.ConnDuration = cmp.Or(c.ConnDuration, d.ConnDuration)
	c.LatencyDuration = cmp.Or(c.LatencyDuration, d.LatencyDuration)
	c.ConnWorkers = cmp.Or(c.ConnWorkers, d.ConnWorkers)
	c.LatencyRate = cmp.Or(c.LatencyRate, d.LatencyRate)
	c.Prefix = cmp.Or(c.Prefix, d.Prefix)
	if c.Variants == nil {
		c.Variants = DefaultVariants()
	}
	if c.Enforcers == nil {
		c.Enforcers = c.knownEnforcers()
	}
	c.IdlePods = cmp.Or(c.IdlePods, d.IdlePods)
	c.IdleDuration = cmp.Or(c.IdleDuration, d.IdleDuration)
	if c.Log == nil {
		c.Log = io.Discard
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.AgentBinary == "" {
		errs = append(errs, errors.New("agent binary: required"))
	}
	if c.Out == "" {
		errs = append(errs, errors.New("output directory: required"))
	}
	if len(c.Policies) == 0 {
		errs = append(errs, errors.New("policies: at least one count"))
	}
	for _, p := range c.Policies {
		if p < 0 {
			errs = append(errs, fmt.Errorf("policies %d: must not be negative", p))
		}
	}
	for _, f := range append(slices.Clone(c.Flows), c.BusyFlows...) {
		if f < c.MeasureFlows || f > (FloodPortHi-FloodPortLo+1)*FloodSrcN {
			errs = append(errs, fmt.Errorf("flows %d: want %d to %d", f, c.MeasureFlows, (FloodPortHi-FloodPortLo+1)*FloodSrcN))
		}
	}
	if c.MeasureFlows < 1 || c.MeasureFlows > FloodSrcN*(FloodPortHi-FloodPortLo+1) {
		errs = append(errs, fmt.Errorf("measure flows %d: out of range", c.MeasureFlows))
	}
	if c.Namespaces < 1 || c.PodsPerNamespace < 1 || c.Namespaces*c.PodsPerNamespace > 1<<20 {
		errs = append(errs, errors.New("cluster size: out of range"))
	}
	if err := validateVariants(c.Variants); err != nil {
		errs = append(errs, err)
	}
	for _, e := range c.Enforcers {
		if !slices.Contains(c.knownEnforcers(), e) {
			errs = append(errs, fmt.Errorf("enforcer %q: want one of %v", e, c.knownEnforcers()))
		}
	}
	if c.IdlePods > maxIdlePods || (c.IdlePods > 0 && c.IdlePods < 3) {
		errs = append(errs, fmt.Errorf("idle pods %d: want 3 to %d (the bench's 3 pods and more), or negative for none", c.IdlePods, maxIdlePods))
	}
	if c.IdleDuration < 0 {
		errs = append(errs, fmt.Errorf("idle duration %v: must not be negative", c.IdleDuration))
	}
	if c.EnforcerCPU < 0 || c.LoadCPU < 0 || c.EnforcerCPU >= 64 || c.LoadCPU >= 64 {
		errs = append(errs, errors.New("cpus: out of range"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench config: %w", errors.Join(errs...))
	}
	return nil
}
