package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/pion/sctp"
	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy/table"
)

// Server timeouts.
const (
	// serverIdle closes a server-side connection or association that has
	// been silent this long.
	serverIdle = 2 * time.Minute
	// sctpHandshakeTimeout bounds an SCTP association's handshake on the
	// server side (INIT to COOKIE ECHO).
	sctpHandshakeTimeout = 10 * time.Second
)

// servers are the echo servers of a lab, one per address, protocol and
// port, started on demand. Each listens on one address, so that replies
// leave from the address the client chose.
type servers struct {
	mu     sync.Mutex
	closed bool
	// started holds the listening sockets and the SCTP demultiplexers.
	started map[serverKey]io.Closer
	sctp    map[netip.Addr]*sctpServer
	// open holds the server sides of connections and associations.
	open map[io.Closer]struct{}
	// streams are the server sides of TCP connections (echo until a
	// client registers a stream) and the registered UDP streams.
	streams map[streamKey]*serverStream
	// quit is closed by close.
	quit chan struct{}
	wg   sync.WaitGroup
}

type serverKey struct {
	addr  netip.Addr
	proto table.Protocol
	port  uint16
}

func newServers() *servers {
	return &servers{
		started: map[serverKey]io.Closer{},
		sctp:    map[netip.Addr]*sctpServer{},
		open:    map[io.Closer]struct{}{},
		streams: map[streamKey]*serverStream{},
		quit:    make(chan struct{}),
	}
}

var errServersClosed = errors.New("lab servers closed")

// track registers c to be closed by close and counts a goroutine that
// serves it; it reports false (and closes c) once close has begun.
func (s *servers) track(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return false
	}
	s.open[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// done ends what track began.
func (s *servers) done(c io.Closer) {
	_ = c.Close()
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
	s.wg.Done()
}

// ensure starts the server for p on addr in ns unless it runs already.
// Protocols without ports need no server (the kernel answers echo
// requests).
func (s *servers) ensure(ns *netns.Namespace, addr netip.Addr, p table.PortSpec) error {
	if !p.Protocol.HasPorts() {
		return nil
	}
	key := serverKey{addr, p.Protocol, p.Port}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errServersClosed
	}
	if _, ok := s.started[key]; ok {
		return nil
	}
	var (
		c   io.Closer
		err error
	)
	switch p.Protocol {
	case table.TCP:
		c, err = s.startTCP(ns, addr, p.Port)
	case table.UDP:
		c, err = s.startUDP(ns, addr, p.Port)
	case table.SCTP:
		c, err = s.startSCTP(ns, addr, p.Port)
	default:
		err = fmt.Errorf("no server for %s", p.Protocol)
	}
	if err != nil {
		return fmt.Errorf("start %s server on %s: %w", p, addr, err)
	}
	s.started[key] = c
	return nil
}

// close stops every server, closes every connection and waits for their
// goroutines.
func (s *servers) close() error {
	s.mu.Lock()
	if !s.closed {
		close(s.quit)
	}
	s.closed = true
	var errs []error
	for _, c := range s.started {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for c := range s.open {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("close servers: %w", errors.Join(errs...))
	}
	return nil
}

// startTCP listens on addr:port in ns and echoes every connection (or
// serves it as a stream, see [servers.serveTCP]).
// Multipath TCP is off: the gateway sees plain TCP, as from nginx.
// The caller holds s.mu.
func (s *servers) startTCP(ns *netns.Namespace, addr netip.Addr, port uint16) (io.Closer, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(addr, port).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				time.Sleep(10 * time.Millisecond) // e.g. EMFILE: try again
				continue
			}
			if !s.track(c) {
				continue
			}
			go func() {
				defer s.done(c)
				s.serveTCP(c)
			}()
		}
	}()
	return ln, nil
}

// startUDP listens on addr:port in ns and echoes every datagram to its
// sender (or serves it as part of a stream, see [servers.serveUDP]). The
// caller holds s.mu.
func (s *servers) startUDP(ns *netns.Namespace, addr netip.Addr, port uint16) (io.Closer, error) {
	var pc *net.UDPConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
		return err
	})
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue // e.g. ECONNREFUSED from an earlier echo
			}
			s.serveUDP(pc, buf[:n], from)
		}
	}()
	return pc, nil
}

// startSCTP serves SCTP port on addr in ns: one demultiplexer per address
// reads every SCTP packet to the address from a raw socket and starts an
// association for each INIT to a served port. The caller holds s.mu.
func (s *servers) startSCTP(ns *netns.Namespace, addr netip.Addr, port uint16) (io.Closer, error) {
	d, ok := s.sctp[addr]
	if !ok {
		var raw *net.IPConn
		err := ns.Do(func() error {
			var err error
			raw, err = net.ListenIP(sctpNetwork(addr), &net.IPAddr{IP: addr.AsSlice()})
			return err
		})
		if err != nil {
			return nil, err
		}
		if err := filterSCTPInit(raw, addr.Is4()); err != nil {
			_ = raw.Close()
			return nil, err
		}
		d = &sctpServer{s: s, ns: ns, addr: addr, raw: raw, ports: map[uint16]bool{}, active: map[sctpKey]bool{}}
		s.sctp[addr] = d
		s.wg.Add(1)
		go d.run()
	}
	d.mu.Lock()
	d.ports[port] = true
	d.mu.Unlock()
	return sctpPortCloser{d}, nil
}

func sctpNetwork(a netip.Addr) string {
	if a.Is4() {
		return "ip4:132"
	}
	return "ip6:132"
}

// sctpServer demultiplexes the SCTP packets to one address. Its raw socket
// receives a copy of every INIT to the address (a socket filter drops the
// rest in the kernel) and starts an association for an INIT to a served
// port from a peer address and port that has none; the association's own
// socket, connected to the peer, receives the association's packets.
//
// The filter matters: the kernel answers an SCTP packet that no raw socket
// took with ICMP "protocol unreachable" (IPv6: "unrecognized next header"),
// and a raw socket whose receive buffer is full does not take it. Without
// the filter, the demultiplexer's buffer fills up with data packets during
// a long transfer and, when the association's buffer is full at the same
// moment, the peer receives that error.
type sctpServer struct {
	s    *servers
	ns   *netns.Namespace
	addr netip.Addr
	raw  *net.IPConn

	mu     sync.Mutex
	ports  map[uint16]bool
	active map[sctpKey]bool
}

type sctpKey struct {
	peer           netip.Addr
	peerPort, port uint16
}

// sctpPortCloser closes the demultiplexer of a served port (all ports of
// the address stop together: the lab closes them only at the end).
type sctpPortCloser struct{ d *sctpServer }

func (c sctpPortCloser) Close() error {
	if err := c.d.raw.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (d *sctpServer) run() {
	defer d.s.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := d.raw.ReadFromIP(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		pkt := buf[:n]
		src, dst, ok := sctpPorts(pkt)
		if !ok || !isSCTPInit(pkt) || !sctpChecksumOK(pkt) {
			continue
		}
		peer, ok := netip.AddrFromSlice(from.IP)
		if !ok {
			continue
		}
		key := sctpKey{peer.Unmap(), src, dst}
		d.mu.Lock()
		start := d.ports[dst] && !d.active[key]
		if start {
			d.active[key] = true
		}
		d.mu.Unlock()
		if start {
			d.accept(key, append([]byte(nil), pkt...))
		}
	}
}

// accept opens the association's own raw socket, connected to the peer,
// and serves the association on it, starting with the INIT already read.
func (d *sctpServer) accept(key sctpKey, init []byte) {
	var raw *net.IPConn
	peer := &net.IPAddr{IP: key.peer.AsSlice()}
	err := d.ns.Do(func() error {
		var err error
		raw, err = net.DialIP(sctpNetwork(d.addr), &net.IPAddr{IP: d.addr.AsSlice()}, peer)
		return err
	})
	if err == nil {
		err = growReadBuffer(raw)
	}
	if err != nil {
		if raw != nil {
			_ = raw.Close()
		}
		d.release(key)
		return
	}
	shim := newSCTPShim(raw, peer, key.port, key.peerPort, init)
	if !d.s.track(shim) {
		d.release(key)
		return
	}
	go func() {
		defer d.s.done(shim)
		defer d.release(key)
		serveAssociation(shim, fmt.Sprintf("server %s:%d<-%s:%d", d.addr, key.port, key.peer, key.peerPort))
	}()
}

func (d *sctpServer) release(key sctpKey) {
	d.mu.Lock()
	delete(d.active, key)
	d.mu.Unlock()
}

// serveAssociation runs the server side of one association on shim: it
// echoes every message of every stream until the peer shuts the
// association down, or everything has been silent for serverIdle.
func serveAssociation(shim *sctpShim, name string) {
	timer := time.AfterFunc(sctpHandshakeTimeout, func() { _ = shim.Close() })
	assoc, err := sctp.ServerWithOptions(serverOptions(sctpOptions(shim, name))...)
	timer.Stop()
	if err != nil {
		return
	}
	defer assoc.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := assoc.AcceptStream()
		if err != nil {
			return // EOF: the association ended
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				_ = st.SetReadDeadline(time.Now().Add(serverIdle))
				n, err := st.Read(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					_ = assoc.Close()
					return
				}
				if err != nil {
					return
				}
				if _, err := st.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
	}
}

// filterSCTPInit attaches a socket filter to an SCTP raw socket that keeps
// only packets whose first chunk is an INIT. An IPv4 raw socket's filter
// sees the IPv4 header (of variable length), an IPv6 one the SCTP packet.
func filterSCTPInit(c *net.IPConn, is4 bool) error {
	var prog []bpf.Instruction
	if is4 {
		prog = []bpf.Instruction{
			bpf.LoadMemShift{Off: 0}, // X = IPv4 header length
			bpf.LoadIndirect{Off: sctpHeaderLen, Size: 1},
		}
	} else {
		prog = []bpf.Instruction{bpf.LoadAbsolute{Off: sctpHeaderLen, Size: 1}}
	}
	prog = append(prog,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: sctpChunkInit, SkipFalse: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	)
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return fmt.Errorf("assemble INIT filter: %w", err)
	}
	if is4 {
		err = ipv4.NewPacketConn(c).SetBPF(raw)
	} else {
		err = ipv6.NewPacketConn(c).SetBPF(raw)
	}
	if err != nil {
		return fmt.Errorf("attach INIT filter: %w", err)
	}
	return nil
}

// sctpReadBuffer is the receive buffer of an association's raw socket.
const sctpReadBuffer = 4 << 20

// growReadBuffer sets a raw socket's receive buffer to sctpReadBuffer,
// beyond net.core.rmem_max (SO_RCVBUFFORCE, root), so that bursts of a
// long transfer are not dropped.
func growReadBuffer(c *net.IPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("grow receive buffer: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sctpReadBuffer)
	}); err != nil {
		return fmt.Errorf("grow receive buffer: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("grow receive buffer: %w", serr)
	}
	return nil
}
