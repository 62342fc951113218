package hostile

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/podgate/podgate/internal/lab"
)

// TestICMPErrorOnlyFromQuotedDestination: a pod can send an ICMP error
// only about a packet that was sent to it. An error arriving on a pod port
// passes only if it goes to the quoted packet's source and comes from the
// quoted packet's destination (fastpath/verdict.go); otherwise policy
// judges it as the packet it is. Without the second condition (the bug
// the hostile tests found; see SECURITY.md) a pod could carry up to an MTU
// of its own bytes after the quote of someone else's tracked flow, to
// peers that policy denies it:
//
//   - d, whose egress is shut, reaching a (and an outside host) by quoting
//     a flow of theirs;
//   - a reaching c, which admits only b, by quoting c's flow to b.
//
// The control case, b's own error about a's flow to b, arrives.
func TestICMPErrorOnlyFromQuotedDestination(t *testing.T) {
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
