package xsk

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// fakeKernel plays the kernel's side of the four rings over Go memory, so
// the bookkeeping can be tested and benchmarked without AF_XDP.
type fakeKernel struct {
	s *Socket
	// index words: producer, consumer, flags for fill, comp, rx, tx
	idx [4][3]uint32
}

func newFakeSocket(tb testing.TB, cfg Config) (*Socket, *fakeKernel) {
	tb.Helper()
	cfg.Ifindex = 1
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	// A real descriptor that is not an AF_XDP socket: a kick fails with
	// ENOTSOCK, which the tests use to see that one happened.
	f, err := os.Open(os.DevNull)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	n := uint32(cfg.RingSize)
	s := &Socket{
		fd:         int(f.Fd()),
		umem:       make([]byte, cfg.NumFrames*cfg.FrameSize),
		frameShift: uint(0),
		numFrames:  uint32(cfg.NumFrames),
		frameSize:  uint32(cfg.FrameSize),
		fillFrames: uint32(cfg.FillFrames),
		needWakeup: true,
	}
	for 1<<s.frameShift < cfg.FrameSize {
		s.frameShift++
	}
	k := &fakeKernel{s: s}
	for i, r := range []*ring{&s.fill.ring, &s.comp.ring, &s.rx.ring, &s.tx.ring} {
		r.producer, r.consumer, r.flags = &k.idx[i][0], &k.idx[i][1], &k.idx[i][2]
		r.size, r.mask = n, n-1
	}
	s.fill.descs = make([]uint64, n)
	s.comp.descs = make([]uint64, n)
	s.rx.descs = make([]unix.XDPDesc, n)
	s.tx.descs = make([]unix.XDPDesc, n)
	s.initFrames()
	return s, k
}

// deliver receives up to n frames of length l: takes addresses off the fill
// ring and puts descriptors on the RX ring, like copy-mode XDP_REDIRECT.
// It returns how many it delivered.
func (k *fakeKernel) deliver(n int, l uint32) int {
	s := k.s
	fill, rx := &k.idx[0], &k.idx[2]
	got := 0
	for got < n && fill[1] != fill[0] && rx[0]-rx[1] < s.rx.size {
		addr := s.fill.descs[fill[1]&s.fill.mask]
		fill[1]++
		s.rx.descs[rx[0]&s.rx.mask] = unix.XDPDesc{Addr: addr + RxHeadroom, Len: l}
		rx[0]++
		got++
	}
	return got
}

// complete transmits every TX descriptor and completes it.
func (k *fakeKernel) complete() int {
	s := k.s
	tx, comp := &k.idx[3], &k.idx[1]
	n := 0
	for tx[1] != tx[0] && comp[0]-comp[1] < s.comp.size {
		s.comp.descs[comp[0]&s.comp.mask] = s.tx.descs[tx[1]&s.tx.mask].Addr
		tx[1]++
		comp[0]++
		n++
	}
	return n
}

// owned counts frames in each state, to check that none is ever lost.
func (s *Socket) owned() map[uint8]int {
	m := map[uint8]int{}
	for _, st := range s.state {
		m[st]++
	}
	return m
}

func TestConfig(t *testing.T) {
	def := Config{Ifindex: 3}.WithDefaults()
	if err := def.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if def.FillFrames != min(def.RingSize, def.NumFrames/2) {
		t.Errorf("FillFrames = %d", def.FillFrames)
	}
	bad := Config{Ifindex: 0, QueueID: -1, NumFrames: 1, FrameSize: 3000, RingSize: 1000, FillFrames: 5000}
	err := bad.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"ifindex", "queue", "frame size", "ring size", "frame count", "fill frames"} {
		if !containsString(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if got := (Config{FrameSize: 2048}).MaxRxFrame(); got != 1792 {
		t.Errorf("MaxRxFrame = %d, want 1792", got)
	}
	if _, err := Open(Config{}); err == nil {
		t.Errorf("Open without ifindex succeeded")
	}
}

func containsString(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestAttachModeFlags(t *testing.T) {
	for _, c := range []struct {
		m    AttachMode
		want uint32
		name string
	}{{Native, unix.XDP_FLAGS_DRV_MODE, "native"}, {Generic, unix.XDP_FLAGS_SKB_MODE, "generic"}} {
		got, err := c.m.flags()
		if err != nil || got != c.want || c.m.String() != c.name {
			t.Errorf("%v: flags %#x, %v, want %#x", c.m, got, err, c.want)
		}
	}
	if _, err := AttachMode(0).flags(); !errors.Is(err, ErrInvalidMode) {
		t.Errorf("mode 0: error %v, want ErrInvalidMode", err)
	}
}

func TestBookkeeping(t *testing.T) {
	cfg := Config{NumFrames: 64, RingSize: 32, FillFrames: 32}
	s, k := newFakeSocket(t, cfg)
	if diff := cmp.Diff(map[uint8]int{stateFill: 32, stateFree: 32}, s.owned()); diff != "" {
		t.Fatalf("after open (-want +got):\n%s", diff)
	}
	if k.idx[0][0] != 32 {
		t.Fatalf("fill producer = %d, want 32 published", k.idx[0][0])
	}

	// Receive: frames arrive at headroom offset with their lengths.
	if got := k.deliver(10, 100); got != 10 {
		t.Fatalf("delivered %d", got)
	}
	batch := make([]Frame, 4)
	n := s.Receive(batch)
	if n != 4 || batch[0].Addr%2048 != RxHeadroom || batch[0].Len != 100 {
		t.Fatalf("Receive = %d, %+v", n, batch[0])
	}
	if k.idx[2][1] != 4 {
		t.Errorf("rx consumer = %d, want 4 published", k.idx[2][1])
	}
	b := s.Bytes(batch[0])
	if len(b) != 100 || cap(b) != 2048-RxHeadroom {
		t.Errorf("Bytes: len %d cap %d", len(b), cap(b))
	}

	// Forward-style: copy into an allocated frame, release RX, transmit.
	out, ok := s.Alloc()
	if !ok || out.Len != 2048 || out.Addr%2048 != 0 {
		t.Fatalf("Alloc = %+v, %v", out, ok)
	}
	out.Len = uint32(copy(s.Bytes(out), b))
	s.Release(batch[0])
	if !s.Transmit(out) {
		t.Fatal("Transmit refused")
	}
	// Misuse is counted and ignored.
	s.Release(batch[0])             // double release
	s.Release(Frame{Addr: 1 << 40}) // foreign address
	if s.Transmit(out) {            // transmit twice
		t.Error("second Transmit accepted")
	}
	if s.Transmit(Frame{Addr: batch[1].Addr, Len: 2000}) { // crosses the frame end
		t.Error("oversized Transmit accepted")
	}
	if s.Bytes(Frame{Addr: 63 * 2048, Len: 4096}) != nil || s.Bytes(Frame{Addr: 64 * 2048}) != nil {
		t.Error("Bytes accepted a frame outside the UMEM")
	}
	st, _ := s.Stats()
	if st.BadFrames != 4 {
		t.Errorf("BadFrames = %d, want 4", st.BadFrames)
	}

	// Flush publishes TX once and refills the fill ring to 32 posted.
	if k.idx[3][0] != 0 {
		t.Fatalf("TX published before Flush")
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush without wakeup flag: %v", err)
	}
	if k.idx[3][0] != 1 {
		t.Errorf("tx producer = %d, want 1", k.idx[3][0])
	}
	if posted := k.idx[0][0] - k.idx[2][1]; posted != 32 {
		t.Errorf("posted for RX = %d, want 32", posted)
	}
	// The kernel asks for a wakeup: the next Flush kicks once (sendto on a
	// non-socket fails with ENOTSOCK, which Flush reports).
	k.idx[3][2] = unix.XDP_RING_NEED_WAKEUP
	if !s.NeedsKick() {
		t.Error("NeedsKick = false with pending TX and the wakeup flag")
	}
	if err := s.Flush(); !errors.Is(err, unix.ENOTSOCK) {
		t.Errorf("Flush kick error = %v, want ENOTSOCK", err)
	}
	k.complete()
	if s.NeedsKick() {
		t.Error("NeedsKick = true with nothing pending")
	}
	if err := s.Flush(); err != nil {
		t.Errorf("Flush: %v", err)
	}
	// 3 received frames still held by the test, 6 in the RX ring.
	for _, f := range batch[1:n] {
		s.Release(f)
	}
	for {
		m := s.Receive(batch)
		if m == 0 {
			break
		}
		for _, f := range batch[:m] {
			s.Release(f)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[uint8]int{stateFill: 32, stateFree: 32}, s.owned()); diff != "" {
		t.Errorf("frames lost (-want +got):\n%s", diff)
	}
	st, _ = s.Stats()
	if st.RxFrames != 10 || st.TxFrames != 1 || st.Completed != 1 || st.Kicks != 1 || st.KickErrors != 1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestAllocExhaustion(t *testing.T) {
	s, k := newFakeSocket(t, Config{NumFrames: 64, RingSize: 32, FillFrames: 32})
	var held []Frame
	for {
		f, ok := s.Alloc()
		if !ok {
			break
		}
		held = append(held, f)
	}
	if len(held) != 32 {
		t.Fatalf("allocated %d frames, want the 32 not posted for RX", len(held))
	}
	// A full TX ring refuses and leaves the frame with the caller.
	for i, f := range held {
		f.Len = 60
		if !s.Transmit(f) {
			t.Fatalf("Transmit %d refused", i)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats()
	if st.AllocFailures != 1 {
		t.Errorf("AllocFailures = %d", st.AllocFailures)
	}
	// Completions make frames allocatable again without a Flush.
	k.complete()
	if _, ok := s.Alloc(); !ok {
		t.Error("Alloc after completion failed")
	}
	// RX frames are never handed to Alloc while posted.
	if got := k.deliver(100, 60); got != 32 {
		t.Errorf("delivered %d, want 32", got)
	}
}

func TestTxRingFull(t *testing.T) {
	s, _ := newFakeSocket(t, Config{NumFrames: 256, RingSize: 32, FillFrames: 32})
	refused := 0
	for range 40 {
		f, ok := s.Alloc()
		if !ok {
			t.Fatal("Alloc failed")
		}
		f.Len = 60
		if !s.Transmit(f) {
			refused++
			s.Release(f)
		}
	}
	st, _ := s.Stats()
	if refused != 8 || st.TxRingFull != 8 {
		t.Errorf("refused %d, TxRingFull %d; want 8", refused, st.TxRingFull)
	}
}

func TestClosedSocket(t *testing.T) {
	s, _ := newFakeSocket(t, Config{NumFrames: 64, RingSize: 32, FillFrames: 32})
	s.fd = -1 // as after Close, without closing the test's /dev/null
	s.numFrames = 0
	if s.Receive(make([]Frame, 4)) != 0 {
		t.Error("Receive after close")
	}
	if _, ok := s.Alloc(); ok {
		t.Error("Alloc after close")
	}
	if err := s.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after close: %v", err)
	}
	if s.Bytes(Frame{Addr: 0, Len: 10}) != nil {
		t.Error("Bytes after close")
	}
	if _, err := s.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after close: %v", err)
	}
}

// forwardBatch is one worker round over the fake kernel: receive a batch of
// frames of length l, copy each into an allocated frame (or, with
// !copyFrames, transmit the received frame itself, as a shared UMEM would
// allow), release, transmit, flush.
func forwardBatch(s *Socket, k *fakeKernel, batch []Frame, l uint32, copyFrames bool) int {
	k.deliver(len(batch), l)
	n := s.Receive(batch)
	for _, f := range batch[:n] {
		out := f
		if copyFrames {
			var ok bool
			out, ok = s.Alloc()
			if !ok {
				s.Release(f)
				continue
			}
			out.Len = uint32(copy(s.Bytes(out), s.Bytes(f)))
			s.Release(f)
		}
		if !s.Transmit(out) {
			s.Release(out)
		}
	}
	_ = s.Flush()
	k.complete()
	return n
}

func TestDataPathAllocs(t *testing.T) {
	s, k := newFakeSocket(t, Config{})
	batch := make([]Frame, 64)
	for _, copyFrames := range []bool{true, false} {
		var n int
		allocs := testing.AllocsPerRun(200, func() {
			n = forwardBatch(s, k, batch, 1514, copyFrames)
		})
		if n != 64 {
			t.Fatalf("forwarded %d frames per batch, want 64", n)
		}
		if allocs != 0 {
			t.Errorf("data path (copy %v) allocates %v times per batch, want 0", copyFrames, allocs)
		}
	}
	p := NewPoller(s)
	if allocs := testing.AllocsPerRun(50, func() { _, _ = p.Wait(0) }); allocs != 0 {
		t.Errorf("Poller.Wait allocates %v times, want 0", allocs)
	}
	if !p.Ready(0) || p.Ready(1) {
		t.Errorf("Ready(0), Ready(1) = %v, %v; want true (/dev/null is readable), false", p.Ready(0), p.Ready(1))
	}
}

// BenchmarkForwardBatch measures the user-space side of forwarding batches
// of 64 frames (receive, alloc, copy, release, transmit, flush) over the
// fake kernel, per frame: with the copy this package's design makes between
// per-port UMEMs, and without it (what a shared UMEM would save).
func BenchmarkForwardBatch(b *testing.B) {
	for _, c := range []struct {
		name string
		len  uint32
		copy bool
	}{
		{"copy-64B", 64, true},
		{"copy-1514B", 1514, true},
		{"nocopy-1514B", 1514, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			s, k := newFakeSocket(b, Config{})
			batch := make([]Frame, 64)
			b.ReportAllocs()
			frames := 0
			for b.Loop() {
				frames += forwardBatch(s, k, batch, c.len, c.copy)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(frames), "ns/frame")
		})
	}
}

// TestPollerWakeOn: a readable wake descriptor ends Wait at once, is
// reported by Woken, and is not counted as a ready socket.
func TestPollerWakeOn(t *testing.T) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	p := NewPoller()
	p.WakeOn(fd)
	if n, err := p.Wait(0); err != nil || n != 0 || p.Woken() {
		t.Fatalf("before a wake: Wait = %d, %v; Woken = %v", n, err, p.Woken())
	}
	one := [8]byte{1}
	if _, err := unix.Write(fd, one[:]); err != nil {
		t.Fatal(err)
	}
	// An hour: only the wake (or a signal, EINTR, which Wait reports as
	// 0 ready and no error) can end this Wait.
	for i := 0; !p.Woken(); i++ {
		if n, err := p.Wait(time.Hour); err != nil || n != 0 || i == 100 {
			t.Fatalf("after a wake: Wait = %d, %v; Woken = %v", n, err, p.Woken())
		}
	}
}
