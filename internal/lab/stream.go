package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/podgate/podgate/policy/table"
)

// Pusher says which end of a [Stream] sends.
type Pusher uint8

// Pushers.
const (
	// ServerPushes: the destination's server sends a line every interval;
	// the client sends nothing once the flow is open (TCP: the handshake;
	// UDP: one datagram, repeated until the first line comes back).
	ServerPushes Pusher = iota
	// ClientPushes: the client sends a line every interval; the server
	// sends nothing (TCP: not even data, only ACKs).
	ClientPushes
)

// String returns "server pushes" or "client pushes".
func (p Pusher) String() string {
	if p == ClientPushes {
		return "client pushes"
	}
	return "server pushes"
}

// DefaultStreamInterval is the default [StreamSpec.Interval].
const DefaultStreamInterval = 500 * time.Millisecond

// StreamSpec describes a [Stream].
type StreamSpec struct {
	// Pusher is the end that sends (default ServerPushes).
	Pusher Pusher
	// Interval between two lines (default 500ms).
	Interval time.Duration
}

// Arrival is a line of a [Stream] that reached the receiving end.
type Arrival struct {
	// Seq numbers the lines from 1 as the pusher sent them.
	Seq int
	// At is when the receiving end read it.
	At time.Time
}

// Stream is a long-lived connection between two lab endpoints on which
// one end pushes numbered lines at a fixed interval and the other only
// receives, recording when each line arrives. It is the probe for
// connections that a policy change must cut: a cut stream receives no
// line after the cut, a retransmission or a reply that slips through
// shows up as a late arrival. Open one with [Lab.OpenStream].
//
// The lab's server for the destination's port (the echo server of the
// probes) plays the server's part: the client registers the connection
// with it in this process, by the client's address and port, so nothing
// but the pushed lines crosses the wire.
//
// Its methods may be called from several goroutines at once.
type Stream struct {
	From, To string
	Src, Dst netip.Addr
	Port     table.PortSpec
	Spec     StreamSpec

	key      streamKey
	servers  *servers
	conn     net.Conn
	stop     chan struct{} // closed by Close
	set      chan struct{} // closed when the client has registered
	wg       sync.WaitGroup
	lab      *Lab
	mu       sync.Mutex
	arrivals []Arrival
	err      error // why the receiving or sending end stopped
	closed   bool
}

// streamKey identifies a stream's connection at the server: the protocol
// and the client's address and port as the server sees them.
type streamKey struct {
	proto  table.Protocol
	client netip.AddrPort
}

// streamLine is the prefix of each line a stream pushes.
const streamLine = "podgate-lab stream "

// OpenStream opens a stream from one endpoint to another (names or
// addresses as for [Lab.ProbeResult], a Service included) on a TCP or UDP
// port and waits, at most Spec.ProbeTimeout, until its first line arrives.
// The caller closes it (Close), or the lab does when it closes.
func (l *Lab) OpenStream(ctx context.Context, from, to string, p table.PortSpec, spec StreamSpec) (*Stream, error) {
	if spec.Interval <= 0 {
		spec.Interval = DefaultStreamInterval
	}
	if p.Protocol != table.TCP && p.Protocol != table.UDP {
		return nil, fmt.Errorf("open stream %s -> %s %s: TCP or UDP only", from, to, p)
	}
	src, dst, sip, dip, err := l.pair(from, to)
	if err != nil {
		return nil, err
	}
	if err := l.ensureServer(dst, dip, p); err != nil {
		return nil, fmt.Errorf("open stream %s -> %s %s: %w", src.Name, dst.Name, p, err)
	}
	s := &Stream{
		From: src.Name, To: dst.Name, Src: sip, Dst: dip, Port: p, Spec: spec,
		servers: l.servers, stop: make(chan struct{}), set: make(chan struct{}), lab: l,
	}
	dctx, cancel := context.WithTimeout(ctx, l.spec.ProbeTimeout)
	defer cancel()
	if p.Protocol == table.UDP {
		s.conn, err = dialUDP(src.NS, sip, dip, p.Port)
	} else {
		s.conn, err = l.dial(dctx, src.NS, sip, dip, p)
	}
	if err != nil {
		return nil, fmt.Errorf("open stream %s -> %s %s: %w", src.Name, dst.Name, p, err)
	}
	local, _ := netip.ParseAddrPort(s.conn.LocalAddr().String())
	s.key = streamKey{p.Protocol, netip.AddrPortFrom(local.Addr().Unmap(), local.Port())}
	if !l.addStream(s) {
		_ = s.conn.Close()
		return nil, fmt.Errorf("open stream %s -> %s %s: %w", src.Name, dst.Name, p, errServersClosed)
	}
	l.servers.register(s)
	close(s.set)
	switch {
	case spec.Pusher == ClientPushes:
		s.wg.Go(s.clientPush)
	case p.Protocol == table.UDP:
		s.wg.Go(s.clientReceiveUDP)
	default:
		s.wg.Go(s.clientReceiveTCP)
	}
	for s.Count() == 0 {
		select {
		case <-dctx.Done():
			err := fmt.Errorf("open stream %s -> %s %s (%s): no line within %v", s.From, s.To, p, spec.Pusher, l.spec.ProbeTimeout)
			if e := s.Err(); e != nil {
				err = fmt.Errorf("%w: %v", err, e)
			}
			_ = s.Close()
			return nil, err
		case <-time.After(10 * time.Millisecond):
		}
	}
	return s, nil
}

// record notes the arrival of line seq now.
func (s *Stream) record(seq int) {
	s.mu.Lock()
	s.arrivals = append(s.arrivals, Arrival{Seq: seq, At: time.Now()})
	s.mu.Unlock()
}

// fail notes why an end stopped (the first reason only), unless the
// stream is being closed.
func (s *Stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil && !s.closed {
		s.err = err
	}
	s.mu.Unlock()
}

// parseLine returns the sequence number of a pushed line.
func parseLine(b []byte) (int, bool) {
	rest, ok := bytes.CutPrefix(bytes.TrimRight(b, "\n"), []byte(streamLine))
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(string(rest))
	return n, err == nil
}

// pushLines calls write with line 1, 2, ... every interval until one of
// the stop channels (nil ones never) is closed or write fails, and returns
// that error (nil when stopped).
func pushLines(interval time.Duration, write func([]byte) error, stop1, stop2, stop3 <-chan struct{}) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := 1; ; seq++ {
		if err := write(fmt.Appendf(nil, "%s%d\n", streamLine, seq)); err != nil {
			return err
		}
		select {
		case <-stop1:
			return nil
		case <-stop2:
			return nil
		case <-stop3:
			return nil
		case <-t.C:
		}
	}
}

// clientPush sends the lines of a ClientPushes stream.
func (s *Stream) clientPush() {
	err := pushLines(s.Spec.Interval, func(b []byte) error {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.Spec.Interval))
		_, err := s.conn.Write(b)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil // TCP: the send buffer is full while the flow is cut; keep trying
		}
		return err
	}, s.stop, nil, nil)
	if err != nil {
		s.fail(fmt.Errorf("client: send: %w", err))
	}
}

// clientReceiveTCP reads the lines of a ServerPushes TCP stream.
func (s *Stream) clientReceiveTCP() {
	br := bufio.NewReader(s.conn)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			s.fail(fmt.Errorf("client: receive: %w", err))
			return
		}
		if seq, ok := parseLine(line); ok {
			s.record(seq)
		}
	}
}

// clientReceiveUDP sends a ServerPushes UDP stream's opening datagram
// every udpRetry until the first line arrives, and reads the lines.
func (s *Stream) clientReceiveUDP() {
	buf := make([]byte, 2048)
	opened := false
	for {
		if !opened {
			if _, err := s.conn.Write([]byte("podgate-lab stream open")); err != nil {
				s.fail(fmt.Errorf("client: send: %w", err))
				return
			}
			_ = s.conn.SetReadDeadline(time.Now().Add(udpRetry))
		} else {
			_ = s.conn.SetReadDeadline(time.Time{})
		}
		n, err := s.conn.Read(buf)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case err != nil:
			if !s.isClosed() {
				// A connected UDP socket reports an ICMP error of an
				// earlier datagram; the stream goes on.
				s.fail(fmt.Errorf("client: receive: %w", err))
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			return
		}
		if seq, ok := parseLine(buf[:n]); ok {
			s.record(seq)
			opened = true
		}
	}
}

func (s *Stream) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Arrivals returns the lines that reached the receiving end so far.
func (s *Stream) Arrivals() []Arrival {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Arrival(nil), s.arrivals...)
}

// Count returns the number of lines that arrived so far.
func (s *Stream) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.arrivals)
}

// ArrivalsAfter returns the lines that arrived after t.
func (s *Stream) ArrivalsAfter(t time.Time) []Arrival {
	var out []Arrival
	for _, a := range s.Arrivals() {
		if a.At.After(t) {
			out = append(out, a)
		}
	}
	return out
}

// Err returns why an end of the stream stopped sending or receiving (a
// reset, an ICMP error of a UDP datagram), or nil. It says what happened
// to the connection; whether the stream was cut is what Arrivals say.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// String returns "from -> to PORT (pusher)".
func (s *Stream) String() string {
	return fmt.Sprintf("%s -> %s %s (%s)", s.From, s.To, s.Port, s.Spec.Pusher)
}

// WaitFlowing waits until n more lines have arrived, at most timeout (or
// until ctx is done), and fails otherwise.
func (s *Stream) WaitFlowing(ctx context.Context, n int, timeout time.Duration) error {
	want := s.Count() + n
	deadline := time.Now().Add(timeout)
	for s.Count() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("stream %s: %d of %d lines in %v (last error: %v)", s, n-(want-s.Count()), n, timeout, s.Err())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream %s: %w", s, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// CheckCut waits until change+within+hold and fails if any line arrived
// after change+within: a connection cut by a change at time change must
// receive nothing from within after it, and stay cut for hold. (With
// within 1s and hold 4s, a TCP segment that slips through a cut shows up
// even after two retransmissions.)
func (s *Stream) CheckCut(ctx context.Context, change time.Time, within, hold time.Duration) error {
	select {
	case <-ctx.Done():
		return fmt.Errorf("stream %s: %w", s, ctx.Err())
	case <-time.After(time.Until(change.Add(within + hold))):
	}
	late := s.ArrivalsAfter(change.Add(within))
	if len(late) == 0 {
		return nil
	}
	first, last := late[0], late[len(late)-1]
	return fmt.Errorf("stream %s was not cut: %d lines arrived more than %v after the change (line %d at +%v ... line %d at +%v; last before: %s)",
		s, len(late), within, first.Seq, first.At.Sub(change).Round(time.Millisecond), last.Seq, last.At.Sub(change).Round(time.Millisecond), s.before(change.Add(within)))
}

// before describes the last arrival up to t.
func (s *Stream) before(t time.Time) string {
	var last *Arrival
	for _, a := range s.Arrivals() {
		if !a.At.After(t) {
			last = &a
		}
	}
	if last == nil {
		return "none"
	}
	return fmt.Sprintf("line %d at %s", last.Seq, last.At.Format("15:04:05.000"))
}

// Close stops both ends of the stream and closes its connection. It is
// safe to call more than once.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	err := s.conn.Close()
	s.wg.Wait()
	s.servers.unregister(s)
	s.lab.removeStream(s)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close stream %s: %w", s, err)
	}
	return nil
}

// addStream records an open stream for Close; it reports false once the
// lab is closing.
func (l *Lab) addStream(s *Stream) bool {
	l.streamMu.Lock()
	defer l.streamMu.Unlock()
	if l.streams == nil {
		return false
	}
	l.streams[s] = struct{}{}
	return true
}

func (l *Lab) removeStream(s *Stream) {
	l.streamMu.Lock()
	defer l.streamMu.Unlock()
	delete(l.streams, s)
}

// closeStreams closes every open stream and refuses new ones.
func (l *Lab) closeStreams() {
	l.streamMu.Lock()
	open := l.streams
	l.streams = nil
	l.streamMu.Unlock()
	for s := range open {
		_ = s.Close()
	}
}
