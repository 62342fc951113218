package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/sctp"
)

// The kernel of the lab machines has no SCTP (CONFIG_IP_SCTP unset), so the
// lab speaks SCTP in user space: github.com/pion/sctp runs the association
// (INIT, INIT ACK, COOKIE ECHO, COOKIE ACK, DATA, SACK, SHUTDOWN) over a
// raw IP socket of protocol 132, which the kernel accepts without SCTP
// support. Packets on the wire are real SCTP packets, parsed and judged by
// the gateway like any other.
//
// pion/sctp always sends from port 5000 to port 5000 and expects both ports
// to be 5000 in what it receives (association.go, defaultSCTPSrcDstPort:
// it was written for WebRTC data channels, where SCTP runs over DTLS). The
// [sctpShim] below sits between pion and the raw socket and gives each
// association its own ports on the wire:
//
//   - on write, it sets the common header's source port to the local port
//     and the destination port to the remote one, and recomputes the CRC32c;
//   - on read, it drops packets whose CRC32c is wrong (as a kernel SCTP
//     stack would), and packets whose ports are not (remote, local): other
//     associations' packets, which a raw socket also receives; it then sets
//     both ports to 5000 and recomputes the CRC32c before pion sees the
//     packet.
//
// The probe's port is therefore what the policy engine sees, and one raw
// socket per association keeps associations apart.

// pionPort is the port pion/sctp writes and expects in every packet.
const pionPort = 5000

// SCTP common header layout (RFC 9260, section 3.1).
const (
	sctpHeaderLen   = 12
	sctpSrcPortOff  = 0
	sctpDstPortOff  = 2
	sctpChecksumOff = 8
	sctpChunkInit   = 1 // chunk type of INIT, the first byte after the header
)

// sctpChecksum returns the CRC32c of an SCTP packet, computed with the
// checksum field taken as zero (RFC 9260, appendix A).
func sctpChecksum(pkt []byte) uint32 {
	tab := crc32.MakeTable(crc32.Castagnoli) // cached by hash/crc32
	var zero [4]byte
	c := crc32.Update(0, tab, pkt[:sctpChecksumOff])
	c = crc32.Update(c, tab, zero[:])
	return crc32.Update(c, tab, pkt[sctpChecksumOff+4:])
}

// sctpChecksumOK reports whether pkt carries a correct CRC32c. The CRC is
// stored in the byte order of the appendix's reference code, which is
// little-endian on the wire.
func sctpChecksumOK(pkt []byte) bool {
	return len(pkt) >= sctpHeaderLen && binary.LittleEndian.Uint32(pkt[sctpChecksumOff:]) == sctpChecksum(pkt)
}

// setSCTPPorts writes the ports into pkt's common header and recomputes its
// CRC32c; pkt must be at least a common header long.
func setSCTPPorts(pkt []byte, src, dst uint16) {
	binary.BigEndian.PutUint16(pkt[sctpSrcPortOff:], src)
	binary.BigEndian.PutUint16(pkt[sctpDstPortOff:], dst)
	binary.LittleEndian.PutUint32(pkt[sctpChecksumOff:], sctpChecksum(pkt))
}

// sctpPorts returns the source and destination ports of an SCTP packet.
func sctpPorts(pkt []byte) (src, dst uint16, ok bool) {
	if len(pkt) < sctpHeaderLen {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(pkt[sctpSrcPortOff:]), binary.BigEndian.Uint16(pkt[sctpDstPortOff:]), true
}

// isSCTPInit reports whether pkt's first chunk is an INIT.
func isSCTPInit(pkt []byte) bool {
	return len(pkt) > sctpHeaderLen && pkt[sctpHeaderLen] == sctpChunkInit
}

// packetConn is the part of a raw IP socket connected to the peer that the
// shim needs. *net.IPConn satisfies it (its ReadFrom strips the IPv4
// header, Read would not); tests use an in-memory pipe.
type packetConn interface {
	ReadFrom(b []byte) (int, net.Addr, error)
	Write(b []byte) (int, error)
	Close() error
	LocalAddr() net.Addr
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// sctpShim is the net.Conn pion/sctp runs one association over: packets of
// one association, to and from peer, with ports rewritten between the wire
// (local, remote) and pion (5000, 5000). See the comment at the top of
// this file.
//
// pion calls Read from one goroutine and Write from another; each side has
// its own buffer and lock.
type sctpShim struct {
	pc            packetConn
	peer          net.Addr
	local, remote uint16

	rmu   sync.Mutex
	first []byte // a packet read before the socket existed (the server's INIT)
	rbuf  []byte

	wmu  sync.Mutex
	wbuf []byte

	closeOnce sync.Once
	closeErr  error
}

var _ net.Conn = (*sctpShim)(nil)

// newSCTPShim returns a shim for the association between ports local (this
// side) and remote (the peer's) over pc, which must be connected to peer.
// first, if not nil, is returned by the first Read.
func newSCTPShim(pc packetConn, peer net.Addr, local, remote uint16, first []byte) *sctpShim {
	return &sctpShim{
		pc: pc, peer: peer, local: local, remote: remote,
		first: first,
		rbuf:  make([]byte, 65536),
		wbuf:  make([]byte, 0, 65536),
	}
}

// Read returns the next packet of the association with both ports set to
// 5000. It skips packets from other addresses or ports, and packets with a
// wrong checksum.
func (s *sctpShim) Read(b []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for {
		var pkt []byte
		if s.first != nil {
			pkt, s.first = s.first, nil
		} else {
			n, from, err := s.pc.ReadFrom(s.rbuf)
			if softError(err) {
				continue
			}
			if err != nil {
				return 0, err
			}
			if !sameIP(from, s.peer) {
				continue
			}
			pkt = s.rbuf[:n]
		}
		src, dst, ok := sctpPorts(pkt)
		if !ok || src != s.remote || dst != s.local || !sctpChecksumOK(pkt) {
			continue
		}
		if len(pkt) > len(b) {
			return 0, io.ErrShortBuffer
		}
		n := copy(b, pkt)
		setSCTPPorts(b[:n], pionPort, pionPort)
		return n, nil
	}
}

// Write sends one packet from pion with the association's ports.
func (s *sctpShim) Write(b []byte) (int, error) {
	if len(b) < sctpHeaderLen {
		return 0, fmt.Errorf("write sctp packet: %d bytes, shorter than the common header", len(b))
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wbuf = append(s.wbuf[:0], b...)
	setSCTPPorts(s.wbuf, s.local, s.remote)
	if _, err := s.pc.Write(s.wbuf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close closes the socket; a blocked Read returns.
func (s *sctpShim) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.pc.Close() })
	return s.closeErr
}

// LocalAddr returns the socket's address.
func (s *sctpShim) LocalAddr() net.Addr { return s.pc.LocalAddr() }

// RemoteAddr returns the peer's address.
func (s *sctpShim) RemoteAddr() net.Addr { return s.peer }

// SetDeadline sets the socket's deadlines.
func (s *sctpShim) SetDeadline(t time.Time) error { return s.pc.SetDeadline(t) }

// SetReadDeadline sets the socket's read deadline.
func (s *sctpShim) SetReadDeadline(t time.Time) error { return s.pc.SetReadDeadline(t) }

// SetWriteDeadline sets the socket's write deadline.
func (s *sctpShim) SetWriteDeadline(t time.Time) error { return s.pc.SetWriteDeadline(t) }

// softError reports whether err is an ICMP error reported on a connected
// raw socket (protocol or port unreachable, parameter problem, packet too
// big, ...). SCTP treats these as hints, not as the end of the
// association: the shim skips them and pion's retransmissions and timeouts
// decide.
func softError(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EPROTO, syscall.ENOPROTOOPT, syscall.ECONNREFUSED, syscall.EHOSTUNREACH,
		syscall.ENETUNREACH, syscall.EHOSTDOWN, syscall.EMSGSIZE, syscall.EACCES:
		return true
	}
	return false
}

func sameIP(a, b net.Addr) bool {
	ai, ok1 := a.(*net.IPAddr)
	bi, ok2 := b.(*net.IPAddr)
	if ok1 && ok2 {
		return ai.IP.Equal(bi.IP)
	}
	return a.String() == b.String()
}

// sctpOptions are the pion options of every lab association: the shim as
// the connection, pion's logging off (a denied probe is not an error), and
// blocking writes so that long transfers apply back pressure.
func sctpOptions(conn net.Conn, name string) []sctp.AssociationOption {
	return []sctp.AssociationOption{
		sctp.WithNetConn(conn),
		sctp.WithName(name),
		sctp.WithLoggerFactory(&logging.DefaultLoggerFactory{Writer: io.Discard, DefaultLogLevel: logging.LogLevelDisabled}),
		sctp.WithBlockWrite(true),
	}
}

func clientOptions(opts []sctp.AssociationOption) []sctp.ClientOption {
	out := make([]sctp.ClientOption, len(opts))
	for i, o := range opts {
		out[i] = o
	}
	return out
}

func serverOptions(opts []sctp.AssociationOption) []sctp.ServerOption {
	out := make([]sctp.ServerOption, len(opts))
	for i, o := range opts {
		out[i] = o
	}
	return out
}

// sctpMaxMessage is the largest message an [sctpStream] writes at once and
// the size of its read buffer: pion delivers whole messages and fails
// reads into shorter buffers.
const sctpMaxMessage = 16 << 10

// sctpStream turns an association's stream 0 into a byte stream (net.Conn):
// writes are cut into messages of at most sctpMaxMessage bytes, reads are
// served from the last message received. Close shuts the association down
// gracefully (SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE), then releases it.
type sctpStream struct {
	assoc  *sctp.Association
	stream *sctp.Stream
	shim   *sctpShim

	rmu     sync.Mutex
	buf     []byte
	pending []byte

	closeOnce sync.Once
	closeErr  error
}

var _ net.Conn = (*sctpStream)(nil)

func (c *sctpStream) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pending) == 0 {
		n, err := c.stream.Read(c.buf)
		if err != nil {
			return 0, err
		}
		c.pending = c.buf[:n]
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *sctpStream) Write(b []byte) (int, error) {
	total := 0
	for len(b) > 0 {
		m := min(len(b), sctpMaxMessage)
		n, err := c.stream.Write(b[:m])
		total += n
		if err != nil {
			return total, err
		}
		b = b[m:]
	}
	return total, nil
}

// Close shuts the association down, waiting at most a second for the peer
// to acknowledge, and closes the socket.
func (c *sctpStream) Close() error {
	c.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.assoc.Shutdown(ctx)
		cancel()
		if errors.Is(err, sctp.ErrShutdownNonEstablished) {
			err = nil // the peer ended it first
		}
		if cerr := c.assoc.Close(); cerr != nil && err == nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
		if err != nil {
			c.closeErr = fmt.Errorf("close sctp association: %w", err)
		}
	})
	return c.closeErr
}

func (c *sctpStream) LocalAddr() net.Addr  { return sctpAddr{c.shim.LocalAddr(), c.shim.local} }
func (c *sctpStream) RemoteAddr() net.Addr { return sctpAddr{c.shim.peer, c.shim.remote} }
func (c *sctpStream) SetDeadline(t time.Time) error {
	return errors.Join(c.stream.SetReadDeadline(t), c.stream.SetWriteDeadline(t))
}
func (c *sctpStream) SetReadDeadline(t time.Time) error  { return c.stream.SetReadDeadline(t) }
func (c *sctpStream) SetWriteDeadline(t time.Time) error { return c.stream.SetWriteDeadline(t) }

// sctpAddr is an SCTP endpoint address.
type sctpAddr struct {
	ip   net.Addr
	port uint16
}

func (a sctpAddr) Network() string { return "sctp" }
func (a sctpAddr) String() string {
	host := a.ip.String()
	if ia, ok := a.ip.(*net.IPAddr); ok {
		host = ia.IP.String()
	}
	return net.JoinHostPort(host, fmt.Sprint(a.port))
}
