package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/podgate/podgate/bench"
)

// benchFlags are the flags of `podgate bench`.
type benchFlags struct {
	quick       bool
	out         string
	agentBinary string
	agentArgs   []string
	policies    []int
	flows       []int
	step        time.Duration
	enforcerCPU int
	loadCPU     int
	prefix      string
	enforcers   []string
	variants    []string
	busyNode    bool
	idlePods    int
	idleWindow  time.Duration
}

func newBenchCommand() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench [--quick] [--busy-node] [--out DIR]",
		Short: "Measure podgate against plain kernel routing and an iptables/ipset enforcer",
		Long: `Build a node out of network namespaces (a client, a server and a third pod,
with 10,000 more pods and 0, 100 or 2,000 NetworkPolicies in the policy
table) and measure, in the same run and on the same lab, three enforcers:
plain kernel routing (no enforcement), the same policies compiled into
iptables rules and ipsets in the node namespace (iptables-legacy, the way
iptables-based enforcers do it), and the podgate agent.

Measured: the forwarding rate of 64-byte UDP over 1,000 flows (the highest
rate with less than 0.1% loss, from an AF_XDP generator in the client pod
into an XDP sink in the server pod), TCP bulk throughput (iperf3), new TCP
connections per second, UDP round-trip latency at 1,000/s, the forwarding
rate with 100,000 and 1,000,000 flows tracked, and the control plane's
compile time and memory. --quick measures 0 and 2,000 policies and
100,000 flows with shorter steps.

Besides the agent with its default flags, every --variant is measured as
an enforcer of its own, "podgate-NAME" (default: offload-none, the agent
with --offload=none). --agent-arg applies to every agent run.

Idle cost: a second lab whose node has --idle-pods pods (default 100), on
which each agent configuration runs with no traffic for --idle-duration:
its CPU use, RSS and pinned memory (AF_XDP UMEMs and rings, BPF maps and
programs) per pod port.

--busy-node measures everything a second time with a CPU hog on every CPU
(nice 0, one pinned to each CPU) and reports both passes, with busy/quiet
per row and the hogs' CPU share; --quick --busy-node takes about six
minutes.

Writes report.json (every raw number; results[] holds only the quiet
none, iptables and podgate results, variants and the busy pass are in
variant_results[] and busy_results[]), report.md (tables with ratios and
the goals) and PNG plots into --out (default bench/out/TIMESTAMP) and
prints report.md.

Installs iperf3, ipset and iptables with apt-get when missing. Needs root;
it changes nothing outside its own network namespaces.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.quick, "quick", false, "a subset with shorter steps (0 and 2,000 policies, 100,000 flows)")
	fl.StringVar(&f.out, "out", "", "output directory (default bench/out/TIMESTAMP)")
	fl.StringVar(&f.agentBinary, "agent-binary", "", "podgate binary to run as the agent (default: this one)")
	fl.StringArrayVar(&f.agentArgs, "agent-arg", nil, "extra argument for podgate agent, e.g. --agent-arg=--busy-poll=1ms (repeatable)")
	fl.IntSliceVar(&f.policies, "policies", nil, "synthetic policy counts to measure (default 0,100,2000; --quick 0,2000)")
	fl.IntSliceVar(&f.flows, "flows", nil, "tracked-flow counts to measure, 0 for none (default 100000,1000000; --quick 100000)")
	fl.DurationVar(&f.step, "step", 0, "duration of one rate-search step (default 3s; --quick 1s)")
	fl.IntVar(&f.enforcerCPU, "enforcer-cpu", 0, "CPU for the agent and the kernel's forwarding")
	fl.IntVar(&f.loadCPU, "load-cpu", 1, "CPU for the generator, the clients and servers")
	fl.StringVar(&f.prefix, "prefix", "pgbench", "prefix of the lab's namespace names")
	fl.StringSliceVar(&f.enforcers, "enforcers", nil, "enforcers to measure: none, iptables, podgate and podgate-NAME of each variant (default all)")
	fl.StringArrayVar(&f.variants, "variant", nil, `agent variant NAME=ARGS measured as enforcer podgate-NAME, e.g. --variant "busy-poll=--busy-poll=1ms" (repeatable; replaces the default offload-none=--offload=none; --variant= for none)`)
	fl.BoolVar(&f.busyNode, "busy-node", false, "measure everything again with a CPU hog on every CPU and report both")
	fl.IntVar(&f.idlePods, "idle-pods", 100, "pods on the node of the idle-cost measurement (0: none)")
	fl.DurationVar(&f.idleWindow, "idle-duration", 10*time.Second, "window of the idle-cost measurement")
	return cmd
}

func runBench(cmd *cobra.Command, f benchFlags) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if os.Geteuid() != 0 {
		return errors.New("podgate bench needs root (network namespaces, XDP, iptables)")
	}
	cfg := bench.FullConfig()
	if f.quick {
		cfg = bench.QuickConfig()
	}
	if cmd.Flags().Changed("policies") {
		cfg.Policies = f.policies
	}
	if cmd.Flags().Changed("flows") {
		cfg.Flows = []int{} // --flows 0: no flow-table measurements
		for _, n := range f.flows {
			if n != 0 {
				cfg.Flows = append(cfg.Flows, n)
			}
		}
	}
	if f.step > 0 {
		cfg.Step = f.step
	}
	cfg.EnforcerCPU, cfg.LoadCPU, cfg.Prefix = f.enforcerCPU, f.loadCPU, f.prefix
	cfg.Enforcers = f.enforcers
	if cmd.Flags().Changed("variant") {
		cfg.Variants = []bench.Variant{}
		for _, s := range f.variants {
			if s == "" {
				continue
			}
			v, err := bench.ParseVariant(s)
			if err != nil {
				return fmt.Errorf("--variant: %w", err)
			}
			cfg.Variants = append(cfg.Variants, v)
		}
	}
	cfg.BusyNode = f.busyNode
	cfg.IdlePods, cfg.IdleDuration = f.idlePods, f.idleWindow
	if f.idlePods == 0 {
		cfg.IdlePods = -1
	}
	cfg.AgentBinary = f.agentBinary
	cfg.AgentArgs = f.agentArgs
	if cfg.AgentBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find podgate binary: %w", err)
		}
		cfg.AgentBinary = exe
	}
	cfg.Out = f.out
	if cfg.Out == "" {
		cfg.Out = filepath.Join("bench", "out", time.Now().Format("20060102-150405"))
	}
	cfg.Log = stderr
	ctx, stop := signalContext(cmd)
	defer stop()
	report, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	report.Command = "podgate " + strings.Join(os.Args[1:], " ")
	report.Version = version
	paths, err := report.WriteFiles(cfg.Out)
	if err != nil {
		return err
	}
	if err := report.WriteMarkdown(stdout); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", strings.Join(paths, ", "))
	return nil
}
