package hostile

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/lab"
)

// TestBugICMPErrorFromUninvolvedPod — BUG (policy bypass), fails until the
// fastpath is fixed. See the lead's report.
//
// fastpath/process.go (Engine.judge) lets an ICMP or ICMPv6 error through
// when the flow it quotes is tracked and the error goes to the quoted
// packet's source (p.Dst == p.Inner.Src), without asking who sends it: the
// sender's egress and the receiver's ingress are never judged. A pod that
// takes no part in the quoted flow can therefore send packets that policy
// denies, with up to an MTU of its own bytes after the quote:
//
//   - d, whose egress is shut, reaches a (and an outside host) by quoting a
//     flow of theirs;
//   - a reaches c, which admits only b, by quoting c's flow to b.
//
// A pod is an end host, not a router: an error it sends can only be about
// a packet that was sent to it. The fix proposed is to require, for errors
// that arrive on a pod port, that the sender is the quoted packet's
// destination (p.Src == p.Inner.Dst, besides p.Dst == p.Inner.Src); errors
// from the kernel leg (routers, the node, remote hosts) keep today's rule.
// The control case (b's own error about a's flow to b) must keep passing.
func TestBugICMPErrorFromUninvolvedPod(t *testing.T) {
	n := newNode(t)
	// from returns the wire of a frame from pod ep to dst.
	from := func(ep *lab.Endpoint, dst netip.Addr) wire {
		return wire{srcMAC: n.podMAC(ep), dstMAC: n.gatewayMAC(ep), src: ep.IPs[0], dst: dst}
	}
	type tcpFlow struct{ sport, dport uint16 }
	open := func(from, to string) tcpFlow {
		c := n.dial(from, to, tcpPort(80))
		if err := echo(c, time.Second); err != nil {
			t.Fatal(err)
		}
		la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
		return tcpFlow{uint16(la.Port), uint16(ra.Port)}
	}
	ab := open("app/a", "app/b") // allowed: b admits a on TCP 80
	cb := open("app/c", "app/b") // allowed: b admits c
	exta := open("ext", "app/a") // allowed: a's ingress is open

	cases := []struct {
		name     string
		from, to *lab.Endpoint // the sniffer runs in to
		frame    func(t *testing.T) []byte
		wantSeen bool
	}{
		{"Control/b-about-a-to-b", n.b, n.a, func(t *testing.T) []byte {
			return from(n.b, n.a.IPs[0]).icmp4Error(t, quote4(n.a.IPs[0], n.b.IPs[0], ab.sport, ab.dport), mark("control"))
		}, true},
		{"EgressShut/d-to-a-about-a-to-b", n.d, n.a, func(t *testing.T) []byte {
			return from(n.d, n.a.IPs[0]).icmp4Error(t, quote4(n.a.IPs[0], n.b.IPs[0], ab.sport, ab.dport), mark("exfiltrated from d"))
		}, false},
		{"EgressShut/d-to-outside-about-ext-to-a", n.d, n.ext, func(t *testing.T) []byte {
			return from(n.d, n.ext.IPs[0]).icmp4Error(t, quote4(n.ext.IPs[0], n.a.IPs[0], exta.sport, exta.dport), mark("exfiltrated to ext"))
		}, false},
		{"IngressIsolated/a-to-c-about-c-to-b", n.a, n.c, func(t *testing.T) []byte {
			return from(n.a, n.c.IPs[0]).icmp4Error(t, quote4(n.c.IPs[0], n.b.IPs[0], cb.sport, cb.dport), mark("into c"))
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sn := n.sniffer(c.to, hasMarker)
			in := n.injector(c.from)
			if err := in.Send(c.frame(t)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			seen := sn.Count() > 0
			switch {
			case c.wantSeen && !seen:
				t.Errorf("the ICMP error from %s did not arrive", c.from.Name)
			case !c.wantSeen && seen:
				t.Errorf("policy bypass: an ICMP error from %s carrying its own payload arrived at %s, which policy denies: %q",
					c.from.Name, c.to.Name, payloadAfterMarker(sn.Frames()[0]))
			}
		})
	}
}

// payloadAfterMarker returns the crafted payload of a frame, from the
// marker on.
func payloadAfterMarker(f []byte) []byte {
	for i := 0; i+len(marker) <= len(f); i++ {
		if string(f[i:i+len(marker)]) == marker {
			return f[i:]
		}
	}
	return nil
}
