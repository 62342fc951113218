package hostile

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestIngressJudgedWhenPortReturns: a flow that a pod starts while its
// destination has no port in the engine (the destination's veth is being
// re-created by the CNI, or the agent is still adding ports after a
// restart) is judged on the pod-to-kernel path, for the source's egress
// only. Once the destination has its port, the flow's next packet is
// judged for the destination's ingress too before it passes: every flow
// records which of its sides were judged as local pods
// (fastpath/verdict.go). Before (the bug the hostile tests found; see
// SECURITY.md) the allowed verdict cached in the flow's entry let the flow
// reach the destination without its ingress policy ever being judged.
//
// Here: b's veth is removed and created again (same pod, same policy, no
// table change). Before b's port is back, a sends a UDP flow and opens a
// TCP connection to b's port 81, which b's policy denies to a; after b's
// port is back, neither reaches b. (TestKillDuringBulkTransfer checks the
// same after an agent restart, while the ports are added one by one.)
func TestIngressJudgedWhenPortReturns(t *testing.T) {
	n := newNode(t)
	// b listens on TCP 81 (for c, which may reach it).
	n.expect("setup", "app/c", "app/b", tcpPort(81))
	pods := n.metrics().Get("podgate_ports", "kind", "pod")
	n.deleteVeth(n.b)
	n.waitPortGone(n.b, pods-1)

	w := wire{srcMAC: n.podMAC(n.a), dstMAC: n.gatewayMAC(n.a), src: n.a.IPs[0], dst: n.b.IPs[0]}
	in := n.injector(n.a)
	udpEarly := w.udp(t, 36000, 9, mark("udp flow started while b had no port"))
	udpLate := w.udp(t, 36001, 9, mark("udp flow started after b's port was back"))
	before := n.metrics()
	if _, err := in.SendAll([][]byte{udpEarly, udpEarly}, 0, 0); err != nil {
		t.Fatal(err)
	}
	// A real TCP connection attempt from a fixed port; its SYNs keep going
	// (retransmissions) while b's port comes back.
	const tcpPortA = 36002
	type dialed struct {
		c   net.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		var c net.Conn
		err := n.a.NS.Do(func() error {
			d := net.Dialer{Timeout: 6 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(n.a.IPs[0], tcpPortA))}
			var err error
			c, err = d.DialContext(context.Background(), "tcp", netip.AddrPortFrom(n.b.IPs[0], 81).String())
			return err
		})
		done <- dialed{c, err}
	}()
	time.Sleep(300 * time.Millisecond)
	after := n.metrics()
	t.Logf("while b had no port: flows_new +%v, drops %v", after.Get("podgate_flows_new_total")-before.Get("podgate_flows_new_total"), dropDeltas(before, after))

	// The CNI creates b's veth again; the agent takes it over.
	if err := n.recreateVeth(n.b); err != nil {
		t.Fatal(err)
	}
	n.waitPortBack(n.b, pods)
	sniff := n.sniffer(n.b, hasMarker)
	before = n.metrics()
	if _, err := in.SendAll([][]byte{udpEarly, udpLate}, 0, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	after = n.metrics()
	var got []string
	for _, c := range sniff.Captures() {
		got = append(got, string(payloadAfterMarker(c.Frame)))
	}
	t.Logf("after b's port was back: drops %v; b received %q", dropDeltas(before, after), got)
	if slices.ContainsFunc(got, func(s string) bool { return s == string(mark("udp flow started after b's port was back")) }) {
		t.Errorf("a new denied flow reached b: the test is broken")
	}
	if len(got) > 0 {
		t.Errorf("policy bypass: %d frames of a denied UDP flow (a -> b:9) reached b, because the flow was judged for a's egress only while b had no port", len(got))
	}
	d := <-done
	if d.err == nil {
		defer d.c.Close()
		err := echo(d.c, time.Second)
		t.Errorf("policy bypass: a TCP connection a -> b:81 (denied by b's policy) started while b had no port was established after b's port came back (echo: %v)", err)
	} else {
		t.Logf("the TCP connection a -> b:81 failed as it should: %v", d.err)
	}
	n.checkPolicy("after b's port was back")
}
