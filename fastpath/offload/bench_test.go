package offload

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// BenchmarkForward64 forwards 64-byte UDP frames of one flow from pod A to
// pod B, through plain kernel routing or through pod_ingress with an
// ActPeer flow, and reports the packets per second that reached B.
//
// Frames are generated in pod A by an XDP program run with BPF_PROG_RUN in
// live-frames mode, redirecting to A's eth0 (so they arrive on A's host
// veth, which needs GRO on for NAPI), and counted and dropped by a TC
// program on B's eth0. Generation and forwarding run in the same softirq
// on one CPU, so ns/op is the cost of one frame end to end; the machine's
// other load shows up in the numbers. Run it alone, briefly:
//
//	go test -run '^$' -bench Forward64 -benchtime 2000000x -count 3 ./fastpath/offload/
func BenchmarkForward64(b *testing.B) {
	for _, offload := range []bool{false, true} {
		name := "routing"
		if offload {
			name = "offload"
		}
		b.Run(name, func(b *testing.B) { benchForward(b, offload) })
	}
}

func benchForward(b *testing.B, offload bool) {
	l := newLab(b)
	if err := setGRO(l.node, "ofa"); err != nil {
		b.Fatalf("GRO on A's host veth: %v", err)
	}
	if offload {
		o := open(b, Config{MaxFlows: 16})
		l.do(b, func() error { return o.AttachPod(l.podA.Index) })
		flow, _ := l.peerFlow(ipA4, ipB4, ProtoUDP, 9000, 9001, 0)
		if _, err := o.Install([]Flow{flow}); err != nil {
			b.Fatal(err)
		}
	}
	frame := frame{srcMAC: mac(l.podA.PeerMAC), dstMAC: mac(l.podA.MAC), src: ipA4, dst: ipB4,
		proto: ProtoUDP, sport: 9000, dport: 9001, payload: 22}.bytes(b)
	count := newSink(b, l.b, l.podB.PeerIndex)
	gen := newGenerator(b, l.podA.PeerIndex, frame)

	var before uint64
	if err := count.Lookup(uint32(0), &before); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	err := l.a.Do(func() error {
		_, err := gen.Run(&ebpf.RunOptions{
			Data:    frame,
			Repeat:  uint32(b.N),
			Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			Context: xdpCtx{DataEnd: uint32(len(frame)), IngressIfindex: uint32(l.podA.PeerIndex)},
		})
		return err
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatalf("generate: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // let backlogs drain
	var after uint64
	if err := count.Lookup(uint32(0), &after); err != nil {
		b.Fatal(err)
	}
	got := after - before
	b.ReportMetric(float64(got)/elapsed.Seconds(), "pps")
	b.ReportMetric(float64(got)/float64(b.N), "delivered")
}

// xdpCtx is struct xdp_md for BPF_PROG_RUN; DataEnd must be the frame length.
type xdpCtx struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// newGenerator loads an XDP program that sends frames out of ifindex (in
// the namespace it runs in). Live-frames mode recycles the frame's pages,
// and the kernel's forwarding rewrote them (MACs, TTL, checksum) on the
// way, so the program first writes back the original Ethernet addresses
// and IPv4 TTL and header checksum of frame, an IPv4 frame without options.
func newGenerator(tb testing.TB, ifindex int, frame []byte) *ebpf.Program {
	tb.Helper()
	word := func(off int) int64 { return int64(int32(binary.NativeEndian.Uint32(frame[off:]))) }
	half := func(off int) int64 { return int64(binary.NativeEndian.Uint16(frame[off:])) }
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 34),
			asm.JGT.Reg(asm.R4, asm.R3, "send"),
			asm.StoreImm(asm.R2, 0, word(0), asm.Word),
			asm.StoreImm(asm.R2, 4, word(4), asm.Word),
			asm.StoreImm(asm.R2, 8, word(8), asm.Word),
			asm.StoreImm(asm.R2, 22, half(22), asm.Half), // TTL, protocol
			asm.StoreImm(asm.R2, 24, half(24), asm.Half), // header checksum
			asm.Mov.Imm(asm.R1, int32(ifindex)).WithSymbol("send"),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		tb.Fatalf("load generator: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// newSink attaches to the TCX ingress of ifindex in ns a program that
// counts IPv4 UDP frames into the returned map's entry 0 and drops them.
func newSink(tb testing.TB, ns *netns.Namespace, ifindex int) *ebpf.Map {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	ipv4 := int32(binary.NativeEndian.Uint16([]byte{0x08, 0x00})) // the ethertype as a load sees it
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 76, asm.Word), // skb->data
			asm.LoadMem(asm.R3, asm.R1, 80, asm.Word), // skb->data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 34),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
			asm.JNE.Imm(asm.R4, ipv4, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 23, asm.Byte),
			asm.JNE.Imm(asm.R4, ProtoUDP, "pass"),
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "drop"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("drop"), // TC_ACT_SHOT
			asm.Return(),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("pass"), // TCX_NEXT
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		tb.Fatalf("load sink: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	var l link.Link
	if err := ns.Do(func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p, Attach: ebpf.AttachTCXIngress})
		return err
	}); err != nil {
		tb.Fatalf("attach sink: %v", err)
	}
	tb.Cleanup(func() { l.Close() })
	return m
}

// setGRO turns GRO on for an interface in ns (ethtool -K NAME gro on),
// which gives a veth the NAPI that frames redirected by XDP into its peer
// need.
func setGRO(ns *netns.Namespace, name string) error {
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		val := struct{ cmd, data uint32 }{unix.ETHTOOL_SGRO, 1}
		var ifr struct {
			name [unix.IFNAMSIZ]byte
			data unsafe.Pointer
			_    [16]byte
		}
		copy(ifr.name[:], name)
		ifr.data = unsafe.Pointer(&val)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		runtime.KeepAlive(&val)
		if errno != 0 {
			return fmt.Errorf("SIOCETHTOOL %s: %w", name, errno)
		}
		return nil
	})
}

// BenchmarkTake reads back the counters of a 1,000,000-flow table slot by
// slot, as the engine's sweep does once per second: idle (no packet since
// the last Take) and busy (every slot counted packets). ns/op is per slot.
//
//	go test -run '^$' -bench Take -count 3 ./fastpath/offload/
func BenchmarkTake(b *testing.B) {
	const slots = 1 << 20
	o := open(b, Config{MaxFlows: slots})
	for _, busy := range []bool{false, true} {
		name := "idle"
		if busy {
			name = "busy"
		}
		b.Run(name, func(b *testing.B) {
			var sum uint64
			for i := range b.N {
				slot := uint32(i % slots)
				if busy {
					*o.counters.field(slot, DirAB, fieldPackets) = 1
				}
				c := o.Take(slot)
				sum += c[DirAB].Packets + c[DirBA].LastSeenNS
			}
			if busy && sum == 0 {
				b.Fatal("no packet taken")
			}
		})
	}
}
