package xsk_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/podgate/podgate/fastpath/xsk"
	"golang.org/x/sys/unix"
)

// xskGenerator transmits prebuilt 64-byte UDP frames out of a pod's eth0
// with an AF_XDP socket: a generator without the cost of the UDP socket
// stack, to find the forwarder's own limit.
type xskGenerator struct {
	sock  *xsk.Socket
	frame []byte
}

func newXSKGenerator(tb testing.TB, l *lab, src, dst netip.AddrPort) *xskGenerator {
	tb.Helper()
	g := &xskGenerator{frame: udpFrame(l.a.MAC, l.a.PeerMAC, src, dst, 22)}
	inNS(tb, l.podA, func() error {
		var err error
		g.sock, err = xsk.Open(xsk.Config{Ifindex: l.a.PeerIndex, FillFrames: 64})
		return err
	})
	tb.Cleanup(func() { g.sock.Close() })
	return g
}

// send transmits n frames in batches of 64 and returns how many were queued.
func (g *xskGenerator) send(n int) (int, error) {
	sent := 0
	for sent < n {
		k := min(64, n-sent)
		for range k {
			f, ok := g.sock.Alloc()
			if !ok {
				break
			}
			f.Len = uint32(copy(g.sock.Bytes(f), g.frame))
			if !g.sock.Transmit(f) {
				g.sock.Release(f)
				break
			}
			sent++
		}
		if err := g.sock.Flush(); err != nil {
			return sent, err
		}
	}
	// Let the kernel send what is queued.
	for range 1000 {
		if !g.sock.NeedsKick() {
			break
		}
		if err := g.sock.Flush(); err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// udpFrame builds an Ethernet/IPv4/UDP frame with a payload of n zero
// bytes and correct checksums.
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, n int) []byte {
	f := make([]byte, 14+20+8+n)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+n))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip, 0)))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+n))
	pseudo := sum(ip[12:20], 0) + unix.IPPROTO_UDP + uint32(8+n)
	c := ^fold(sum(udp, pseudo))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return f
}
