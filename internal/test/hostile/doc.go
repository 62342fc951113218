// Package hostile tests the podgate agent against hostile pods and faults,
// end to end: the real agent binary runs on a node built by package lab,
// and pods misbehave on the wire.
//
// The package holds tests and the few helpers they share; nothing outside
// tests imports it.
//
//   - Hostile traffic: frames crafted with gopacket are written by an
//     [Injector] (an AF_PACKET socket on a pod's eth0, inside the pod's
//     network namespace): malformed and truncated headers, lying lengths,
//     IPv6 extension header chains, tiny and overlapping fragments, odd
//     TCP flag sets, ICMP errors with forged quotes, floods of new flows,
//     and spoofing (another pod's IP or MAC, ARP and NDP claiming another
//     pod's address). A [Sniffer] in the destination pod's namespace checks
//     that nothing of it arrives, and [Scrape] reads the agent's /metrics
//     to check that each drop was counted with its reason.
//   - Faults: a full connection-tracking table, a flood faster than the
//     fastpath drains (UMEM exhaustion), a pod deleted and a veth removed
//     while a connection is open, and SIGKILL of the agent during a bulk
//     transfer (how long until it resumes, and that nothing denied gets
//     through while the agent is down or starting).
//   - Soak: mixed traffic and policy churn for the duration given in the
//     environment variable PODGATE_SOAK (for example "10m"; the test is
//     skipped without it), sampling the agent's memory, goroutines, open
//     file descriptors and conntrack entries every 10 seconds into a CSV
//     file (PODGATE_SOAK_CSV) and checking that they stay flat. `make soak`
//     runs it.
//
// The bugs these tests found (policy bypasses, a way to crash the agent)
// are fixed; the test that found each one now guards it, and its
// documentation says what it proves and what the bug was. SECURITY.md
// ("Fixed after the hostile tests found them") lists them.
//
// Everything needs root (network namespaces, AF_PACKET, XDP); the tests
// skip without it. TestMain builds the agent once (or uses the binary in
// PODGATE_BIN). The traffic never leaves the lab's namespaces.
package hostile
