package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/internal/netns"
)

// FrameLen is the length of the generator's frames: Ethernet (14), IPv4
// (20) and UDP (8) headers and 22 bytes of payload, 64 bytes on the wire
// without the frame check sequence that veth does not carry.
const FrameLen = 64

// GeneratorConfig describes an AF_XDP UDP generator.
type GeneratorConfig struct {
	// NS and Ifname are the interface the generator transmits out of.
	NS     *netns.Namespace
	Ifname string
	// SrcMAC and DstMAC fill the Ethernet header: the interface's own MAC
	// and its gateway's (or peer's).
	SrcMAC, DstMAC net.HardwareAddr
	// Src and Dst are the IPv4 addresses of every frame.
	Src, Dst netip.Addr
	// Flow i of the generator has UDP source port SrcPortBase + i%SrcPorts
	// and destination port DstPortBase + i/SrcPorts.
	SrcPortBase, SrcPorts, DstPortBase int
}

// Generator transmits 64-byte UDP frames out of one interface with an
// AF_XDP socket (copy mode on veth): no UDP socket stack per packet, one
// sendto(2) per batch of 64 frames. It is not safe for concurrent use.
type Generator struct {
	cfg      GeneratorConfig
	sock     *xsk.Socket
	template [FrameLen]byte
	csum0    uint16 // the template's UDP checksum, with ports 0
}

// NewGenerator opens the generator's socket on cfg.Ifname in cfg.NS.
func NewGenerator(cfg GeneratorConfig) (*Generator, error) {
	if !cfg.Src.Is4() || !cfg.Dst.Is4() {
		return nil, fmt.Errorf("new generator: want IPv4 addresses, got %v and %v", cfg.Src, cfg.Dst)
	}
	if cfg.SrcPorts <= 0 || cfg.SrcPortBase <= 0 || cfg.SrcPortBase+cfg.SrcPorts > 65536 || cfg.DstPortBase <= 0 {
		return nil, fmt.Errorf("new generator: bad ports %d+%d, %d", cfg.SrcPortBase, cfg.SrcPorts, cfg.DstPortBase)
	}
	g := &Generator{cfg: cfg}
	buildUDPFrame(g.template[:], cfg.DstMAC, cfg.SrcMAC, cfg.Src, cfg.Dst)
	g.csum0 = binary.BigEndian.Uint16(g.template[40:])
	err := cfg.NS.Do(func() error {
		link, err := netlink.LinkByName(cfg.Ifname)
		if err != nil {
			return fmt.Errorf("find %s: %w", cfg.Ifname, err)
		}
		g.sock, err = xsk.Open(xsk.Config{
			Ifindex:    link.Attrs().Index,
			NumFrames:  4096,
			RingSize:   2048,
			FillFrames: 16, // it never receives
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("new generator on %s: %w", cfg.Ifname, err)
	}
	return g, nil
}

// Close closes the socket.
func (g *Generator) Close() error {
	if err := g.sock.Close(); err != nil {
		return fmt.Errorf("close generator: %w", err)
	}
	return nil
}

// Offer describes one run of the generator.
type Offer struct {
	// Rate in packets per second; 0 sends as fast as the socket takes
	// frames.
	Rate float64
	// Duration bounds the run; Count, when not 0, stops it after Count
	// frames.
	Duration time.Duration
	Count    uint64
	// Flows is the number of flows sent round-robin, starting with flow
	// FirstFlow (see [GeneratorConfig]), beginning at offset Resume
	// within them (a previous run's Sent.Next continues where it
	// stopped).
	FirstFlow, Flows, Resume int
}

// Sent is what a run of the generator did.
type Sent struct {
	Frames  uint64
	Elapsed time.Duration
	// Next is the offset of the flow the next frame would have had.
	Next int
}

// Rate returns the frames per second.
func (s Sent) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Frames) / s.Elapsed.Seconds()
}

// batchSize is the most frames queued per sendto.
const batchSize = 64

// Send runs the generator on the calling goroutine (pin its thread to make
// it steadier) until o.Duration passes, o.Count frames are sent or ctx is
// done. It paces by the clock: before each batch it sends what is due at
// o.Rate (at most 64 frames), sleeping when more than 200 µs ahead and
// spinning otherwise.
func (g *Generator) Send(ctx context.Context, o Offer) (Sent, error) {
	if o.Flows <= 0 || o.FirstFlow < 0 || o.Resume < 0 {
		return Sent{}, fmt.Errorf("send: bad flows %d+%d", o.FirstFlow, o.Flows)
	}
	if o.Duration <= 0 {
		return Sent{}, errors.New("send: no duration")
	}
	if maxFlow := o.FirstFlow + o.Flows; g.cfg.DstPortBase+(maxFlow-1)/g.cfg.SrcPorts > 65535 {
		return Sent{}, fmt.Errorf("send: %d flows do not fit the destination ports", maxFlow)
	}
	var (
		sent  uint64
		flow  = o.Resume % o.Flows
		start = time.Now()
		done  = ctx.Done()
		iter  = 0
	)
	for {
		iter++
		if iter&63 == 0 {
			select {
			case <-done:
				return Sent{sent, time.Since(start), flow}, fmt.Errorf("send: %w", ctx.Err())
			default:
			}
		}
		elapsed := time.Since(start)
		if elapsed >= o.Duration || (o.Count > 0 && sent >= o.Count) {
			break
		}
		want := uint64(batchSize)
		if o.Rate > 0 {
			due := uint64(o.Rate*elapsed.Seconds()) + 1
			if due <= sent {
				ahead := time.Duration(float64(sent-due+1) / o.Rate * float64(time.Second))
				if ahead > 200*time.Microsecond {
					time.Sleep(ahead - 100*time.Microsecond)
				}
				continue
			}
			want = min(want, due-sent)
		}
		if o.Count > 0 {
			want = min(want, o.Count-sent)
		}
		n := uint64(0)
		for n < want {
			f, ok := g.sock.Alloc()
			if !ok {
				break
			}
			b := g.sock.Bytes(f)
			g.frame(b[:FrameLen], o.FirstFlow+flow)
			f.Len = FrameLen
			if !g.sock.Transmit(f) {
				g.sock.Release(f)
				break
			}
			n++
			if flow++; flow == o.Flows {
				flow = 0
			}
		}
		if err := g.sock.Flush(); err != nil {
			return Sent{sent, time.Since(start), flow}, fmt.Errorf("send: %w", err)
		}
		sent += n
	}
	elapsed := time.Since(start)
	if err := g.drain(time.Second); err != nil {
		return Sent{sent, elapsed, flow}, fmt.Errorf("send: %w", err)
	}
	return Sent{sent, elapsed, flow}, nil
}

// drain kicks the kernel until it has completed every frame handed to it,
// so that a run's frames are on the wire (or dropped) when Send returns
// and none is left for the next run.
func (g *Generator) drain(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if err := g.sock.Flush(); err != nil {
			return err
		}
		st, err := g.sock.Stats()
		if err != nil {
			return err
		}
		if st.Completed >= st.TxFrames {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d frames not completed after %v", st.TxFrames-st.Completed, limit)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// frame writes flow i's frame into b.
func (g *Generator) frame(b []byte, i int) {
	copy(b, g.template[:])
	sp := uint16(g.cfg.SrcPortBase + i%g.cfg.SrcPorts)
	dp := uint16(g.cfg.DstPortBase + i/g.cfg.SrcPorts)
	binary.BigEndian.PutUint16(b[34:], sp)
	binary.BigEndian.PutUint16(b[36:], dp)
	// The template's checksum covers ports 0; add the ports (RFC 1624).
	c := packet.UpdateChecksum(packet.UpdateChecksum(g.csum0, 0, sp), 0, dp)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(b[40:], c)
}

// buildUDPFrame writes an Ethernet/IPv4/UDP frame of FrameLen bytes with
// ports 0 and correct checksums into b.
func buildUDPFrame(b []byte, dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr) {
	const payload = FrameLen - 14 - 20 - 8
	clear(b)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 20+8+payload)
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ^packet.Sum(ip, 0))
	udp := b[34:FrameLen]
	binary.BigEndian.PutUint16(udp[4:], 8+payload)
	copy(udp[8:], "podgate-bench")
	c := ^packet.Sum(udp, packet.PseudoHeaderSum(src, dst, unix.IPPROTO_UDP, len(udp)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
}

// TC return codes.
const (
	tcOK   = 0
	tcShot = 2
)

// Offsets of data and data_end in struct __sk_buff.
const (
	skbData    = 76
	skbDataEnd = 80
)

// Sink counts and drops, in a TC program on an interface's ingress
// (TCX), the IPv4 UDP frames whose destination port is in a range; every
// other frame passes to the stack. TC sees every frame the interface
// receives, whichever way it came: through the veth's peer, or handed
// straight to the interface by bpf_redirect_peer (which skips the veth's
// receive path, where a native XDP program would run). Counting there
// costs the receiving side little, so the sink is never the bottleneck.
// The program is attached through a BPF link, so it goes away with the
// process even if Close is never called.
type Sink struct {
	prog  *ebpf.Program
	count *ebpf.Map
	link  link.Link
}

// NewSink loads the sink and attaches it to ifname in ns.
func NewSink(ns *netns.Namespace, ifname string, portLo, portHi uint16) (_ *Sink, err error) {
	s := &Sink{}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("new sink on %s: %w", ifname, err), s.Close())
		}
	}()
	s.count, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "pgbench_count", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("create counter map: %w", err)
	}
	ipv4 := int32(binary.NativeEndian.Uint16([]byte{0x08, 0x00}))
	s.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "pgbench_sink",
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
			asm.LoadMem(asm.R3, asm.R1, skbDataEnd, asm.Word),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 38),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
			asm.JNE.Imm(asm.R4, ipv4, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 14, asm.Byte),
			asm.JNE.Imm(asm.R4, 0x45, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 23, asm.Byte),
			asm.JNE.Imm(asm.R4, unix.IPPROTO_UDP, "pass"),
			asm.LoadMem(asm.R4, asm.R2, 36, asm.Half),
			asm.HostTo(asm.BE, asm.R4, asm.Half),
			asm.JLT.Imm(asm.R4, int32(portLo), "pass"),
			asm.JGT.Imm(asm.R4, int32(portHi), "pass"),
			asm.StoreImm(asm.R10, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.R10),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, s.count.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "drop"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, tcShot).WithSymbol("drop"),
			asm.Return(),
			asm.Mov.Imm(asm.R0, tcOK).WithSymbol("pass"),
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("load program: %w", err)
	}
	err = ns.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s: %w", ifname, err)
		}
		s.link, err = link.AttachTCX(link.TCXOptions{
			Program: s.prog, Interface: l.Attrs().Index, Attach: ebpf.AttachTCXIngress, Anchor: link.Head(),
		})
		if err != nil {
			return fmt.Errorf("attach: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Count returns the number of frames counted so far.
func (s *Sink) Count() (uint64, error) {
	var v uint64
	if err := s.count.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("read sink counter: %w", err)
	}
	return v, nil
}

// Close detaches the program (if the interface still exists) and releases
// it.
func (s *Sink) Close() error {
	var errs []error
	if s.link != nil {
		if err := s.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach sink: %w", err))
		}
		s.link = nil
	}
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
		s.prog = nil
	}
	if s.count != nil {
		errs = append(errs, s.count.Close())
		s.count = nil
	}
	return errors.Join(errs...)
}
