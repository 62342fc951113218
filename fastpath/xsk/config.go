package xsk

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Defaults used by [Config.WithDefaults]: 4 MiB of UMEM per socket, half
// of it posted for receiving. The UMEM is NumFrames*FrameSize bytes of
// resident memory per port, so size the busy kernel-leg port larger than
// the pod ports rather than raising the defaults for every pod.
const (
	DefaultNumFrames = 2048
	DefaultFrameSize = 2048
	DefaultRingSize  = 1024
)

// RxHeadroom is the number of bytes the kernel leaves in front of every
// received frame inside its UMEM chunk in copy mode (XDP_PACKET_HEADROOM).
// A frame of FrameSize bytes can therefore receive at most
// FrameSize-RxHeadroom bytes; see [Config.MaxRxFrame].
const RxHeadroom = unix.XDP_PACKET_HEADROOM

// Config describes one AF_XDP socket with its own UMEM.
type Config struct {
	// Ifindex and QueueID select the interface queue the socket binds to,
	// in the network namespace of the thread calling [Open].
	Ifindex, QueueID int
	// NumFrames is the number of UMEM frames (default 2048).
	NumFrames int
	// FrameSize is the size of one UMEM frame, a power of two between 2048
	// and the page size (default 2048).
	FrameSize int
	// RingSize is the number of descriptors of each of the four rings
	// (fill, completion, RX, TX), a power of two (default 1024).
	RingSize int
	// FillFrames is how many frames are kept posted to the kernel for
	// receiving (default min(RingSize, NumFrames/2)); the other frames are
	// available to [Socket.Alloc] for transmitting.
	FillFrames int
	// ForceCopy binds with XDP_COPY. Without it the kernel picks zero-copy
	// when the driver supports it and copy mode otherwise (always copy on
	// veth).
	ForceCopy bool
}

// WithDefaults returns c with zero fields replaced by their defaults.
func (c Config) WithDefaults() Config {
	if c.NumFrames == 0 {
		c.NumFrames = DefaultNumFrames
	}
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	if c.RingSize == 0 {
		c.RingSize = DefaultRingSize
	}
	if c.FillFrames == 0 {
		c.FillFrames = min(c.RingSize, c.NumFrames/2)
	}
	return c
}

// Validate reports every problem with c, joined. Call it on the result of
// WithDefaults.
func (c Config) Validate() error {
	var errs []error
	if c.Ifindex <= 0 {
		errs = append(errs, fmt.Errorf("ifindex %d: must be positive", c.Ifindex))
	}
	if c.QueueID < 0 || c.QueueID > 1<<16 {
		errs = append(errs, fmt.Errorf("queue %d: out of range", c.QueueID))
	}
	if !isPow2(c.FrameSize) || c.FrameSize < 2048 || c.FrameSize > os.Getpagesize() {
		errs = append(errs, fmt.Errorf("frame size %d: must be a power of two in [2048, %d]", c.FrameSize, os.Getpagesize()))
	}
	if !isPow2(c.RingSize) || c.RingSize > 1<<20 {
		errs = append(errs, fmt.Errorf("ring size %d: must be a power of two up to 1<<20", c.RingSize))
	}
	if c.NumFrames < 2 || c.NumFrames > 1<<22 {
		errs = append(errs, fmt.Errorf("frame count %d: must be in [2, 1<<22]", c.NumFrames))
	}
	if c.FillFrames < 1 || c.FillFrames > c.RingSize || c.FillFrames >= c.NumFrames {
		errs = append(errs, fmt.Errorf("fill frames %d: must be in [1, ring size] and below the frame count", c.FillFrames))
	}
	return errors.Join(errs...)
}

// MaxRxFrame is the largest frame (Ethernet header included) a socket with
// this configuration can receive; longer frames are dropped by the kernel
// and counted in [Stats].RxDropped. For an MTU m on the interface, frames
// are at most m+18 bytes (header and one VLAN tag), so FrameSize 2048 fits
// MTUs up to 1774 and FrameSize 4096 up to 3822 ([Open] checks this). On
// veth, native XDP further limits the peer's MTU to about 3500 with 4 KiB
// pages (attach fails with ERANGE above it).
func (c Config) MaxRxFrame() int { return c.FrameSize - RxHeadroom }

func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

// AttachMode is how an XDP program is attached to an interface.
type AttachMode int

// Attach modes.
const (
	// Native attaches in the driver (XDP_FLAGS_DRV_MODE). On veth this runs
	// the program in veth's NAPI poll and makes the kernel clear TSO/GSO on
	// the peer, so every frame is at most MTU-sized. Preferred.
	Native AttachMode = iota + 1
	// Generic attaches in the core receive path (XDP_FLAGS_SKB_MODE). It
	// works on every device, but on veth it sees the peer's TSO/GSO
	// super-frames, which do not fit a UMEM frame and are dropped.
	Generic
)

// String returns "native" or "generic".
func (m AttachMode) String() string {
	switch m {
	case Native:
		return "native"
	case Generic:
		return "generic"
	default:
		return fmt.Sprintf("AttachMode(%d)", int(m))
	}
}

// flags returns the netlink XDP flag for the mode.
func (m AttachMode) flags() (uint32, error) {
	switch m {
	case Native:
		return unix.XDP_FLAGS_DRV_MODE, nil
	case Generic:
		return unix.XDP_FLAGS_SKB_MODE, nil
	default:
		return 0, fmt.Errorf("attach mode %d: %w", int(m), ErrInvalidMode)
	}
}
