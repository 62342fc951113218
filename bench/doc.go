// Package bench measures podgate against what users would run instead, on
// the same network-namespace lab and in the same run, so that the ratios
// hold on a noisy machine. `podgate bench` ([Run]) drives it.
//
// # Lab
//
// [Run] writes, per policy count, the bench namespace (pods client,
// server and other on node "bench-node", and two policies that allow
// client → server on the measured ports and deny other → server) next to a
// synthetic cluster of policytest.ScaleCluster (10,000 pods on node-1 and
// 0, 100 or 2,000 policies), and builds one lab from it ([lab.Build]):
// only the three bench pods get namespaces, the other 10,000 pods are only
// in the policy table. The same lab serves every enforcer:
//
//   - none: plain kernel routing in the node namespace, no enforcement;
//   - iptables: the same policies compiled by [CompileKernelRules] into
//     ipsets and per-pod chains (see [KernelRules]) and loaded with ipset
//     restore and iptables-legacy-restore inside the node namespace;
//   - podgate: the agent ([lab.Lab.StartAgent]) with --conntrack-max fitted
//     to the flow count.
//
// Before an enforcer is measured, TCP probes check that client → server is
// allowed and other → server and client → server on an unlisted port are
// denied (everything allowed for none); a wrong answer stops the run.
//
// # Measurements
//
//   - Forwarding rate: a [Generator] (an AF_XDP socket on the client's
//     eth0, 64-byte UDP frames over 1,000 flows, paced per batch of 64)
//     offers a rate for a step; a [Sink] (an XDP program on the server's
//     eth0 that counts and drops the bench's UDP ports) counts what
//     arrived. [Search] finds the highest rate with less than 0.1% loss.
//     The generator's ceiling is measured the same way over a veth pair of
//     its own between the two pods, no gateway in the path.
//   - TCP bulk throughput: iperf3 (Debian's, installed with apt-get when
//     missing) from the client to the server, -J, a few seconds.
//   - New connections per second: workers in the client's namespace
//     connect, send a byte, read the answer and reset (SO_LINGER 0) as
//     fast as they can against a server in the server's namespace.
//   - Latency: UDP ping-pong at ~1,000/s with blocking system calls on
//     locked threads; p50, p90, p99, max and every sample.
//   - Flow table: the generator sends 100,000 or 1,000,000 distinct
//     allowed flows once (up to three passes), then the forwarding rate is
//     searched round-robin over all of them, which keeps them tracked and
//     makes every packet look up another entry of the full table.
//   - Control plane: policy.Compile in-process, the agent's
//     podgate_table_compile_duration_seconds and resident memory, the
//     iptables rule compile and restore times and the ipsets' kernel
//     memory.
//
// # Pinning
//
// With two or more CPUs, the bench process (generator, clients, servers)
// and iperf3 run on Config.LoadCPU and the agent on Config.EnforcerCPU.
// For the kernel enforcers, RPS on the node ends of the pods' veths steers
// forwarding to EnforcerCPU and RPS on the pods' eth0 steers their receive
// processing to LoadCPU, so that every enforcer gets one CPU for the
// gateway's work; RPS is off during the latency runs.
//
// # Output
//
// A [Report] holds every raw number (WriteJSON), Markdown tables with
// ratios to both baselines and the goals of the issue (WriteMarkdown), and
// PNG plots made with gonum.org/v1/plot (WritePlots).
//
// Everything needs root. Nothing outside the lab's namespaces is changed:
// iptables rules and ipsets live in the node namespace, XDP programs on
// interfaces inside pod namespaces, and all of it goes away with the lab.
package bench
