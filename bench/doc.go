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
//   - iptables: the same policies compiled by [iptables.Compile] into
//     ipsets and per-pod chains (see [iptables.Rules]) and loaded with ipset
//     restore and iptables-legacy-restore inside the node namespace;
//   - podgate: the agent ([lab.Lab.StartAgent]) with --conntrack-max fitted
//     to the flow count and its default flags otherwise (plus
//     Config.AgentArgs, which apply to every agent run);
//   - podgate-NAME: a [Variant], the same agent with extra arguments, run
//     right after podgate at every size. The default variant is
//     offload-none (--offload=none: every packet in Go, the comparison
//     switch of the kernel flow offload). Before anything is measured,
//     `podgate agent ARGS --help` checks every configuration's arguments,
//     so an unknown flag stops the run at once, naming the variant; a
//     value the agent refuses stops it when that agent starts.
//
// Before an enforcer is measured, TCP probes check that client → server is
// allowed and other → server and client → server on an unlisted port are
// denied (everything allowed for none); a wrong answer stops the run.
//
// # Measurements
//
//   - Forwarding rate: a [Generator] (an AF_XDP socket on the client's
//     eth0, 64-byte UDP frames over 1,000 flows, paced per batch of 64)
//     offers a rate for a step; a [Sink] (a TC ingress program on the server's
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
//     locked threads, in three trials spread over the enforcer's
//     measurements (after the forwarding search, after iperf3, after the
//     connection rate); p50, p90, p99, max and every sample of the trials
//     pooled, and each trial's own.
//   - Flow table: the generator sends 100,000 or 1,000,000 distinct
//     allowed flows once (up to six passes, each at half the rate), then the forwarding rate is
//     searched round-robin over all of them, which keeps them tracked and
//     makes every packet look up another entry of the full table.
//   - Control plane: policy.Compile in-process, the agent's
//     podgate_table_compile_duration_seconds and resident memory, the
//     iptables rule compile and restore times and the ipsets' kernel
//     memory.
//
// # Busy node
//
// With Config.BusyNode, after the quiet pass (and the idle cost), one CPU
// hog per CPU ([StartHogs]: `sh -c 'while :; do :; done'`, SCHED_OTHER,
// nice 0, hog i pinned to CPU i, killed with the run or with the bench
// process) runs while the generator's ceiling and every enforcer are
// measured again, in the same order. They stand for the pods that share a
// node's CPUs with the enforcer. The hogs' CPU time over wall time (their
// share) is recorded for the pass and for each result, next to the load
// average, so a reader can see the machine was busy.
//
// # Idle cost
//
// Unless Config.IdlePods is negative, a second lab is built whose node has
// Config.IdlePods pods (default 100: the bench's three and more, each a
// namespace and a veth the agent attaches to) with the largest policy
// count's table. Each agent configuration is started on it in turn; once
// every pod port is attached and 2 s have passed, with no traffic:
//
//   - CPU: the agent's utime+stime (/proc/PID/stat) over
//     Config.IdleDuration (default 10 s), in percent of one core;
//   - memory: VmRSS, and pinned memory, which the kernel cannot reclaim
//     while the agent runs. AF_XDP pins its UMEM pages without counting
//     them in VmPin or VmLck (and, with CAP_IPC_LOCK, in no memlock
//     rlimit), and BPF maps live in the kernel, so pinned memory is the
//     sum of: the UMEM pages, counted as the growth of
//     nr_foll_pin_acquired − nr_foll_pin_released in /proc/vmstat from
//     before the agent started until its ports were attached (checked
//     against the drop when it stops; a mismatch means something else on
//     the machine pinned or released pages and is flagged); the AF_XDP
//     rings, the agent's socket mappings in /proc/PID/maps; and its BPF
//     maps and programs, "memlock" of /proc/PID/fdinfo. Per pod port is
//     that sum over the pod ports.
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
// ratios to both baselines, busy/quiet per row and the goals of issue 10
// with met or missed (WriteMarkdown), and PNG plots made with
// gonum.org/v1/plot (WritePlots).
//
// report.json: results[] holds only the quiet machine's results of none,
// iptables and podgate with its default flags, each with enforcer,
// policies, flows (0 or absent: the 1,000 measured flows), forwarding
// (rate_pps: the highest rate below 0.1% loss, saturated_pps, every
// trial), tcp (bits_per_second), connections (connections_per_second:
// since be6eb5d the median of three trials, each in trials_per_second),
// latency (p50_us, p99_us, ...: since this change of all three trials'
// samples pooled, each trial in trials[] with p50_us, p99_us, max_us,
// sent, lost) and load_average; a flow-table entry has
// forwarding only, with prefill_sent, conntrack_entries_before and _after
// and (since 230bb52) prefill[]: per prefill pass rate_pps, sent,
// seconds, tracked and admitted_per_second (the new flows the enforcer
// added per second of the pass). Everything else is added beside it,
// never in it:
//
//   - variants[]: {name, agent_args} of each variant;
//   - variant_results[]: the variants' quiet results, entries shaped as
//     results[], enforcer "podgate-NAME";
//   - busy_node: hogs, hog_command, hog_cpu_share (mean over the pass),
//     hog_cpu_share_per_cpu, seconds, load averages at the start and end
//     of the pass, and the generator's ceiling with the hogs;
//   - busy_results[]: the busy pass, every enforcer and variant, entries
//     shaped as results[] plus hog_cpu_share while that entry was
//     measured;
//   - idle_cost[]: per agent configuration, enforcer, agent_args,
//     pod_ports, policies, seconds, cpu_seconds, cpu_percent_of_one_core,
//     received_packets, rss_bytes, vm_pin_bytes, vm_lck_bytes,
//     umem_pinned_bytes, umem_released_bytes, umem_noisy, xsk_sockets,
//     xsk_ring_bytes, bpf_maps, bpf_map_bytes, bpf_progs, bpf_prog_bytes,
//     pinned_bytes, pinned_bytes_per_pod_port;
//   - goals[]: name, target, value, met, not_measured;
//   - checks[] and podgate_drops[] carry busy: true for the busy pass,
//     control_plane[] covers the quiet pass only.
//
// Everything needs root. Nothing outside the lab's namespaces is changed:
// iptables rules and ipsets live in the node namespace, XDP programs on
// interfaces inside pod namespaces, and all of it goes away with the lab.
package bench
