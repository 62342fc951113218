package lab

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/policy/table"
)

// capture records the IPv4 packets seen on an interface of the node
// namespace (an AF_PACKET socket), until stop is called.
type capture struct {
	fd       int
	stopping atomic.Bool
	done     chan struct{}
	mu       sync.Mutex
	packets  [][]byte // IPv4 packets (Ethernet header removed)
	once     sync.Once
}

func startCapture(t *testing.T, l *Lab, ifname string) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{})}
	err := l.Node().NS.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", ifname, err)
	}
	fd := c.fd
	go func() {
		defer close(c.done)
		buf := make([]byte, 65536)
		for !c.stopping.Load() {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // EAGAIN every 50ms: check stopping
			}
			if n > 14 && binary.BigEndian.Uint16(buf[12:]) == unix.ETH_P_IP {
				c.mu.Lock()
				c.packets = append(c.packets, append([]byte(nil), buf[14:n]...))
				c.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop ends the capture and returns the packets seen.
func (c *capture) stop() [][]byte {
	c.once.Do(func() {
		c.stopping.Store(true)
		<-c.done
		unix.Close(c.fd)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.packets
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestSCTPOnTheWire captures a pod's host veth while another pod probes it
// over SCTP: the packets are SCTP (protocol 132) with the probe's ports,
// never pion's 5000, and a correct CRC32c, so the gateway judges the real
// port.
func TestSCTPOnTheWire(t *testing.T) {
	l := newArticleLab(t, EnforcerNone)
	c := startCapture(t, l, "veth0-dbpod")
	p := table.PortSpec{Port: 8080, Protocol: table.SCTP}
	ok, err := l.Probe(context.Background(), "frontend/apipod", "backend/dbpod", p)
	if err != nil || !ok {
		t.Fatalf("probe: %v, %v", ok, err)
	}
	time.Sleep(100 * time.Millisecond)
	pkts := c.stop()
	n := 0
	for _, ip := range pkts {
		if len(ip) < 20 || ip[9] != 132 {
			continue
		}
		sctpPkt := ip[int(ip[0]&0xf)*4:]
		src, dst, ok := sctpPorts(sctpPkt)
		if !ok {
			t.Fatalf("short SCTP packet")
		}
		n++
		if src == pionPort || dst == pionPort || (dst != 8080 && src != 8080) {
			t.Errorf("SCTP packet %d -> %d on the wire", src, dst)
		}
		if !sctpChecksumOK(sctpPkt) {
			t.Errorf("SCTP packet %d -> %d: bad CRC32c", src, dst)
		}
	}
	// INIT, INIT ACK, COOKIE ECHO, COOKIE ACK, DATA, SACK/DATA, ...,
	// SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE.
	if n < 8 {
		t.Fatalf("saw %d SCTP packets on veth0-dbpod, want at least 8", n)
	}
	t.Logf("%d SCTP packets, all with port 8080 and a good CRC32c", n)
}
