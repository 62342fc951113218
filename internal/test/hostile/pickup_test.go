package hostile

import (
	"testing"
	"time"
)

// TestPickupCannotReachADeniedPod: a TCP segment without SYN that
// matches no flow may be picked up only in the pick-up window after the
// agent starts, and then it is judged as the connection it belongs to,
// from client to server (fastpath/verdict.go, pickup). So a, which c's
// policy does not admit, cannot deliver ACK segments with a payload to c
// by pretending to be the server of a connection c opened (c's egress and
// a's ingress are open): a:40000 -> c:8080 is the client a's connection
// to c:8080, which c's ingress denies. Nor may a SYN on that tuple or a
// new SYN reach c.
func TestPickupCannotReachADeniedPod(t *testing.T) {
	n := newNode(t)
	w := wire{srcMAC: n.podMAC(n.a), dstMAC: n.gatewayMAC(n.a), src: n.a.IPs[0], dst: n.c.IPs[0]}
	sniff := n.sniffer(n.c, hasMarker)
	in := n.injector(n.a)
	before := n.metrics()
	steps := []struct {
		what  string
		frame []byte
	}{
		{"ACK+PSH with data, no flow", w.tcp(t, 40000, 8080, fACK|fPSH, mark("pickup"))},
		{"SYN on the same tuple", w.tcp(t, 40000, 8080, fSYN, mark("syn-after-pickup"))},
		{"new SYN", w.tcp(t, 40001, 8080, fSYN, mark("new-syn"))},
	}
	for _, s := range steps {
		sniff.Reset()
		if err := in.Send(s.frame); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		if sniff.Count() > 0 {
			t.Errorf("%s from a reached c, which does not admit a", s.what)
		}
	}
	t.Logf("drops: %v", dropDeltas(before, n.metrics()))
	n.expect("after the pick-up", "app/a", "app/c", tcpPort(8080))
}
