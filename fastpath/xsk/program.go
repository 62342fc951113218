package xsk

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ProgramName is the kernel name of the XDP program loaded by [NewProgram];
// [RemoveStale] recognises leftovers of a crashed podgate by it.
const ProgramName = "podgate_xsk"

// XDP program return codes (enum xdp_action).
const (
	xdpDrop = 1
	xdpPass = 2
)

// Errors returned by this package.
var (
	// ErrInvalidMode is returned for an AttachMode that is neither Native
	// nor Generic.
	ErrInvalidMode = errors.New("invalid XDP attach mode")
	// ErrClosed is returned when a Socket or Program is used after Close.
	ErrClosed = errors.New("closed")
	// ErrAttached is returned by Attach when the interface already has an
	// XDP program (maybe a leftover: see RemoveStale) or this Program is
	// already attached.
	ErrAttached = errors.New("XDP program already attached")
	// ErrFrameSize is returned by Open when the interface MTU allows
	// frames longer than a UMEM frame can receive; raise FrameSize or
	// lower the MTU.
	ErrFrameSize = errors.New("UMEM frame too small for interface MTU")
)

// ProgramConfig describes the XDP program for one interface.
type ProgramConfig struct {
	// Queues is the number of RX queues that can have a socket (XSKMAP
	// entries); 0 means 1, which is all a veth has by default.
	Queues int
	// PassUnbound sends frames arriving on a queue without a registered
	// socket to the kernel stack (XDP_PASS). By default they are dropped:
	// once podgate owns an interface nothing passes unchecked, also after
	// a crash closed the sockets.
	PassUnbound bool
}

// Program is the XDP program that redirects every frame arriving on an
// interface queue to the AF_XDP socket registered for that queue: in C,
// `return bpf_redirect_map(&xsks, ctx->rx_queue_index, fallback);` with
// fallback XDP_DROP or XDP_PASS. Each interface needs its own Program
// because the map is keyed by queue number only.
//
// Netlink operations (Attach, Detach, Close) act in the network namespace
// of the calling thread. A Program is not safe for concurrent use.
type Program struct {
	prog    *ebpf.Program
	xsks    *ebpf.Map
	queues  int
	ifindex int // 0 when not attached
	mode    AttachMode
}

// NewProgram loads the XDP program and its XSKMAP into the kernel.
func NewProgram(cfg ProgramConfig) (*Program, error) {
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.Queues < 0 || cfg.Queues > 1<<16 {
		return nil, fmt.Errorf("load xdp program: queue count %d out of range", cfg.Queues)
	}
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "podgate_xsks",
		Type:       ebpf.XSKMap,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(cfg.Queues),
	})
	if err != nil {
		return nil, fmt.Errorf("create xskmap: %w", err)
	}
	fallback := int32(xdpDrop)
	if cfg.PassUnbound {
		fallback = xdpPass
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: ProgramName,
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			// r2 = ctx->rx_queue_index (struct xdp_md, offset 16)
			asm.LoadMem(asm.R2, asm.R1, 16, asm.Word),
			asm.LoadMapPtr(asm.R1, xsks.FD()),
			// Lower bits of the flags are the action when the map
			// slot is empty.
			asm.Mov.Imm(asm.R3, fallback),
			asm.FnRedirectMap.Call(),
			asm.Return(),
		},
		License: "Dual BSD/GPL",
	})
	if err != nil {
		_ = xsks.Close()
		return nil, fmt.Errorf("load xdp program: %w", err)
	}
	return &Program{prog: prog, xsks: xsks, queues: cfg.Queues}, nil
}

// ID returns the kernel's ID of the loaded program (as shown by
// `ip link` and bpftool), or 0 if unknown.
func (p *Program) ID() uint32 {
	if p.prog == nil {
		return 0
	}
	info, err := p.prog.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return uint32(id)
}

// Register directs frames of the given queue to the socket with file
// descriptor fd (see [Socket.FD]). The socket must be bound to the same
// interface and queue the program is attached to, or the kernel drops the
// frames. Closing the socket unregisters it.
func (p *Program) Register(queue, fd int) error {
	if p.xsks == nil {
		return fmt.Errorf("register socket: %w", ErrClosed)
	}
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("register socket: queue %d out of range [0, %d)", queue, p.queues)
	}
	if err := p.xsks.Put(uint32(queue), uint32(fd)); err != nil {
		return fmt.Errorf("register socket for queue %d: %w", queue, err)
	}
	return nil
}

// Unregister removes the socket of a queue; its frames then take the
// fallback action (drop, or pass with PassUnbound).
func (p *Program) Unregister(queue int) error {
	if p.xsks == nil {
		return fmt.Errorf("unregister socket: %w", ErrClosed)
	}
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("unregister socket: queue %d out of range [0, %d)", queue, p.queues)
	}
	if err := p.xsks.Delete(uint32(queue)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unregister socket for queue %d: %w", queue, err)
	}
	return nil
}

// Attach attaches the program to the interface in the given mode, with
// XDP_FLAGS_UPDATE_IF_NOEXIST: it fails with [ErrAttached] instead of
// replacing a program that is already there. Register sockets before
// attaching, or frames take the fallback action meanwhile.
func (p *Program) Attach(ifindex int, mode AttachMode) error {
	if p.prog == nil {
		return fmt.Errorf("attach xdp: %w", ErrClosed)
	}
	if p.ifindex != 0 {
		return fmt.Errorf("attach xdp to ifindex %d: %w to ifindex %d", ifindex, ErrAttached, p.ifindex)
	}
	flags, err := mode.flags()
	if err != nil {
		return fmt.Errorf("attach xdp: %w", err)
	}
	err = setXDP(ifindex, p.prog.FD(), flags|unix.XDP_FLAGS_UPDATE_IF_NOEXIST, -1)
	if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
		err = fmt.Errorf("%w (%w)", ErrAttached, err)
	}
	if err != nil {
		return fmt.Errorf("attach xdp to ifindex %d in %v mode: %w", ifindex, mode, err)
	}
	p.ifindex, p.mode = ifindex, mode
	return nil
}

// Detach removes the program from the interface it is attached to, only if
// it is still this program there (XDP_FLAGS_REPLACE with the expected
// program). It is a no-op when not attached; if the interface is gone the
// program went with it.
func (p *Program) Detach() error {
	if p.ifindex == 0 || p.prog == nil {
		return nil
	}
	flags, err := p.mode.flags()
	if err != nil {
		return fmt.Errorf("detach xdp: %w", err)
	}
	err = setXDP(p.ifindex, -1, flags|unix.XDP_FLAGS_REPLACE, p.prog.FD())
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("detach xdp from ifindex %d: %w", p.ifindex, err)
	}
	p.ifindex = 0
	return nil
}

// Close detaches the program if attached and releases the program and map.
// Closing a Program that was never detached would otherwise leave it
// attached, holding the map, until the interface is removed.
func (p *Program) Close() error {
	var errs []error
	if err := p.Detach(); err != nil {
		errs = append(errs, err)
	}
	if p.prog != nil {
		if err := p.prog.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close xdp program: %w", err))
		}
		p.prog = nil
	}
	if p.xsks != nil {
		if err := p.xsks.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close xskmap: %w", err))
		}
		p.xsks = nil
	}
	return errors.Join(errs...)
}

// XDPState is what XDP programs an interface has, by kernel program ID (0:
// none). An interface can have one program per mode at the same time.
type XDPState struct {
	Native, Generic uint32
}

// QueryXDP returns the XDP programs attached to an interface, in the
// network namespace of the calling thread.
func QueryXDP(ifindex int) (XDPState, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return XDPState{}, fmt.Errorf("query xdp on ifindex %d: %w", ifindex, err)
	}
	var st XDPState
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
		if err != nil {
			return XDPState{}, fmt.Errorf("query xdp on ifindex %d: parse link: %w", ifindex, err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_XDP {
				continue
			}
			nested, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return XDPState{}, fmt.Errorf("query xdp on ifindex %d: parse xdp: %w", ifindex, err)
			}
			for _, x := range nested {
				if len(x.Value) < 4 {
					continue
				}
				switch x.Attr.Type {
				case unix.IFLA_XDP_DRV_PROG_ID:
					st.Native = binary.NativeEndian.Uint32(x.Value)
				case unix.IFLA_XDP_SKB_PROG_ID:
					st.Generic = binary.NativeEndian.Uint32(x.Value)
				}
			}
		}
	}
	return st, nil
}

// RemoveStale detaches, from an interface in the calling thread's network
// namespace, every XDP program named [ProgramName] (left behind by a
// podgate that did not stop cleanly) and returns how many it removed.
// Programs with other names are left alone and reported as an error, so
// podgate never takes an interface away from another XDP user.
func RemoveStale(ifindex int) (int, error) {
	st, err := QueryXDP(ifindex)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, c := range []struct {
		id   uint32
		mode AttachMode
	}{{st.Native, Native}, {st.Generic, Generic}} {
		if c.id == 0 {
			continue
		}
		prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(c.id))
		if err != nil {
			errs = append(errs, fmt.Errorf("open xdp program %d: %w", c.id, err))
			continue
		}
		info, err := prog.Info()
		if err != nil {
			_ = prog.Close()
			errs = append(errs, fmt.Errorf("inspect xdp program %d: %w", c.id, err))
			continue
		}
		if info.Name != ProgramName {
			_ = prog.Close()
			errs = append(errs, fmt.Errorf("ifindex %d has foreign %v xdp program %d %q: %w", ifindex, c.mode, c.id, info.Name, ErrAttached))
			continue
		}
		flags, _ := c.mode.flags()
		err = setXDP(ifindex, -1, flags|unix.XDP_FLAGS_REPLACE, prog.FD())
		_ = prog.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("detach stale %v xdp program %d from ifindex %d: %w", c.mode, c.id, ifindex, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}

// setXDP sends RTM_SETLINK with an IFLA_XDP attribute: program fd (-1 to
// remove), flags, and, when expected >= 0, the fd of the program that must
// currently be attached (with XDP_FLAGS_REPLACE).
func setXDP(ifindex, fd int, flags uint32, expected int) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	xdp := nl.NewRtAttr(unix.IFLA_XDP|unix.NLA_F_NESTED, nil)
	xdp.AddRtAttr(unix.IFLA_XDP_FD, nl.Uint32Attr(uint32(int32(fd))))
	xdp.AddRtAttr(unix.IFLA_XDP_FLAGS, nl.Uint32Attr(flags))
	if expected >= 0 {
		xdp.AddRtAttr(unix.IFLA_XDP_EXPECTED_FD, nl.Uint32Attr(uint32(int32(expected))))
	}
	req.AddData(xdp)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
