package xsk

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// ProgramName is the kernel name of the XDP program loaded by [NewProgram];
// [RemoveStale] recognises by it the programs older podgate versions left
// attached with netlink.
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
// Attach, AttachPinned, Detach and Close act in the network namespace of
// the calling thread. A Program is not safe for concurrent use.
type Program struct {
	prog    *ebpf.Program
	xsks    *ebpf.Map
	queues  int
	link    link.Link // nil when not attached
	ifindex int
	mode    AttachMode
	pinned  bool
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

// Attach attaches the program to the interface in the given mode through
// a BPF link (link.AttachXDP), which the Program holds: the program goes
// away with the process unless the link is pinned ([Program.AttachPinned]).
// It fails with [ErrAttached] instead of replacing a program that is
// already there (maybe an older podgate's: see [RemoveStale]) or when this
// Program is attached already. Register sockets before attaching, or
// frames take the fallback action meanwhile.
func (p *Program) Attach(ifindex int, mode AttachMode) error {
	if err := p.attachable(ifindex); err != nil {
		return err
	}
	return p.attach(ifindex, mode)
}

// AttachPinned is [Program.Attach] with the link pinned at path on a bpffs,
// so that it survives the process: after a crash the interface keeps the
// program, whose frames take the fallback action (drop) once the sockets
// died. If a link is pinned at path already (a previous run's) and still
// attached to ifindex, it is updated in place to this program
// (BPF_LINK_UPDATE: the interface is never without a program), keeps the
// previous run's attach mode, and AttachPinned reports true. A pinned link
// whose interface is gone is removed first.
func (p *Program) AttachPinned(ifindex int, mode AttachMode, path string) (updated bool, err error) {
	if err := p.attachable(ifindex); err != nil {
		return false, err
	}
	if _, err := mode.flags(); err != nil {
		return false, fmt.Errorf("attach xdp: %w", err)
	}
	old, err := link.LoadPinnedLink(path, nil)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return false, fmt.Errorf("attach xdp to ifindex %d: load pinned link %s: %w", ifindex, path, err)
	default:
		if idx, ierr := xdpIfindex(old); ierr != nil || idx != ifindex {
			// Its interface is gone (or it is no XDP link): drop it.
			if err := errors.Join(ierr, old.Unpin(), old.Close()); err != nil {
				return false, fmt.Errorf("attach xdp to ifindex %d: remove stale link %s: %w", ifindex, path, err)
			}
			break
		}
		if err := old.Update(p.prog); err != nil {
			_ = old.Close()
			return false, fmt.Errorf("attach xdp to ifindex %d: update pinned link %s: %w", ifindex, path, err)
		}
		p.link, p.ifindex, p.mode, p.pinned = old, ifindex, mode, true
		return true, nil
	}
	if err := p.attach(ifindex, mode); err != nil {
		return false, err
	}
	if err := p.link.Pin(path); err != nil {
		return false, errors.Join(fmt.Errorf("attach xdp to ifindex %d: pin link %s: %w", ifindex, path, err), p.Detach())
	}
	p.pinned = true
	return false, nil
}

func (p *Program) attachable(ifindex int) error {
	if p.prog == nil {
		return fmt.Errorf("attach xdp: %w", ErrClosed)
	}
	if p.link != nil {
		return fmt.Errorf("attach xdp to ifindex %d: %w to ifindex %d", ifindex, ErrAttached, p.ifindex)
	}
	return nil
}

func (p *Program) attach(ifindex int, mode AttachMode) error {
	flags, err := mode.flags()
	if err != nil {
		return fmt.Errorf("attach xdp: %w", err)
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifindex, Flags: link.XDPAttachFlags(flags)})
	if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
		err = fmt.Errorf("%w (%w)", ErrAttached, err)
	}
	if err != nil {
		return fmt.Errorf("attach xdp to ifindex %d in %v mode: %w", ifindex, mode, err)
	}
	p.link, p.ifindex, p.mode = l, ifindex, mode
	return nil
}

// Attached reports whether the program still runs on the interface it was
// attached to: the interface may be gone, or the link detached by someone
// else. One system call.
func (p *Program) Attached() (bool, error) {
	if p.link == nil {
		return false, nil
	}
	info, err := p.link.Info()
	if err != nil {
		return false, fmt.Errorf("query xdp link: %w", err)
	}
	x := info.XDP()
	return x != nil && int(x.Ifindex) == p.ifindex && uint32(info.Program) == p.ID(), nil
}

// Detach removes the program from the interface it is attached to (and the
// link's pin). It is a no-op when not attached; if the interface is gone
// the program went with it.
func (p *Program) Detach() error {
	if p.link == nil {
		return nil
	}
	var errs []error
	if p.pinned {
		if err := p.link.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin xdp link: %w", err))
		}
		p.pinned = false
	}
	if idx, err := xdpIfindex(p.link); err == nil && idx != 0 {
		if err := p.link.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach xdp from ifindex %d: %w", p.ifindex, err))
		}
	}
	if err := p.link.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xdp link: %w", err))
	}
	p.link, p.ifindex = nil, 0
	return errors.Join(errs...)
}

// xdpIfindex returns the interface an XDP link is attached to, 0 if it is
// gone.
func xdpIfindex(l link.Link) (int, error) {
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	x := info.XDP()
	if x == nil {
		return 0, fmt.Errorf("link %d is a %v link, not XDP", info.ID, info.Type)
	}
	return int(x.Ifindex), nil
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
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return XDPState{}, fmt.Errorf("query xdp on ifindex %d: %w", ifindex, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return XDPState{}, nil
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return XDPState{Native: x.ProgId}, nil
	case nl.XDP_ATTACHED_SKB:
		return XDPState{Generic: x.ProgId}, nil
	}
	// The kernel refuses native and generic programs at once; offloaded
	// (hardware) programs do not exist on the interfaces podgate uses.
	return XDPState{}, fmt.Errorf("query xdp on ifindex %d: unsupported attach mode %d", ifindex, x.AttachMode)
}

// RemoveStale detaches, from an interface in the calling thread's network
// namespace, every XDP program named [ProgramName] (left behind by a
// podgate that did not stop cleanly) and returns how many it removed.
// Programs with other names are left alone and reported as an error, so
// podgate never takes an interface away from another XDP user, and so are
// programs attached through a BPF link (the kernel refuses to detach them
// with netlink: [Program.Detach] does).
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
		err = netlink.LinkSetXdpFdWithFlags(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, -1, int(flags))
		_ = prog.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("detach stale %v xdp program %d from ifindex %d: %w", c.mode, c.id, ifindex, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
