package hostile

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// ethPAll is htons(ETH_P_ALL), the protocol of a packet socket that sees
// every frame.
const ethPAll = 0x0300

// Injector writes raw Ethernet frames, headers included and unchecked, out
// of one interface of a network namespace: an AF_PACKET SOCK_RAW socket
// created inside the namespace (a socket keeps its namespace, so it may be
// used from any goroutine). The socket's protocol is 0, so it receives
// nothing.
//
// An Injector is safe for concurrent use.
type Injector struct {
	fd      int
	ifindex int
	mac     net.HardwareAddr
}

// NewInjector opens an injector on interface ifname of ns.
func NewInjector(ns *netns.Namespace, ifname string) (*Injector, error) {
	in := &Injector{fd: -1}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		in.ifindex, in.mac = ifi.Index, ifi.HardwareAddr
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		in.fd = fd
		// Frames go straight to the device, past any qdisc.
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return fmt.Errorf("set PACKET_QDISC_BYPASS: %w", err)
		}
		return nil
	})
	if err != nil {
		if in.fd >= 0 {
			unix.Close(in.fd)
		}
		return nil, fmt.Errorf("open injector on %s in %s: %w", ifname, ns.Name(), err)
	}
	return in, nil
}

// MAC returns the MAC of the injector's interface.
func (in *Injector) MAC() net.HardwareAddr { return in.mac }

func (in *Injector) addr(frame []byte) *unix.SockaddrLinklayer {
	sa := &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: in.ifindex, Halen: 6}
	if len(frame) >= 6 {
		copy(sa.Addr[:6], frame[:6])
	}
	return sa
}

// Send writes one frame. The kernel refuses frames shorter than an
// Ethernet header.
func (in *Injector) Send(frame []byte) error {
	if err := unix.Sendto(in.fd, frame, 0, in.addr(frame)); err != nil {
		return fmt.Errorf("send %d-byte frame: %w", len(frame), err)
	}
	return nil
}

// SendAll writes the frames in order, pausing pause after every burst
// frames (no pause if burst or pause is 0), and returns how many the
// kernel accepted. A frame the device cannot take right now (ENOBUFS,
// EAGAIN) is retried after a short sleep.
func (in *Injector) SendAll(frames [][]byte, burst int, pause time.Duration) (int, error) {
	sent := 0
	for i, f := range frames {
		for tries := 0; ; tries++ {
			err := in.Send(f)
			if err == nil {
				break
			}
			if (errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN)) && tries < 100 {
				time.Sleep(100 * time.Microsecond)
				continue
			}
			return sent, err
		}
		sent++
		if burst > 0 && pause > 0 && (i+1)%burst == 0 {
			time.Sleep(pause)
		}
	}
	return sent, nil
}

// mmsghdr is struct mmsghdr of sendmmsg(2) on 64-bit Linux.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// Batch is a set of frames prepared for [Injector.SendBatch]: one
// sendmmsg(2) writes them all.
type Batch struct {
	msgs   []mmsghdr
	iovs   []unix.Iovec
	frames [][]byte
	sa     unix.RawSockaddrLinklayer
}

// NewBatch prepares frames for sending out of in's interface. The frames
// must not change while the batch is used; they should all have the same
// destination MAC (the first frame's is used).
func (in *Injector) NewBatch(frames [][]byte) *Batch {
	b := &Batch{
		msgs:   make([]mmsghdr, len(frames)),
		iovs:   make([]unix.Iovec, len(frames)),
		frames: frames,
	}
	b.sa.Family = unix.AF_PACKET
	b.sa.Protocol = ethPAll
	b.sa.Ifindex = int32(in.ifindex)
	b.sa.Halen = 6
	if len(frames) > 0 && len(frames[0]) >= 6 {
		for i := range 6 {
			b.sa.Addr[i] = frames[0][i]
		}
	}
	for i, f := range frames {
		b.iovs[i].Base = &f[0]
		b.iovs[i].SetLen(len(f))
		b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.sa))
		b.msgs[i].hdr.Namelen = uint32(unsafe.Sizeof(b.sa))
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.SetIovlen(1)
	}
	return b
}

// SendBatch writes the batch's frames with sendmmsg(2) and returns how many
// the kernel accepted.
func (in *Injector) SendBatch(b *Batch) (int, error) {
	if len(b.msgs) == 0 {
		return 0, nil
	}
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(in.fd), uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(len(b.msgs)), 0, 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("sendmmsg: %w", errno)
	}
	return int(n), nil
}

// Close closes the socket.
func (in *Injector) Close() error {
	if err := unix.Close(in.fd); err != nil {
		return fmt.Errorf("close injector: %w", err)
	}
	return nil
}

// Sniffer records the frames that arrive on one interface of a network
// namespace (an AF_PACKET socket created inside it; frames the namespace
// sends itself are ignored) and that a filter accepts, up to a limit. It
// is how the tests check what reached a pod.
//
// A Sniffer is safe for concurrent use.
type Sniffer struct {
	fd     int
	filter func([]byte) bool
	max    int
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	mu      sync.Mutex
	frames  []Capture
	matched int // frames the filter accepted, kept or not
	dropped int // frames the kernel dropped, as of the last Dropped
}

// Capture is a frame a [Sniffer] kept, and when it was read.
type Capture struct {
	At    time.Time
	Frame []byte
}

// NewSniffer starts a sniffer on interface ifname of ns that keeps the
// first max frames that filter accepts (every frame if filter is nil) and
// counts them all.
func NewSniffer(ns *netns.Namespace, ifname string, max int, filter func(frame []byte) bool) (*Sniffer, error) {
	s := &Sniffer{fd: -1, filter: filter, max: max, stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, ethPAll)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		s.fd = fd
		tv := unix.NsecToTimeval(int64(20 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("set SO_RCVTIMEO: %w", err)
		}
		// A large buffer (root may force it past rmem_max), so that a
		// sniffer on a busy interface rarely drops; Dropped says if it
		// did.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			return fmt.Errorf("set SO_RCVBUFFORCE: %w", err)
		}
		// The kernel's receive time, not the time the goroutine got to
		// the frame.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("set SO_TIMESTAMPNS: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: ethPAll, Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind: %w", err)
		}
		return nil
	})
	if err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
		return nil, fmt.Errorf("start sniffer on %s in %s: %w", ifname, ns.Name(), err)
	}
	go s.run()
	return s, nil
}

func (s *Sniffer) run() {
	defer close(s.done)
	buf := make([]byte, 1<<16)
	oob := make([]byte, 128)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		n, oobn, _, from, err := unix.Recvmsg(s.fd, buf, oob, 0)
		if err != nil || n <= 0 {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f := buf[:n]
		if s.filter != nil && !s.filter(f) {
			continue
		}
		at := receiveTime(oob[:oobn])
		s.mu.Lock()
		s.matched++
		if len(s.frames) < s.max {
			s.frames = append(s.frames, Capture{At: at, Frame: bytes.Clone(f)})
		}
		s.mu.Unlock()
	}
}

// receiveTime returns the SCM_TIMESTAMPNS time of a received frame, or
// now.
func receiveTime(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
				ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				return time.Unix(ts.Unix())
			}
		}
	}
	return time.Now()
}

// Dropped returns how many frames the kernel dropped because the sniffer's
// socket buffer was full (PACKET_STATISTICS; reading it resets the
// kernel's count, the sniffer adds it up). A sniffer that dropped frames
// cannot tell that a frame did not arrive.
func (s *Sniffer) Dropped() (int, error) {
	st, err := unix.GetsockoptTpacketStats(s.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0, fmt.Errorf("sniffer statistics: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropped += int(st.Drops)
	return s.dropped, nil
}

// Count returns how many frames the filter accepted so far.
func (s *Sniffer) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.matched
}

// Frames returns copies of the frames kept so far.
func (s *Sniffer) Frames() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(s.frames))
	for i, c := range s.frames {
		out[i] = bytes.Clone(c.Frame)
	}
	return out
}

// Captures returns copies of the frames kept so far with their times.
func (s *Sniffer) Captures() []Capture {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Capture, len(s.frames))
	for i, c := range s.frames {
		out[i] = Capture{At: c.At, Frame: bytes.Clone(c.Frame)}
	}
	return out
}

// Reset forgets the frames seen so far.
func (s *Sniffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frames, s.matched = nil, 0
}

// Close stops the sniffer and closes its socket. The frames stay readable.
func (s *Sniffer) Close() error {
	var err error
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		if cerr := unix.Close(s.fd); cerr != nil {
			err = fmt.Errorf("close sniffer: %w", cerr)
		}
	})
	return err
}
