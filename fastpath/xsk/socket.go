package xsk

import (
	"errors"
	"fmt"
	"math/bits"
	"sync/atomic"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// maxL2Overhead is the most a frame may exceed the MTU by: an Ethernet
// header and one VLAN tag, as veth and most drivers accept.
const maxL2Overhead = 14 + 4

// Frame is a descriptor of a frame in one socket's UMEM: Addr is the byte
// offset of the frame's first byte in the UMEM and Len its length. A Frame
// is only meaningful to the socket it came from.
type Frame struct {
	Addr uint64
	Len  uint32
}

// frame ownership states, one byte per UMEM frame. They make every misuse
// (double release, transmitting a frame twice, a foreign Frame) a counted
// no-op instead of two owners of one buffer.
const (
	stateFree uint8 = iota // on the free stack
	stateFill              // posted to the kernel for RX (fill ring, kernel, RX ring)
	stateApp               // owned by the user (received or allocated)
	stateTx                // queued for TX until its completion
)

// Socket is an AF_XDP socket with its own UMEM, fill, completion, RX and TX
// rings, bound to one interface queue.
//
// A Socket is not safe for concurrent use: one goroutine (a fastpath worker)
// owns it and calls Receive, Bytes, Release, Alloc, Transmit and Flush.
// FD, NeedsKick and Stats may be called from any goroutine until Close.
// The data path does no allocation, takes no lock and makes no system call
// per frame: shared ring indices are read and written once per call and
// Flush makes at most one sendto(2).
type Socket struct {
	fd         int
	umem       []byte
	frameShift uint
	numFrames  uint32
	frameSize  uint32
	fillFrames uint32
	needWakeup bool
	mmaps      [][]byte

	fill addrRing
	comp addrRing
	rx   descRing
	tx   descRing

	free  []uint32 // stack of free frame indices
	nfree int
	state []uint8

	// rxPosted counts frames posted to the fill ring minus frames taken
	// off the RX ring: the frames the kernel holds for receiving.
	rxPosted uint32
	// txPending counts frames written to the TX ring and not yet published.
	txPending uint32

	ctr counters
}

// counters are updated with one atomic add per batch so Stats can read them
// from another goroutine.
type counters struct {
	rx, tx, completed     atomic.Uint64
	kicks, kickErrors     atomic.Uint64
	allocFail, txRingFull atomic.Uint64
	badFrames             atomic.Uint64
}

// Open creates an AF_XDP socket, its UMEM and rings, binds it to
// cfg.Ifindex/cfg.QueueID in the network namespace of the calling thread
// (wrap it in netns Do for another namespace) and posts cfg.FillFrames
// frames for receiving. Frames only arrive once an XDP program redirects to
// the socket; see [Program.Register]. Zero fields of cfg take their
// defaults. On failure everything is released.
func Open(cfg Config) (*Socket, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open xsk: %w", err)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open xsk: create socket: %w", err)
	}
	s := &Socket{
		fd:         fd,
		frameShift: uint(bits.TrailingZeros(uint(cfg.FrameSize))),
		numFrames:  uint32(cfg.NumFrames),
		frameSize:  uint32(cfg.FrameSize),
		fillFrames: uint32(cfg.FillFrames),
	}
	if err := s.setup(cfg); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("open xsk on ifindex %d queue %d: %w", cfg.Ifindex, cfg.QueueID, err)
	}
	return s, nil
}

func (s *Socket) setup(cfg Config) error {
	var err error
	s.umem, err = unix.Mmap(-1, 0, cfg.NumFrames*cfg.FrameSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap umem: %w", err)
	}
	reg := unix.XDPUmemReg{
		Addr: uint64(uintptr(unsafe.Pointer(&s.umem[0]))),
		Len:  uint64(len(s.umem)),
		Size: uint32(cfg.FrameSize),
	}
	if err := setsockopt(s.fd, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return fmt.Errorf("register umem: %w", err)
	}
	for _, o := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING, unix.XDP_RX_RING, unix.XDP_TX_RING} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, o, cfg.RingSize); err != nil {
			return fmt.Errorf("size ring %d: %w", o, err)
		}
	}
	var off unix.XDPMmapOffsets
	offLen := uint32(unsafe.Sizeof(off))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&offLen)), 0); e != 0 {
		return fmt.Errorf("get ring offsets: %w", e)
	}
	if offLen != uint32(unsafe.Sizeof(off)) {
		return fmt.Errorf("get ring offsets: kernel without ring flags (%d bytes)", offLen)
	}
	n := uint32(cfg.RingSize)
	rings := []struct {
		pgoff int64
		off   unix.XDPRingOffset
		r     *ring
		size  uintptr
		set   func(unsafe.Pointer)
	}{
		{unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, &s.fill.ring, 8, func(p unsafe.Pointer) { s.fill.descs = unsafe.Slice((*uint64)(p), n) }},
		{unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, &s.comp.ring, 8, func(p unsafe.Pointer) { s.comp.descs = unsafe.Slice((*uint64)(p), n) }},
		{unix.XDP_PGOFF_RX_RING, off.Rx, &s.rx.ring, unsafe.Sizeof(unix.XDPDesc{}), func(p unsafe.Pointer) { s.rx.descs = unsafe.Slice((*unix.XDPDesc)(p), n) }},
		{unix.XDP_PGOFF_TX_RING, off.Tx, &s.tx.ring, unsafe.Sizeof(unix.XDPDesc{}), func(p unsafe.Pointer) { s.tx.descs = unsafe.Slice((*unix.XDPDesc)(p), n) }},
	}
	for _, rg := range rings {
		mem, p, err := mapRing(s.fd, rg.pgoff, rg.off, n, rg.size, rg.r)
		if err != nil {
			return err
		}
		s.mmaps = append(s.mmaps, mem)
		rg.set(p)
	}

	if err := checkMTU(cfg); err != nil {
		return err
	}
	var flags uint16
	if cfg.ForceCopy {
		flags |= unix.XDP_COPY
	}
	sa := &unix.SockaddrXDP{Flags: flags | unix.XDP_USE_NEED_WAKEUP, Ifindex: uint32(cfg.Ifindex), QueueID: uint32(cfg.QueueID)}
	err = unix.Bind(s.fd, sa)
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 5.4 reject XDP_USE_NEED_WAKEUP; then every
		// Flush with pending TX kicks.
		sa.Flags = flags
		err = unix.Bind(s.fd, sa)
	} else if err == nil {
		s.needWakeup = true
	}
	if err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	// Copy mode transmits at most 32 frames per sendto unless the budget
	// is raised (Linux 6.17+); try the ring size, then smaller.
	for b := cfg.RingSize; b >= 64; b /= 2 {
		if unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, b) == nil {
			break
		}
	}

	s.initFrames()
	return nil
}

// initFrames puts every frame on the free stack and posts FillFrames of
// them to the fill ring.
func (s *Socket) initFrames() {
	s.state = make([]uint8, s.numFrames)
	s.free = make([]uint32, s.numFrames)
	for i := range s.free {
		// Lowest indices on top, for locality.
		s.free[i] = s.numFrames - 1 - uint32(i)
	}
	s.nfree = int(s.numFrames)
	s.refill()
	s.fill.publishProducer()
}

// checkMTU refuses an interface whose MTU allows frames longer than a UMEM
// frame can receive: the kernel would drop them (Stats.RxDropped).
func checkMTU(cfg Config) error {
	l, err := netlink.LinkByIndex(cfg.Ifindex)
	if err != nil {
		return fmt.Errorf("find interface: %w", err)
	}
	if mtu := l.Attrs().MTU; mtu+maxL2Overhead > cfg.MaxRxFrame() {
		return fmt.Errorf("interface %s MTU %d: frames up to %d bytes, UMEM frames receive %d: %w",
			l.Attrs().Name, mtu, mtu+maxL2Overhead, cfg.MaxRxFrame(), ErrFrameSize)
	}
	return nil
}

func setsockopt(fd, opt int, p unsafe.Pointer, n uintptr) error {
	if _, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(opt), uintptr(p), n, 0); e != 0 {
		return e
	}
	return nil
}

// FD returns the socket's file descriptor, for poll(2) (see [Poller]), or
// -1 after Close.
func (s *Socket) FD() int { return s.fd }

// FrameSize returns the UMEM frame size.
func (s *Socket) FrameSize() int { return int(s.frameSize) }

// Receive moves up to len(batch) received frames into batch and returns how
// many. The frames belong to the caller until passed to Release or
// Transmit. It never blocks; wait with a [Poller] when it returns 0.
func (s *Socket) Receive(batch []Frame) int {
	if s.fd < 0 {
		return 0
	}
	want := uint32(min(len(batch), int(s.rx.size)))
	n := min(s.rx.available(want), want)
	if n == 0 {
		return 0
	}
	got := 0
	for i := uint32(0); i < n; i++ {
		d := s.rx.descs[(s.rx.local+i)&s.rx.mask]
		idx := d.Addr >> s.frameShift
		if idx >= uint64(s.numFrames) || s.state[idx] != stateFill {
			// Never expected from the kernel; count and skip.
			s.ctr.badFrames.Add(1)
			continue
		}
		s.state[idx] = stateApp
		batch[got] = Frame{Addr: d.Addr, Len: d.Len}
		got++
	}
	s.rx.local += n
	s.rx.publishConsumer()
	s.rxPosted -= n
	s.ctr.rx.Add(uint64(got))
	return got
}

// Bytes returns the bytes of f inside the UMEM, f.Len long, or nil if f is
// not a valid frame of this socket. The slice's capacity reaches the end of
// f's UMEM frame. It stays valid while the caller owns f (until Release or
// Transmit).
func (s *Socket) Bytes(f Frame) []byte {
	idx := f.Addr >> s.frameShift
	end := (idx + 1) << s.frameShift
	if idx >= uint64(s.numFrames) || f.Addr+uint64(f.Len) > end {
		return nil
	}
	return s.umem[f.Addr : f.Addr+uint64(f.Len) : end]
}

// Release gives a frame the caller owns (received or allocated) back to the
// socket; it is reused for receiving (posted at the next Flush) or
// transmitting. Releasing a frame the caller does not own is counted in
// Stats.BadFrames and otherwise ignored.
func (s *Socket) Release(f Frame) {
	idx := f.Addr >> s.frameShift
	if idx >= uint64(s.numFrames) || s.state[idx] != stateApp {
		s.ctr.badFrames.Add(1)
		return
	}
	s.state[idx] = stateFree
	s.free[s.nfree] = uint32(idx)
	s.nfree++
}

// Alloc returns a free frame for building a frame to transmit, with Len set
// to the whole frame size: write into Bytes(f), set f.Len, then Transmit it
// (or Release it). It returns false when no frame is free even after
// reaping completed transmissions; that is counted in Stats.AllocFailures.
func (s *Socket) Alloc() (Frame, bool) {
	if s.fd < 0 {
		return Frame{}, false
	}
	if s.nfree == 0 {
		s.reap()
		if s.nfree == 0 {
			s.ctr.allocFail.Add(1)
			return Frame{}, false
		}
	}
	s.nfree--
	idx := s.free[s.nfree]
	s.state[idx] = stateApp
	return Frame{Addr: uint64(idx) << s.frameShift, Len: s.frameSize}, true
}

// Transmit queues a frame the caller owns for transmission; it is handed to
// the kernel at the next Flush and returns to the socket's free frames when
// the kernel completes it. It returns false, leaving the frame with the
// caller, if the TX ring is full (counted in Stats.TxRingFull: Flush and
// retry, or Release it) or if f is not a valid owned frame with
// 0 < Len and Addr+Len within its UMEM frame (counted in Stats.BadFrames).
func (s *Socket) Transmit(f Frame) bool {
	idx := f.Addr >> s.frameShift
	if idx >= uint64(s.numFrames) || s.state[idx] != stateApp || f.Len == 0 ||
		f.Addr+uint64(f.Len) > (idx+1)<<s.frameShift {
		s.ctr.badFrames.Add(1)
		return false
	}
	if s.tx.free(1) == 0 {
		s.ctr.txRingFull.Add(1)
		return false
	}
	s.tx.descs[s.tx.local&s.tx.mask] = unix.XDPDesc{Addr: f.Addr, Len: f.Len}
	s.tx.local++
	s.txPending++
	s.state[idx] = stateTx
	return true
}

// Flush ends a batch: it reaps completed transmissions, tops the fill ring
// up to Config.FillFrames posted frames, publishes the fill and TX producer
// indices once, and, if frames are waiting in the TX ring and the kernel
// asks for a wakeup (always in copy mode), makes one non-blocking sendto(2)
// to transmit them. Transient transmit conditions (EAGAIN, EBUSY, ENOBUFS)
// are counted in Stats.KickErrors and left for the next Flush; other errors
// (e.g. ENETDOWN) are returned.
func (s *Socket) Flush() error {
	if s.fd < 0 {
		return fmt.Errorf("flush xsk: %w", ErrClosed)
	}
	s.reap()
	if s.refill() > 0 {
		s.fill.publishProducer()
	}
	if s.txPending > 0 {
		s.tx.publishProducer()
		s.ctr.tx.Add(uint64(s.txPending))
		s.txPending = 0
	}
	if !s.NeedsKick() {
		return nil
	}
	s.ctr.kicks.Add(1)
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	switch e {
	case 0:
		return nil
	case unix.EAGAIN, unix.EBUSY, unix.ENOBUFS:
		s.ctr.kickErrors.Add(1)
		return nil
	default:
		s.ctr.kickErrors.Add(1)
		return fmt.Errorf("kick tx: %w", e)
	}
}

// NeedsKick reports whether published TX frames wait for the kernel and the
// kernel wants a wakeup (sendto or poll) to send them. A worker about to
// sleep in poll(2) can use it to decide whether to also wait for POLLOUT.
func (s *Socket) NeedsKick() bool {
	if s.fd < 0 {
		return false
	}
	if atomic.LoadUint32(s.tx.consumer) == atomic.LoadUint32(s.tx.producer) {
		return false
	}
	return !s.needWakeup || s.tx.needsWakeup()
}

// reap moves completed TX frames to the free stack.
func (s *Socket) reap() {
	n := s.comp.available(s.comp.size)
	if n == 0 {
		return
	}
	done := uint64(0)
	for i := uint32(0); i < n; i++ {
		idx := s.comp.descs[(s.comp.local+i)&s.comp.mask] >> s.frameShift
		if idx >= uint64(s.numFrames) || s.state[idx] != stateTx {
			s.ctr.badFrames.Add(1)
			continue
		}
		s.state[idx] = stateFree
		s.free[s.nfree] = uint32(idx)
		s.nfree++
		done++
	}
	s.comp.local += n
	s.comp.publishConsumer()
	s.ctr.completed.Add(done)
}

// refill posts free frames to the fill ring until FillFrames are posted;
// it returns how many it wrote (publishing is the caller's job).
func (s *Socket) refill() uint32 {
	if s.rxPosted >= s.fillFrames || s.nfree == 0 {
		return 0
	}
	n := min(s.fillFrames-s.rxPosted, uint32(s.nfree))
	n = min(n, s.fill.free(n))
	for i := uint32(0); i < n; i++ {
		s.nfree--
		idx := s.free[s.nfree]
		s.state[idx] = stateFill
		s.fill.descs[(s.fill.local+i)&s.fill.mask] = uint64(idx) << s.frameShift
	}
	s.fill.local += n
	s.rxPosted += n
	return n
}

// Stats are a socket's counters: user-space counters kept by this package
// and the kernel's XDP_STATISTICS.
type Stats struct {
	// RxFrames and TxFrames count frames received and handed to the
	// kernel for transmission; Completed counts finished transmissions.
	RxFrames, TxFrames, Completed uint64
	// Kicks counts sendto(2) wakeups; KickErrors those that failed or
	// left frames for later.
	Kicks, KickErrors uint64
	// AllocFailures counts Alloc calls with no free frame; TxRingFull
	// counts Transmit calls refused for a full TX ring; BadFrames counts
	// frames refused because of a bad address or ownership.
	AllocFailures, TxRingFull, BadFrames uint64

	// Kernel counters (struct xdp_statistics). RxDropped counts frames the
	// kernel could not deliver, including frames longer than
	// FrameSize-RxHeadroom.
	RxDropped, RxInvalidDescs, TxInvalidDescs          uint64
	RxRingFull, RxFillRingEmptyDescs, TxRingEmptyDescs uint64
}

// Stats returns the socket's counters. It is safe to call from any
// goroutine, but not concurrently with or after Close.
func (s *Socket) Stats() (Stats, error) {
	if s.fd < 0 {
		return Stats{}, fmt.Errorf("read xsk stats: %w", ErrClosed)
	}
	st := Stats{
		RxFrames: s.ctr.rx.Load(), TxFrames: s.ctr.tx.Load(), Completed: s.ctr.completed.Load(),
		Kicks: s.ctr.kicks.Load(), KickErrors: s.ctr.kickErrors.Load(),
		AllocFailures: s.ctr.allocFail.Load(), TxRingFull: s.ctr.txRingFull.Load(),
		BadFrames: s.ctr.badFrames.Load(),
	}
	var ks unix.XDPStatistics
	n := uint32(unsafe.Sizeof(ks))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(s.fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&ks)), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		return st, fmt.Errorf("get xsk statistics: %w", e)
	}
	st.RxDropped = ks.Rx_dropped
	st.RxInvalidDescs = ks.Rx_invalid_descs
	st.TxInvalidDescs = ks.Tx_invalid_descs
	st.RxRingFull = ks.Rx_ring_full
	st.RxFillRingEmptyDescs = ks.Rx_fill_ring_empty_descs
	st.TxRingEmptyDescs = ks.Tx_ring_empty_descs
	return st, nil
}

// Close closes the socket (removing it from any XSKMAP) and unmaps its rings
// and UMEM. Frames and byte slices from the socket are invalid afterwards.
// Close is idempotent.
func (s *Socket) Close() error {
	var errs []error
	if s.fd >= 0 {
		if err := unix.Close(s.fd); err != nil {
			errs = append(errs, fmt.Errorf("close xsk: %w", err))
		}
		s.fd = -1
	}
	for _, m := range s.mmaps {
		if err := unix.Munmap(m); err != nil {
			errs = append(errs, fmt.Errorf("unmap ring: %w", err))
		}
	}
	s.mmaps = nil
	if s.umem != nil {
		if err := unix.Munmap(s.umem); err != nil {
			errs = append(errs, fmt.Errorf("unmap umem: %w", err))
		}
		s.umem = nil
	}
	s.numFrames = 0 // makes Bytes, Release and Transmit refuse every frame
	return errors.Join(errs...)
}
