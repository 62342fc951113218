package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/sctp"
)

// wire is an in-memory network of two raw-socket ends: every packet one
// end writes is recorded and delivered to the other end's queue.
type wire struct {
	mu      sync.Mutex
	packets [][]byte // everything written, in order
	// corrupt, if set, changes packets on the way (after recording).
	corrupt func([]byte) []byte
}

type wireEnd struct {
	w        *wire
	addr     *net.IPAddr
	in       chan []byte
	peer     *wireEnd
	closed   chan struct{}
	once     sync.Once
	mu       sync.Mutex
	deadline time.Time
}

func newWire() (*wire, *wireEnd, *wireEnd) {
	w := &wire{}
	a := &wireEnd{w: w, addr: &net.IPAddr{IP: net.ParseIP("192.0.2.1")}, in: make(chan []byte, 1024), closed: make(chan struct{})}
	b := &wireEnd{w: w, addr: &net.IPAddr{IP: net.ParseIP("192.0.2.2")}, in: make(chan []byte, 1024), closed: make(chan struct{})}
	a.peer, b.peer = b, a
	return w, a, b
}

func (e *wireEnd) ReadFrom(b []byte) (int, net.Addr, error) {
	e.mu.Lock()
	d := e.deadline
	e.mu.Unlock()
	var timeout <-chan time.Time
	if !d.IsZero() {
		t := time.NewTimer(time.Until(d))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case p := <-e.in:
		return copy(b, p), e.peer.addr, nil
	case <-e.closed:
		return 0, nil, net.ErrClosed
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (e *wireEnd) Write(b []byte) (int, error) {
	select {
	case <-e.closed:
		return 0, net.ErrClosed
	default:
	}
	p := append([]byte(nil), b...)
	e.w.mu.Lock()
	e.w.packets = append(e.w.packets, append([]byte(nil), p...))
	corrupt := e.w.corrupt
	e.w.mu.Unlock()
	if corrupt != nil {
		p = corrupt(p)
	}
	select {
	case e.peer.in <- p:
	default: // dropped, like a full queue
	}
	return len(b), nil
}

func (e *wireEnd) Close() error {
	e.once.Do(func() { close(e.closed) })
	return nil
}
func (e *wireEnd) LocalAddr() net.Addr { return e.addr }
func (e *wireEnd) SetDeadline(t time.Time) error {
	return errors.Join(e.SetReadDeadline(t), e.SetWriteDeadline(t))
}
func (e *wireEnd) SetReadDeadline(t time.Time) error {
	e.mu.Lock()
	e.deadline = t
	e.mu.Unlock()
	return nil
}
func (e *wireEnd) SetWriteDeadline(time.Time) error { return nil }

// TestSCTPShimRoundTrip runs a pion/sctp client and server through the
// shim over an in-memory wire: the association comes up, a message is
// echoed, and every packet on the wire carries the chosen ports (not
// pion's 5000) and a correct CRC32c.
func TestSCTPShimRoundTrip(t *testing.T) {
	w, a, b := newWire()
	const cport, sport = 40123, 80
	client := newSCTPShim(a, b.addr, cport, sport, nil)

	// The server side is started by its first packet, as the lab's
	// demultiplexer does: read the INIT, then hand it to the shim.
	type served struct {
		msg []byte
		err error
	}
	done := make(chan served, 1)
	go func() {
		buf := make([]byte, 65536)
		n, _, err := b.ReadFrom(buf)
		if err != nil {
			done <- served{err: err}
			return
		}
		if !isSCTPInit(buf[:n]) {
			done <- served{err: errors.New("first packet is not an INIT")}
			return
		}
		server := newSCTPShim(b, a.addr, sport, cport, append([]byte(nil), buf[:n]...))
		assoc, err := sctp.ServerWithOptions(serverOptions(sctpOptions(server, "server"))...)
		if err != nil {
			done <- served{err: err}
			return
		}
		defer assoc.Close()
		st, err := assoc.AcceptStream()
		if err != nil {
			done <- served{err: err}
			return
		}
		m := make([]byte, 1024)
		n, err = st.Read(m)
		if err == nil {
			_, err = st.Write(m[:n])
		}
		done <- served{msg: m[:n], err: err}
		// Wait for the client's SHUTDOWN to end the association.
		_, _ = assoc.AcceptStream()
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	assoc, err := sctp.ClientContext(ctx, clientOptions(sctpOptions(client, "client"))...)
	if err != nil {
		t.Fatalf("client association: %v", err)
	}
	st, err := assoc.OpenStream(0, sctp.PayloadTypeWebRTCBinary)
	if err != nil {
		t.Fatal(err)
	}
	conn := &sctpStream{assoc: assoc, stream: st, shim: client, buf: make([]byte, 65536)}
	msg := []byte("hello through the shim")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := conn.Read(got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	s := <-done
	if s.err != nil || !bytes.Equal(s.msg, msg) {
		t.Fatalf("server got %q, %v", s.msg, s.err)
	}
	if err := conn.Close(); err != nil {
		t.Errorf("close: %v", err)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.packets) < 6 { // INIT, INIT ACK, COOKIE ECHO, COOKIE ACK, DATA, DATA...
		t.Fatalf("only %d packets on the wire", len(w.packets))
	}
	for i, p := range w.packets {
		src, dst, ok := sctpPorts(p)
		if !ok {
			t.Fatalf("packet %d: too short", i)
		}
		if !(src == cport && dst == sport) && !(src == sport && dst == cport) {
			t.Errorf("packet %d: ports %d -> %d, want %d <-> %d", i, src, dst, cport, sport)
		}
		if !sctpChecksumOK(p) {
			t.Errorf("packet %d: bad CRC32c", i)
		}
	}
	if !isSCTPInit(w.packets[0]) {
		t.Errorf("first packet is not an INIT: chunk type %d", w.packets[0][sctpHeaderLen])
	}
}

// TestSCTPShimFilters checks that Read drops packets of other
// associations and packets with a bad CRC32c, and hands pion 5000/5000.
func TestSCTPShimFilters(t *testing.T) {
	_, a, b := newWire()
	shim := newSCTPShim(a, b.addr, 40000, 80, nil)
	mk := func(src, dst uint16, fix bool) []byte {
		p := make([]byte, 16)
		p[sctpHeaderLen] = 3 // SACK, any chunk
		binary.BigEndian.PutUint16(p[0:], src)
		binary.BigEndian.PutUint16(p[2:], dst)
		if fix {
			setSCTPPorts(p, src, dst)
		}
		return p
	}
	want := mk(80, 40000, true)
	a.in <- mk(81, 40000, true)  // another association
	a.in <- mk(80, 40001, true)  // another association
	a.in <- mk(80, 40000, false) // bad checksum
	a.in <- want
	buf := make([]byte, 100)
	_ = a.SetReadDeadline(time.Now().Add(time.Second))
	n, err := shim.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	src, dst, _ := sctpPorts(buf[:n])
	if src != pionPort || dst != pionPort || !sctpChecksumOK(buf[:n]) {
		t.Fatalf("pion got ports %d -> %d (checksum ok %v), want 5000 -> 5000", src, dst, sctpChecksumOK(buf[:n]))
	}
	if !bytes.Equal(buf[sctpHeaderLen:n], want[sctpHeaderLen:]) || !bytes.Equal(buf[4:8], want[4:8]) {
		t.Fatal("chunks or verification tag changed")
	}
	if len(a.in) != 0 {
		t.Fatalf("%d packets left unread", len(a.in))
	}
}

func crc32cOf(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }

// TestSCTPChecksum checks the CRC32c: the standard check value, and that
// a rewritten packet verifies and a corrupted one does not. (pion/sctp
// verifies every INIT and COOKIE ECHO with its own CRC32c code, so the
// round trip test checks the byte order.)
func TestSCTPChecksum(t *testing.T) {
	// CRC32c("123456789") is 0xE3069283, the standard check value.
	if got := crc32cOf([]byte("123456789")); got != 0xE3069283 {
		t.Fatalf("crc32c check value = %#x", got)
	}
	p := make([]byte, 32)
	for i := range p {
		p[i] = byte(i * 7)
	}
	setSCTPPorts(p, 1234, 80)
	if !sctpChecksumOK(p) {
		t.Fatal("checksum not accepted after setSCTPPorts")
	}
	p[20] ^= 1
	if sctpChecksumOK(p) {
		t.Fatal("corrupted packet accepted")
	}
}
