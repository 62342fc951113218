package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/podgate/podgate/policy/table"
)

// The server side of streams: the lab's servers hand a connection or
// datagram that opens a stream to the Stream registered for it, which then
// pushes or records lines.

// serverStream is the server's side of a connection that may be a
// stream: until the client registers it, the connection is an echo.
type serverStream struct {
	// set is closed when a client registers the stream.
	set    chan struct{}
	stream *Stream  // once set
	conn   net.Conn // TCP: the server's end of the connection
	// pushing is set once a UDP server started pushing.
	pushing bool
}

// attach returns the server side of the connection of key, creating it,
// and records the server's end c (TCP) if given; detach removes it when
// the connection ends.
func (sv *servers) attach(key streamKey, c net.Conn) *serverStream {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	st, ok := sv.streams[key]
	if !ok {
		st = &serverStream{set: make(chan struct{})}
		sv.streams[key] = st
	}
	if c != nil {
		st.conn = c
	}
	return st
}

func (sv *servers) detach(key streamKey, st *serverStream) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.streams[key] == st {
		delete(sv.streams, key)
	}
}

// register makes s known to the server of its connection.
func (sv *servers) register(s *Stream) {
	st := sv.attach(s.key, nil)
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if st.stream == nil {
		st.stream = s
		close(st.set)
	}
}

// unregister forgets s and closes the server's end of its TCP
// connection, which a cut connection would otherwise keep open.
func (sv *servers) unregister(s *Stream) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if st, ok := sv.streams[s.key]; ok && st.stream == s {
		delete(sv.streams, s.key)
		if st.conn != nil {
			_ = st.conn.Close()
		}
	}
}

// registered returns the stream registered for key, or nil.
func (sv *servers) registered(key streamKey) *serverStream {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if st, ok := sv.streams[key]; ok && st.stream != nil {
		return st
	}
	return nil
}

// serveTCP serves one TCP connection: an echo, until the client registers
// it as a stream; then, if the server pushes, lines every interval and no
// echo; if the client pushes, it records the lines and sends nothing.
func (sv *servers) serveTCP(c net.Conn) {
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	key := streamKey{table.TCP, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	st := sv.attach(key, c)
	defer sv.detach(key, st)
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(done)
	wg.Go(func() {
		select {
		case <-st.set:
		case <-done:
			return
		case <-sv.quit:
			return
		}
		s := st.stream
		if s.Spec.Pusher != ServerPushes {
			return
		}
		err := pushLines(s.Spec.Interval, func(b []byte) error {
			_ = c.SetWriteDeadline(time.Now().Add(s.Spec.Interval))
			_, err := c.Write(b)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil // the send buffer is full while the flow is cut
			}
			return err
		}, s.stop, done, sv.quit)
		if err != nil {
			s.fail(fmt.Errorf("server: send: %w", err))
		}
	})
	buf := make([]byte, 64<<10)
	var pending []byte // a ClientPushes stream's partial line
	for {
		_ = c.SetReadDeadline(time.Now().Add(serverIdle))
		n, err := c.Read(buf)
		var s *Stream
		select {
		case <-st.set:
			s = st.stream
		default:
		}
		switch {
		case n > 0 && s == nil:
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		case n > 0 && s.Spec.Pusher == ClientPushes:
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				if seq, ok := parseLine(pending[:i]); ok {
					s.record(seq)
				}
				pending = pending[i+1:]
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && s != nil {
			continue // a stream may be silent for long; Close ends it
		}
		if err != nil {
			if s != nil && !errors.Is(err, io.EOF) {
				s.fail(fmt.Errorf("server: receive: %w", err))
			}
			return
		}
	}
}

// serveUDP handles one datagram to a UDP server: a stream's datagram
// starts the server's pushing (once) or is recorded; any other is echoed.
func (sv *servers) serveUDP(pc *net.UDPConn, b []byte, from netip.AddrPort) {
	st := sv.registered(streamKey{table.UDP, netip.AddrPortFrom(from.Addr().Unmap(), from.Port())})
	if st == nil {
		_, _ = pc.WriteToUDPAddrPort(b, from)
		return
	}
	s := st.stream
	if s.Spec.Pusher == ClientPushes {
		if seq, ok := parseLine(b); ok {
			s.record(seq)
		}
		return
	}
	sv.mu.Lock()
	start := !st.pushing && !sv.closed
	if start {
		st.pushing = true
		sv.wg.Add(1)
	}
	sv.mu.Unlock()
	if !start {
		return
	}
	go func() {
		defer sv.wg.Done()
		err := pushLines(s.Spec.Interval, func(b []byte) error {
			_, err := pc.WriteToUDPAddrPort(b, from)
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil // e.g. an ICMP error of an earlier datagram: go on
		}, s.stop, sv.quit, nil)
		if err != nil && !errors.Is(err, net.ErrClosed) {
			s.fail(fmt.Errorf("server: send: %w", err))
		}
	}()
}
