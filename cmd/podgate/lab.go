package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/policy/table"
)

// errLabMismatch makes `podgate lab` exit with status 2 when an
// observation differs from its expectation (after printing them).
var errLabMismatch = &exitError{code: 2}

// labFlags are the flags of `podgate lab`.
type labFlags struct {
	files       []string
	nodeName    string
	nodes       int
	nodeIPs     []string
	nodeSubnets []string
	ports       string
	output      string
	enforcer    string
	keep        bool
	cleanup     bool
	prefix      string
	timeout     time.Duration
	parallel    int
	fromNode    bool
	agentBinary string
	agentArgs   []string
}

func newLabCommand() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "lab -f PATH [-f PATH ...] [--nodes N | --node-name N] [--ports 80/TCP,...] [-o table|json] [--enforcer podgate|none] [--keep]",
		Short: "Build a cluster out of network namespaces and check policy with real connections",
		Long: `Build a cluster out of network namespaces from manifests: one namespace per
node that the pods' spec.nodeName names (--nodes N adds nodes up to N; pods
without spec.nodeName are spread over the nodes round-robin), one per pod
with its status.podIPs and a ptp veth to its node, and an outside namespace
for the addresses of OutsideHost objects. With several nodes, the nodes and
the outside sit on an underlay bridge (node addresses from --node-subnet)
and route each other's pods. Run a podgate agent on every node, and probe
every ordered pair of pods, hostNetwork pods and outside hosts (pairs
without a pod excepted) with real TCP, UDP and SCTP connections and ICMP
echo. Each observation is compared with what the policy engine decides for
the same manifests. --node-name builds that node alone.

-o table prints one truth table per port: "." allowed and "X" denied as
expected, "!" allowed but expected denied, "?" denied but expected
allowed; with several nodes, rows and columns name their endpoint's node
and each denied cell says which node's agent denied it, from the agents'
denied-flow records ("X egress@n1": the source's egress at node n1, "X
ingress@n2": the destination's ingress at n2). -o json prints an array of
{"from","to","port","protocol","expected","observed"} (plus "detail" for a
failed connection, "retries" when a connection expected to work timed out
and was probed again, at most twice, "fromNode" and "toNode", and
"deniedBy": {"node","direction","reason","policies"} for a denial an agent
recorded). The exit status is 2 when any observation differs, 1 on errors.

--enforcer none runs no agent: the kernel alone forwards and every
connection is expected to work. --keep leaves the lab up until Ctrl-C and
prints how to enter it, where each node's agent serves its metrics and
flows, and how to read them. Everything is removed at the end, also after an
error or Ctrl-C; --cleanup removes what killed runs left behind.

Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLab(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&f.files, "filename", "f", nil, "manifest file or directory (repeatable)")
	fl.StringVar(&f.nodeName, "node-name", "", "build this node alone, leaving out the pods of other nodes (default: every node the pods name)")
	fl.IntVar(&f.nodes, "nodes", 0, "number of nodes (default: as many as the pods name, at least 1); pods without spec.nodeName are spread over them")
	fl.StringSliceVar(&f.nodeIPs, "node-ip", nil, "addresses of a lab of one node, at most one per family (default: first free address of the pods' /24 and /64)")
	fl.StringSliceVar(&f.nodeSubnets, "node-subnet", nil, "underlay subnets of a lab of several nodes, at most one per family (default: "+lab.DefaultNodeSubnet4.String()+" and "+lab.DefaultNodeSubnet6.String()+", or the next free ones)")
	fl.StringVar(&f.ports, "ports", "80/TCP,80/UDP,80/SCTP,ICMP", "comma-separated PORT/PROTOCOL list; ICMP alone for ICMP echo")
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	fl.StringVar(&f.enforcer, "enforcer", string(lab.EnforcerPodgate), "what enforces policy: podgate (run the agent) or none (the kernel alone)")
	fl.BoolVar(&f.keep, "keep", false, "leave the lab up after the probes until Ctrl-C")
	fl.BoolVar(&f.cleanup, "cleanup", false, "remove namespaces and directories left by killed labs, then exit")
	fl.StringVar(&f.prefix, "prefix", lab.DefaultPrefix, "prefix of the lab's namespace names")
	fl.DurationVar(&f.timeout, "timeout", lab.DefaultProbeTimeout, "timeout of each probe")
	fl.IntVar(&f.parallel, "parallel", lab.DefaultParallel, "probes run at once")
	fl.BoolVar(&f.fromNode, "from-node", false, "also probe from the nodes' own addresses (to their own pods expected allowed, as kubelet probes; to other nodes' pods as policy says)")
	fl.StringVar(&f.agentBinary, "agent-binary", "", "podgate binary to run as the agent (default: this one)")
	fl.StringArrayVar(&f.agentArgs, "agent-arg", nil, "extra argument for `podgate agent` (repeatable)")
	return cmd
}

func runLab(cmd *cobra.Command, f labFlags) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if f.cleanup {
		return runLabCleanup(stdout, f.prefix)
	}
	if len(f.files) == 0 {
		return errors.New(`required flag(s) "filename" not set`)
	}
	if err := checkOutput(f.output, "table", "json"); err != nil {
		return err
	}
	ports, err := table.ParsePortSpecs(f.ports)
	if err != nil {
		return fmt.Errorf("--ports: %w", err)
	}
	enforcer := lab.Enforcer(f.enforcer)
	if enforcer != lab.EnforcerPodgate && enforcer != lab.EnforcerNone {
		return fmt.Errorf("--enforcer %q: want podgate or none", f.enforcer)
	}
	var nodeIPs []netip.Addr
	for _, s := range f.nodeIPs {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--node-ip: %w", err)
		}
		nodeIPs = append(nodeIPs, a)
	}
	var nodeSubnets []netip.Prefix
	for _, s := range f.nodeSubnets {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("--node-subnet: %w", err)
		}
		nodeSubnets = append(nodeSubnets, p)
	}
	if f.nodes < 0 {
		return fmt.Errorf("--nodes %d: must not be negative", f.nodes)
	}
	if f.nodeName != "" && f.nodes > 1 {
		return fmt.Errorf("--node-name %s builds that node alone: give no --nodes", f.nodeName)
	}
	if os.Geteuid() != 0 {
		return errors.New("podgate lab needs root (it creates network namespaces)")
	}
	binary := f.agentBinary
	if enforcer == lab.EnforcerPodgate && binary == "" {
		if binary, err = os.Executable(); err != nil {
			return fmt.Errorf("find podgate binary: %w", err)
		}
	}

	ctx, stop := signalContext(cmd)
	defer stop()
	start := time.Now()
	l, err := lab.Build(ctx, lab.Spec{
		Manifests:     f.files,
		NodeName:      f.nodeName,
		Nodes:         f.nodes,
		NodeIPs:       nodeIPs,
		NodeSubnets:   nodeSubnets,
		Prefix:        f.prefix,
		Enforcer:      enforcer,
		ProbeTimeout:  f.timeout,
		Parallel:      f.parallel,
		ProbeFromNode: f.fromNode,
	})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			fmt.Fprintln(stderr, "error:", cerr)
		}
	}()
	for _, n := range l.Notes() {
		fmt.Fprintln(stderr, "note:", n)
	}
	nodes := l.Nodes()
	if len(nodes) == 1 {
		fmt.Fprintf(stderr, "lab %s: node %s (%s), %s, built in %v\n",
			l.ID(), l.NodeName(), joinAddrs(l.Node().IPs), describeEndpoints(l.Endpoints()), time.Since(start).Round(time.Millisecond))
	} else {
		fmt.Fprintf(stderr, "lab %s: %d nodes on %s, %s, built in %v\n",
			l.ID(), len(nodes), joinPrefixes(l.NodeSubnets()), describeEndpoints(l.Endpoints()), time.Since(start).Round(time.Millisecond))
		for _, n := range nodes {
			fmt.Fprintf(stderr, "  node %s (%s): %s\n", n.Name(), joinAddrs(n.IPs()), describeNode(l, n))
		}
	}

	if enforcer == lab.EnforcerPodgate {
		t0 := time.Now()
		args := f.agentArgs
		if len(nodes) == 1 && agentHasFlag(cmd, f.agentBinary, binary, "state-dir") {
			// The agent's default, /run/podgate, is shared by every lab on
			// the machine (and a real agent): give each lab its own. In a
			// lab of several nodes the lab gives each node's agent one.
			args = append([]string{"--state-dir", filepath.Join(l.Dir(), "agent-state")}, args...)
		}
		if err := l.StartAgent(ctx, binary, args...); err != nil {
			return err
		}
		if len(nodes) == 1 {
			fmt.Fprintf(stderr, "agent ready in %v (log: %s)\n", time.Since(t0).Round(time.Millisecond), l.AgentLog())
		} else {
			fmt.Fprintf(stderr, "%d agents ready in %v (logs: %s)\n", len(nodes), time.Since(t0).Round(time.Millisecond), filepath.Join(l.Dir(), "agent-*.log"))
		}
	} else {
		fmt.Fprintln(stderr, "enforcer none: the kernel alone forwards; every connection is expected to work")
	}

	t0 := time.Now()
	results, err := l.Matrix(ctx, ports)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted: lab removed (%w)", ctx.Err())
		}
		return err
	}
	elapsed := time.Since(t0)
	sum := lab.Summarize(results)
	if f.output == "json" {
		if err := lab.WriteJSON(stdout, results); err != nil {
			return err
		}
	} else {
		if err := lab.WriteTable(stdout, results); err != nil {
			return err
		}
		fmt.Fprintln(stdout)
		for _, r := range lab.Mismatches(results) {
			fmt.Fprintf(stdout, "%s %s\n", r.Mark(), r.String())
		}
		fmt.Fprintf(stdout, "%s, in %v\n", sum, elapsed.Round(time.Millisecond))
		if len(nodes) > 1 && enforcer == lab.EnforcerPodgate {
			ds := lab.SummarizeDenials(results)
			fmt.Fprintf(stdout, "%s\n", ds)
			for _, r := range ds.Elsewhere {
				fmt.Fprintf(stdout, "  elsewhere: %s\n", r.String())
			}
		}
	}

	if f.keep {
		printEnterHelp(stderr, l)
		<-ctx.Done()
		fmt.Fprintln(stderr, "removing the lab")
	}
	if !sum.OK() {
		return errLabMismatch
	}
	return nil
}

// agentHasFlag reports whether `podgate agent` has the flag: looked up in
// this binary's own command tree, or in the help of another binary.
func agentHasFlag(cmd *cobra.Command, other, binary, flag string) bool {
	if other == "" {
		a, _, err := cmd.Root().Find([]string{"agent"})
		return err == nil && a.Name() == "agent" && a.Flags().Lookup(flag) != nil
	}
	out, err := exec.Command(binary, "agent", "--help").CombinedOutput()
	return err == nil && strings.Contains(string(out), "--"+flag+" ")
}

func runLabCleanup(w io.Writer, prefix string) error {
	rep, err := lab.Cleanup(prefix)
	for _, n := range rep.Namespaces {
		fmt.Fprintln(w, "removed namespace", n)
	}
	for _, d := range rep.Dirs {
		fmt.Fprintln(w, "removed directory", d)
	}
	for _, p := range rep.Killed {
		fmt.Fprintln(w, "stopped process", p)
	}
	for _, id := range rep.Alive {
		fmt.Fprintf(w, "left lab %s alone: its owner still runs\n", id)
	}
	if len(rep.Namespaces)+len(rep.Dirs)+len(rep.Killed)+len(rep.Alive) == 0 && err == nil {
		fmt.Fprintln(w, "nothing to clean up")
	}
	return err
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func describeEndpoints(eps []*lab.Endpoint) string {
	pods, host, outside := 0, 0, 0
	for _, e := range eps {
		switch e.Kind {
		case lab.KindPod:
			pods++
		case lab.KindHostNetwork:
			host++
		default:
			outside++
		}
	}
	s := plural(pods, "pod")
	if host > 0 {
		s += ", " + plural(host, "hostNetwork pod")
	}
	return s + ", " + plural(outside, "outside host")
}

// describeNode lists the pods and hostNetwork pods of a node.
func describeNode(l *lab.Lab, n *lab.Node) string {
	var names []string
	for _, e := range l.Endpoints() {
		if e.Node == n.Name() {
			names = append(names, e.Name)
		}
	}
	if len(names) == 0 {
		return "no pods"
	}
	return strings.Join(names, ", ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func printEnterHelp(w io.Writer, l *lab.Lab) {
	fmt.Fprintf(w, "\nthe lab stays up until Ctrl-C. Enter a namespace with `ip netns exec NAME bash`:\n")
	for _, n := range l.Nodes() {
		fmt.Fprintf(w, "  %-40s node %s (%s)\n", n.NS().Name(), n.Name(), joinAddrs(n.IPs()))
	}
	for _, e := range l.Endpoints() {
		if e.Kind == lab.KindHostNetwork {
			continue // in its node's namespace
		}
		fmt.Fprintf(w, "  %-40s %s %s (%s)\n", e.NS.Name(), e.Kind, e.Name, joinAddrs(e.IPs))
	}
	for _, n := range l.Nodes() {
		if u := n.AgentURL(); u != "" {
			addr := strings.TrimPrefix(u, "http://")
			fmt.Fprintf(w, "agent of node %s: ip netns exec %s curl -s %s/metrics; ip netns exec %s podgate flows --addr %s\n",
				n.Name(), n.NS().Name(), u, n.NS().Name(), addr)
		}
	}
	fmt.Fprintf(w, "agent manifests (edit to change policy): %s\n", l.ManifestDir())
}
