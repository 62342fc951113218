package hostile

import (
	"testing"
	"time"
)

// TestReversePickup documents what mid-stream TCP pick-up lets a pod do.
//
// A TCP packet without SYN that matches no flow is picked up as an
// established connection (the agent may have restarted under it) and,
// when policy denies it in its own direction, judged the other way round
// too (fastpath/process.go, newFlow): a server's packet may come first.
// So a, which c's policy does not admit, can deliver ACK segments with a
// payload to any port of c, because c may reach a (c's egress and a's
// ingress are open). The test logs whether that happens (it does today;
// the receiving kernel resets them), and fails if more than that gets
// through: a SYN on the picked-up tuple, or a new SYN, must not reach c,
// so no connection a -> c can be opened this way.
func TestReversePickup(t *testing.T) {
	n := newNode(t)
	w := wire{srcMAC: n.podMAC(n.a), dstMAC: n.gatewayMAC(n.a), src: n.a.IPs[0], dst: n.c.IPs[0]}
	sniff := n.sniffer(n.c, hasMarker)
	in := n.injector(n.a)
	before := n.metrics()
	steps := []struct {
		what  string
		frame []byte
		may   bool // allowed to reach c today (by design)
	}{
		{"ACK+PSH with data, no flow", w.tcp(t, 40000, 8080, fACK|fPSH, mark("pickup")), true},
		{"SYN on the picked-up tuple", w.tcp(t, 40000, 8080, fSYN, mark("syn-after-pickup")), false},
		{"new SYN", w.tcp(t, 40001, 8080, fSYN, mark("new-syn")), false},
	}
	for _, s := range steps {
		sniff.Reset()
		if err := in.Send(s.frame); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		got := sniff.Count() > 0
		switch {
		case got && !s.may:
			t.Errorf("%s from a reached c, which does not admit a", s.what)
		case got:
			t.Logf("%s from a reached c, which does not admit a (reverse pick-up: c may reach a)", s.what)
		default:
			t.Logf("%s from a was dropped", s.what)
		}
	}
	t.Logf("drops: %v", dropDeltas(before, n.metrics()))
	n.expect("after the pick-up", "app/a", "app/c", tcpPort(8080))
}
