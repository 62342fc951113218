package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

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
	if c.Namespaces == 0 {
		c.Namespaces = d.Namespaces
	}
	if c.PodsPerNamespace == 0 {
		c.PodsPerNamespace = d.PodsPerNamespace
	}
	if c.Policies == nil {
		c.Policies = d.Policies
	}
	if c.Flows == nil {
		c.Flows = d.Flows
	}
	if c.BusyFlows == nil {
		c.BusyFlows = c.Flows
	}
	if c.Step == 0 {
		c.Step = d.Step
	}
	if c.MaxTrials == 0 {
		c.MaxTrials = d.MaxTrials
	}
	if c.MeasureFlows == 0 {
		c.MeasureFlows = d.MeasureFlows
	}
	if c.TCPDuration == 0 {
		c.TCPDuration = d.TCPDuration
	}
	if c.ConnDuration == 0 {
		c.ConnDuration = d.ConnDuration
	}
	if c.LatencyDuration == 0 {
		c.LatencyDuration = d.LatencyDuration
	}
	if c.ConnWorkers == 0 {
		c.ConnWorkers = d.ConnWorkers
	}
	if c.LatencyRate == 0 {
		c.LatencyRate = d.LatencyRate
	}
	if c.Prefix == "" {
		c.Prefix = d.Prefix
	}
	if c.Variants == nil {
		c.Variants = DefaultVariants()
	}
	if c.Enforcers == nil {
		c.Enforcers = c.knownEnforcers()
	}
	if c.IdlePods == 0 {
		c.IdlePods = d.IdlePods
	}
	if c.IdleDuration == 0 {
		c.IdleDuration = d.IdleDuration
	}
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

// setUp pins, steers and opens the generator on the client pod.
func (e *env) setUp(ctx context.Context) error {
	var ok bool
	if e.client, ok = e.lab.Endpoint(ClientPod); !ok {
		return errors.New("bench: no client pod in the lab")
	}
	if e.server, ok = e.lab.Endpoint(ServerPod); !ok {
		return errors.New("bench: no server pod in the lab")
	}
	e.pin = e.cfg.EnforcerCPU != e.cfg.LoadCPU && e.report.Machine.CPUs > max(e.cfg.EnforcerCPU, e.cfg.LoadCPU)
	if e.pin {
		if err := pinProcess(os.Getpid(), cpuSet(e.cfg.LoadCPU)); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		e.report.Pinning = fmt.Sprintf("bench process (generator, connection and latency clients and servers) and iperf3 on CPU %d; "+
			"podgate agent on CPU %d; kernel forwarding steered to CPU %d (RPS on the node ends of the pod veths) "+
			"and the pods' receive processing to CPU %d (RPS on their eth0) for the throughput measurements, RPS off for latency",
			e.cfg.LoadCPU, e.cfg.EnforcerCPU, e.cfg.EnforcerCPU, e.cfg.LoadCPU)
	} else {
		e.report.Pinning = "none (fewer than two CPUs, or --enforcer-cpu equals --load-cpu)"
	}
	// Connection-rate runs open tens of thousands of connections.
	if err := e.client.NS.Sysctl("net.ipv4.ip_local_port_range", "1024 65000"); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := e.steer(ctx, true); err != nil {
		return err
	}
	srcMAC, err := linkMAC(e.client.NS, "eth0")
	if err != nil {
		return err
	}
	gwMAC, err := linkMAC(e.lab.Node().NS, e.client.HostIf)
	if err != nil {
		return err
	}
	e.gen, err = NewGenerator(GeneratorConfig{
		NS: e.client.NS, Ifname: "eth0", SrcMAC: srcMAC, DstMAC: gwMAC,
		Src: e.client.IPs[0], Dst: e.server.IPs[0],
		SrcPortBase: FloodSrcBase, SrcPorts: FloodSrcN, DstPortBase: FloodPortLo,
	})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// tearDown closes the generator and gives the process its CPUs back.
func (e *env) tearDown() error {
	var errs []error
	if e.gen != nil {
		errs = append(errs, e.gen.Close())
	}
	if e.pin {
		var all unix.CPUSet
		for c := range e.report.Machine.CPUs {
			all.Set(c)
		}
		errs = append(errs, pinProcess(os.Getpid(), all))
	}
	return errors.Join(errs...)
}

// steer turns RPS on (throughput) or off (latency) on the node ends of
// the client's and server's veths and on their eth0.
func (e *env) steer(ctx context.Context, on bool) error {
	if !e.pin {
		return nil
	}
	node, pods := uint64(0), uint64(0)
	if on {
		node, pods = cpuMask(e.cfg.EnforcerCPU), cpuMask(e.cfg.LoadCPU)
	}
	for _, ep := range []*lab.Endpoint{e.client, e.server} {
		if err := setRPS(ctx, e.lab.Node().NS, ep.HostIf, node); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if err := setRPS(ctx, ep.NS, "eth0", pods); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	return nil
}

func linkMAC(ns *netns.Namespace, name string) ([]byte, error) {
	h, err := ns.Handle()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("bench: find %s in %s: %w", name, ns.Name(), err)
	}
	return l.Attrs().HardwareAddr, nil
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
// and the latency for one enforcer set-up.
func (e *env) measureAll(ctx context.Context, r *Result) error {
	ph := e.begin()
	e.logf("%s, %d policies: forwarding rate", r.Enforcer, r.Policies)
	fw, err := e.searchRate(ctx, e.cfg.MeasureFlows)
	if err != nil {
		return err
	}
	r.Forwarding = &fw
	e.logf("  %.0f pps (saturated %.0f, %d trials)", fw.Rate, fw.Saturated, len(fw.Trials))
	ip, err := runIPerf(ctx, e.client.NS, e.server.NS, e.client.IPs[0], e.server.IPs[0], e.cfg.TCPDuration, e.loadSet())
	if err != nil {
		return fmt.Errorf("bench: %s: %w", r.Enforcer, err)
	}
	r.TCP = &ip
	e.logf("  iperf3 %.2f Gbit/s, %d retransmits", ip.BitsPerSecond/1e9, ip.Retransmits)
	cr, err := runConnRate(ctx, e.client.NS, e.server.NS, e.server.IPs[0], e.cfg.ConnWorkers, e.cfg.ConnDuration)
	if err != nil {
		return fmt.Errorf("bench: %s: %w", r.Enforcer, err)
	}
	r.Conn = &cr
	e.logf("  %.0f connections/s (%d failed)", cr.PerSecond, cr.Failed)
	if err := e.steer(ctx, false); err != nil {
		return err
	}
	lat, err := runLatency(ctx, e.client.NS, e.server.NS, e.client.IPs[0], e.server.IPs[0], e.cfg.LatencyRate, e.cfg.LatencyDuration)
	if serr := e.steer(ctx, true); serr != nil {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("bench: %s: %w", r.Enforcer, err)
	}
	r.Latency = &lat
	e.logf("  latency p50 %.1f µs, p99 %.1f µs (%d lost)", lat.P50, lat.P99, lat.Lost)
	e.end(ph, r)
	return nil
}

func (e *env) loadSet() unix.CPUSet {
	if !e.pin {
		var all unix.CPUSet
		for c := range e.report.Machine.CPUs {
			all.Set(c)
		}
		return all
	}
	return cpuSet(e.cfg.LoadCPU)
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

// dropCounters reads the counters that say where forwarded packets were
// lost: the drop counters of the veths on the path (client eth0, the node
// ends, server eth0). With the agent, an XDP redirect into its socket that
// finds no free frame counts as an RX drop of the node end. The agent
// itself is not scraped between trials (a scrape would compete with its
// worker); its counters are read once per phase. The agent's threads'
// time spent runnable but waiting for a CPU (schedstat) says how much of a
// stall was the CPU being given to other processes.
func (e *env) dropCounters() (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, l := range []struct {
		ns   *netns.Namespace
		name string
		key  string
	}{
		{e.client.NS, "eth0", "client-eth0"},
		{e.lab.Node().NS, e.client.HostIf, "node-client-veth"},
		{e.lab.Node().NS, e.server.HostIf, "node-server-veth"},
		{e.server.NS, "eth0", "server-eth0"},
	} {
		h, err := l.ns.Handle()
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		link, err := h.LinkByName(l.name)
		h.Close()
		if err != nil {
			return nil, fmt.Errorf("bench: find %s: %w", l.name, err)
		}
		if st := link.Attrs().Statistics; st != nil {
			out[l.key+" rx_dropped"] = st.RxDropped
			out[l.key+" tx_dropped"] = st.TxDropped
		}
	}
	if pid := e.lab.AgentPID(); pid > 0 {
		if wait, err := runQueueWait(pid); err == nil {
			out["agent run-queue wait µs"] = uint64(wait / time.Microsecond)
		}
	}
	return out, nil
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
	rules, err := CompileKernelRules(&m.Cluster, t, NodeName)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	kernelCompile := time.Since(kstart)
	node := e.lab.Node().NS
	if err := clearKernelRules(ctx, node); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, clearKernelRules(context.WithoutCancel(ctx), node)) }()
	applyDur, err := applyKernelRules(ctx, node, rules)
	if err != nil {
		return err
	}
	if flows == nil && !e.busy {
		_ = os.WriteFile(filepath.Join(e.cfg.Out, fmt.Sprintf("iptables-%d.rules", p)), []byte(rules.IPTables), 0o644)
		_ = os.WriteFile(filepath.Join(e.cfg.Out, fmt.Sprintf("ipset-%d.restore", p)), []byte(rules.IPSet), 0o644)
		for _, n := range rules.Notes {
			e.report.note("iptables: " + n)
		}
		mem, err := ipsetMemory(ctx, node)
		if err != nil {
			return err
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
	// Up to six passes, each at half the rate of the one before, until
	// 99% of the flows are tracked, a pass adds less than 1% (a full
	// kernel table: nf_conntrack_max is host-wide and left alone), or a
	// pass would take longer than half the UDP timeout. An enforcer that
	// judges first packets in user space admits new flows more slowly
	// than the kernel does, and when offered them faster than that it
	// admits fewer still: later, slower passes fill its table.
	for pass := range 6 {
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
		e.logf("  %d sent in %.1fs, %.0f tracked", s.Frames, s.Elapsed.Seconds(), n)
		if n >= 0.99*float64(*flows) || (pass > 0 && grew < 0.01*float64(*flows)) {
			break
		}
		rate /= 2
		if float64(*flows)/rate > 15 {
			break // unreplied UDP flows expire after 30 s
		}
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

// metrics scrapes the agent.
func (e *env) metrics(ctx context.Context) (Metrics, error) { return scrapeAgent(ctx, e.lab) }

// scrapeAgent scrapes the agent of lab l.
func scrapeAgent(ctx context.Context, l *lab.Lab) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.AgentURL()+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape agent: %w", err)
	}
	resp, err := l.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: scrape agent: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// waitMetric scrapes until a metric has the wanted value (30s at most).
func (e *env) waitMetric(ctx context.Context, name string, want float64) (Metrics, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := e.metrics(ctx)
		if err == nil && m.Get(name) == want {
			return m, nil
		}
		if time.Now().After(deadline) {
			got := 0.0
			if m != nil {
				got = m.Get(name)
			}
			return nil, fmt.Errorf("bench: agent metric %s is %v, want %v: %w", name, got, want, errors.Join(err, context.DeadlineExceeded))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: wait for %s: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// clearKernelRules restores an empty filter table and destroys every
// ipset in the node namespace (all of them are the bench's: the
// namespace is the lab's).
func clearKernelRules(ctx context.Context, ns *netns.Namespace) error {
	const empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
	if _, err := runIn(ctx, ns, empty, "iptables-legacy-restore"); err != nil {
		return fmt.Errorf("bench: clear iptables: %w", err)
	}
	if _, err := runIn(ctx, ns, "", "ipset", "destroy"); err != nil {
		return fmt.Errorf("bench: clear ipsets: %w", err)
	}
	return nil
}

// applyKernelRules loads the sets and the rules and returns how long that
// took.
func applyKernelRules(ctx context.Context, ns *netns.Namespace, r *KernelRules) (time.Duration, error) {
	start := time.Now()
	if r.IPSet != "" {
		if _, err := runIn(ctx, ns, r.IPSet, "ipset", "restore"); err != nil {
			return 0, fmt.Errorf("bench: apply ipsets: %w", err)
		}
	}
	if _, err := runIn(ctx, ns, r.IPTables, "iptables-legacy-restore"); err != nil {
		return 0, fmt.Errorf("bench: apply iptables: %w", err)
	}
	return time.Since(start), nil
}

// ipsetMemory sums the kernel memory of the namespace's sets as `ipset
// list -t` reports it.
func ipsetMemory(ctx context.Context, ns *netns.Namespace) (float64, error) {
	out, err := runIn(ctx, ns, "", "ipset", "list", "-t")
	if err != nil {
		return 0, fmt.Errorf("bench: %w", err)
	}
	var total float64
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Size in memory: "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				total += n
			}
		}
	}
	return total, nil
}

// kernelConntrackCount reads nf_conntrack_count of the namespace.
func kernelConntrackCount(ns *netns.Namespace) (float64, error) {
	var v float64
	err := ns.Do(func() error {
		data, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		v, err = strconv.ParseFloat(strings.TrimSpace(string(data)), 64)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("bench: read conntrack count: %w", err)
	}
	return v, nil
}
