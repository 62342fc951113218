package xsk_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/podgate/podgate/fastpath/xsk"
	"golang.org/x/sys/unix"
)

// BenchmarkUDPFlood floods 64-byte frames (22-byte UDP payloads) from pod A
// to pod B through the test forwarder (xsk-native, xsk-generic) and through
// the node kernel's IPv4 forwarding (kernel), one packet per op. The
// generator is one thread doing sendmmsg(2) of 64 datagrams; pod B has a
// UDP socket that is never read (the same work in every case). Metrics:
// sent-pps is the generator's rate, rx-pps what reached pod B's eth0.
//
//	go test -run '^$' -bench UDPFlood -benchtime 3000000x -count 3 ./fastpath/xsk/
func BenchmarkUDPFlood(b *testing.B) {
	cases := []struct {
		name   string
		mode   xsk.AttachMode // 0: kernel forwarding
		rawGen bool           // generate with an AF_XDP socket in pod A
	}{
		{"udpgen/kernel", 0, false},
		{"udpgen/xsk-native", xsk.Native, false},
		{"udpgen/xsk-generic", xsk.Generic, false},
		{"xskgen/kernel", 0, true},
		{"xskgen/xsk-native", xsk.Native, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			l := newLab(b, 1500)
			var (
				fw     *forwarder
				pa, pb *port
			)
			if c.mode == 0 {
				if err := l.node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
					b.Fatal(err)
				}
			} else {
				fw, pa, pb = startLabForwarder(b, l, c.mode, xsk.Config{})
			}
			dst := netip.AddrPortFrom(ipB, 9999)
			sink := bindUDP(b, l, dst)
			_ = sink
			src := netip.AddrPortFrom(ipA, 40000)
			var gen func(n int) (int, error)
			if c.rawGen {
				gen = newXSKGenerator(b, l, src, dst).send
			} else {
				fd := dialUDP(b, l.podA, src, dst)
				gen = func(n int) (int, error) { return udpFloodN(fd, n) }
			}
			// Warm up (neighbour entries are static; this fills caches).
			if _, err := gen(10000); err != nil {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			before := linkStats(b, l.podB, "eth0").RxPackets
			cpu0 := processCPU()
			b.ResetTimer()
			start := time.Now()
			sent, err := gen(b.N)
			elapsed := time.Since(start)
			b.StopTimer()
			cpu := processCPU() - cpu0
			if err != nil {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // drain
			got := linkStats(b, l.podB, "eth0").RxPackets - before
			b.ReportMetric(float64(sent)/elapsed.Seconds(), "sent-pps")
			b.ReportMetric(float64(got)/elapsed.Seconds(), "rx-pps")
			if got > 0 {
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(got), "cpu-ns/rx-pkt")
			}
			if fw != nil {
				b.ReportMetric(float64(fw.dropped.Load()), "fw-drops")
				for _, p := range []*port{pa, pb} {
					st, err := p.sock.Stats()
					if err != nil {
						b.Fatal(err)
					}
					b.Logf("port %s: %+v", p.name, st)
				}
			}
		})
	}
}

// processCPU returns the user+system CPU time of this process so far. Kernel
// work done in softirq context on behalf of the process's threads (veth,
// XDP, the pods' stacks) is mostly charged to them, work deferred to
// ksoftirqd is not.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bindUDP binds a UDP socket in pod B that is never read, so datagrams are
// dropped at the socket instead of triggering ICMP errors.
func bindUDP(tb testing.TB, l *lab, at netip.AddrPort) int {
	tb.Helper()
	var fd int
	inNS(tb, l.podB, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrInet4{Addr: at.Addr().As4(), Port: int(at.Port())})
	})
	tb.Cleanup(func() { unix.Close(fd) })
	return fd
}

// udpFloodN sends n 22-byte datagrams on a connected UDP socket with
// sendmmsg(2), 64 per call, and returns how many the kernel accepted.
func udpFloodN(fd, n int) (int, error) {
	const batch = 64
	payload := make([]byte, 22)
	iov := unix.Iovec{Base: &payload[0]}
	iov.SetLen(len(payload))
	type mmsghdr struct {
		hdr unix.Msghdr
		len uint32
		_   [4]byte
	}
	msgs := make([]mmsghdr, batch)
	for i := range msgs {
		msgs[i].hdr.Iov = &iov
		msgs[i].hdr.SetIovlen(1)
	}
	sent := 0
	for tries := 0; sent < n; tries++ {
		k := min(batch, n-sent)
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(k), 0, 0, 0)
		switch e {
		case 0:
			sent += int(r)
		case unix.EAGAIN, unix.ENOBUFS, unix.ECONNREFUSED:
			if tries > 100*n {
				return sent, fmt.Errorf("sendmmsg: %w", e)
			}
		default:
			return sent, fmt.Errorf("sendmmsg: %w", e)
		}
	}
	return sent, nil
}
