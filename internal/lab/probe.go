package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/pion/sctp"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/podgate/podgate/internal/netns"
	"github.com/podgate/podgate/policy/table"
)

// ErrUnknownEndpoint is returned for a probe source or destination that is
// no endpoint of the lab.
var ErrUnknownEndpoint = errors.New("no such lab endpoint")

// udpRetry is how often a UDP or ICMP probe resends while it waits.
const udpRetry = 200 * time.Millisecond

// pair resolves a probe's source and destination. Each may be an endpoint
// name ("namespace/pod", an OutsideHost's name, "node", "Node NAME") or an
// address of an endpoint, which also chooses the IP family. Between two names, the
// family is the source's primary one if the destination has it, else the
// destination's primary one if the source has it.
func (l *Lab) pair(from, to string) (src, dst *Endpoint, sip, dip netip.Addr, err error) {
	side := func(s string) (*Endpoint, netip.Addr, error) {
		ep, ok := l.Endpoint(s)
		if !ok {
			return nil, netip.Addr{}, fmt.Errorf("%w: %q", ErrUnknownEndpoint, s)
		}
		if a, err := netip.ParseAddr(s); err == nil {
			return ep, a.Unmap(), nil
		}
		return ep, netip.Addr{}, nil
	}
	if src, sip, err = side(from); err != nil {
		return nil, nil, netip.Addr{}, netip.Addr{}, err
	}
	if src.Kind == KindService {
		return nil, nil, netip.Addr{}, netip.Addr{}, fmt.Errorf("probe %s -> %s: a Service is no probe source", from, to)
	}
	if dst, dip, err = side(to); err != nil {
		return nil, nil, netip.Addr{}, netip.Addr{}, err
	}
	pick := func(ep *Endpoint, is4 bool) netip.Addr {
		for _, a := range ep.IPs {
			if a.Is4() == is4 {
				return a
			}
		}
		return netip.Addr{}
	}
	switch {
	case sip.IsValid() && dip.IsValid():
	case sip.IsValid():
		dip = pick(dst, sip.Is4())
	case dip.IsValid():
		sip = pick(src, dip.Is4())
	default:
		for _, fam := range [][]netip.Addr{src.IPs, dst.IPs} {
			if len(fam) == 0 {
				continue
			}
			if s, d := pick(src, fam[0].Is4()), pick(dst, fam[0].Is4()); s.IsValid() && d.IsValid() {
				sip, dip = s, d
				break
			}
		}
	}
	if !sip.IsValid() || !dip.IsValid() || sip.Is4() != dip.Is4() {
		return nil, nil, netip.Addr{}, netip.Addr{}, fmt.Errorf("probe %s -> %s: no common IP family", from, to)
	}
	return src, dst, sip, dip, nil
}

// Probe makes one real connection from one endpoint to another (names or
// addresses, see [Lab.ProbeResult]) and reports whether it worked. An
// error means the probe could not be made at all, not that the connection
// failed.
func (l *Lab) Probe(ctx context.Context, from, to string, p table.PortSpec) (bool, error) {
	r, err := l.ProbeResult(ctx, from, to, p)
	return r.Observed, err
}

// ProbeResult makes one real connection from one endpoint to another and
// returns what happened, with the expectation of [Lab.Expectation]. from
// and to are endpoint names ("namespace/pod", an OutsideHost's name,
// "node", "Node NAME") or addresses of endpoints (which choose the IP
// family); to may also be a Service's ClusterIP or "Service
// namespace/name" (see [Lab.Services]): the connection goes to the
// ClusterIP and Service port, and the source's node DNATs it to a backend,
// whose echo server answers. Result.DeniedBy is not filled in: see
// [Lab.Attribute].
//
// The probe creates its socket in the source's namespace, bound to the
// source address, and gives up after Spec.ProbeTimeout:
//
//   - TCP: connect, send a token, read it back from the echo server.
//   - UDP: send a token every 200ms until the echo comes back.
//   - SCTP: establish an association (user-space SCTP over a raw socket,
//     see the shim in sctp.go), send a token on stream 0, read it back,
//     shut the association down.
//   - ICMP (ICMPv6 between IPv6 addresses): echo request every 200ms until
//     the kernel of the destination answers.
//
// The destination's echo server for the port is started if it is not
// running yet.
func (l *Lab) ProbeResult(ctx context.Context, from, to string, p table.PortSpec) (Result, error) {
	return l.ProbeResultWithin(ctx, from, to, p, l.spec.ProbeTimeout)
}

// ProbeResultWithin is [Lab.ProbeResult] with its own timeout instead of
// Spec.ProbeTimeout.
func (l *Lab) ProbeResultWithin(ctx context.Context, from, to string, p table.PortSpec, timeout time.Duration) (Result, error) {
	src, dst, sip, dip, err := l.pair(from, to)
	if err != nil {
		return Result{}, err
	}
	r := Result{
		From: src.Name, To: dst.Name, FromKind: src.Kind, ToKind: dst.Kind, FromNode: src.Node, ToNode: dst.Node,
		Src: sip, Dst: dip, Port: p,
	}
	r.Expected = l.Expectation()(&r)
	if err := l.ensureServer(dst, dip, p); err != nil {
		return r, fmt.Errorf("probe %s -> %s %s: %w", src.Name, dst.Name, p, err)
	}
	start := time.Now()
	r.Started = start
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	token := probeToken(src.Name, dst.Name, p)
	switch p.Protocol {
	case table.TCP, table.UDP, table.SCTP:
		err = l.probeEcho(pctx, src.NS, sip, dip, p, token)
	case table.ICMP, table.ICMPv6:
		err = probeICMP(pctx, src.NS, sip, dip, token)
	default:
		return r, fmt.Errorf("probe %s: unsupported protocol", p)
	}
	r.Elapsed = time.Since(start)
	if ctx.Err() != nil {
		return r, fmt.Errorf("probe %s -> %s %s: %w", src.Name, dst.Name, p, ctx.Err())
	}
	r.Observed = err == nil
	if err != nil {
		r.Detail = failure(err)
	}
	return r, nil
}

// ensureServer starts the echo server of a probe to dst at dip: the
// destination's own, or for a Service every backend's (of dip's family)
// at its target port.
func (l *Lab) ensureServer(dst *Endpoint, dip netip.Addr, p table.PortSpec) error {
	if dst.Kind != KindService {
		return l.servers.ensure(dst.NS, dip, p)
	}
	sp := dst.Service.port(p.Protocol, p.Port)
	if sp == nil {
		return fmt.Errorf("%s has no port %s", dst.Service, p)
	}
	bs := sp.backends(dip.Is4())
	if len(bs) == 0 {
		return fmt.Errorf("%s port %s has no ready backend of the family of %s in the lab", dst.Service, p, dip)
	}
	for _, b := range bs {
		if err := l.servers.ensure(b.Endpoint.NS, b.Addr, table.PortSpec{Port: b.Port, Protocol: p.Protocol}); err != nil {
			return err
		}
	}
	return nil
}

func probeToken(from, to string, p table.PortSpec) []byte {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	return fmt.Appendf(nil, "podgate-lab %s -> %s %s %x", from, to, p, nonce)
}

// probeEcho dials the echo server and checks one round trip of token.
func (l *Lab) probeEcho(ctx context.Context, ns *netns.Namespace, src, dst netip.Addr, p table.PortSpec, token []byte) error {
	if p.Protocol == table.UDP {
		return probeUDP(ctx, ns, src, dst, p.Port, token)
	}
	c, err := l.dial(ctx, ns, src, dst, p)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if _, err := c.Write(token); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	got := make([]byte, len(token))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	if !bytes.Equal(got, token) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// probeUDP sends token every udpRetry until it is echoed.
func probeUDP(ctx context.Context, ns *netns.Namespace, src, dst netip.Addr, port uint16, token []byte) error {
	c, err := dialUDP(ns, src, dst, port)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, len(token)+1)
	for {
		if _, err := c.Write(token); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		next := time.Now().Add(udpRetry)
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			_ = c.SetReadDeadline(earliest(ctx, next))
			n, err := c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // resend
			}
			if err != nil {
				return fmt.Errorf("receive: %w", err)
			}
			if bytes.Equal(buf[:n], token) {
				return nil
			}
		}
	}
}

// earliest returns t or ctx's deadline, whichever comes first.
func earliest(ctx context.Context, t time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok && d.Before(t) {
		return d
	}
	return t
}

func dialUDP(ns *netns.Namespace, src, dst netip.Addr, port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp",
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, port)))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial udp: %w", err)
	}
	return c, nil
}

// Dial connects from one endpoint to the echo server of another (names or
// addresses as for [Lab.ProbeResult]) and returns the connection, for
// transfers longer than a probe: everything written comes back. The
// connection is made within Spec.ProbeTimeout (and ctx); afterwards only
// the caller's deadlines apply.
//
// TCP gives a *net.TCPConn and UDP a connected *net.UDPConn (one datagram
// per Write, echoed whole, up to 65,507 bytes, fragmented at the MTU). SCTP
// gives stream 0 of an association: a byte stream whose writes are sent as
// messages of at most 16 KiB; Close shuts the association down. The
// connection lives in the source's namespace and may be used from any
// goroutine.
func (l *Lab) Dial(ctx context.Context, from, to string, p table.PortSpec) (net.Conn, error) {
	src, dst, sip, dip, err := l.pair(from, to)
	if err != nil {
		return nil, err
	}
	if err := l.ensureServer(dst, dip, p); err != nil {
		return nil, fmt.Errorf("dial %s -> %s %s: %w", src.Name, dst.Name, p, err)
	}
	dctx, cancel := context.WithTimeout(ctx, l.spec.ProbeTimeout)
	defer cancel()
	var c net.Conn
	if p.Protocol == table.UDP {
		c, err = dialUDP(src.NS, sip, dip, p.Port)
	} else {
		c, err = l.dial(dctx, src.NS, sip, dip, p)
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s -> %s %s: %w", src.Name, dst.Name, p, err)
	}
	return c, nil
}

// dial connects a stream (TCP or SCTP) from src in ns to dst.
func (l *Lab) dial(ctx context.Context, ns *netns.Namespace, src, dst netip.Addr, p table.PortSpec) (net.Conn, error) {
	switch p.Protocol {
	case table.TCP:
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
			d.SetMultipathTCP(false)
			var err error
			c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(dst, p.Port).String())
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial tcp: %w", err)
		}
		return c, nil
	case table.SCTP:
		return l.dialSCTP(ctx, ns, src, dst, p.Port)
	}
	return nil, fmt.Errorf("dial %s: not a stream protocol", p)
}

// sctpPortBase and sctpPortSpan are the range of the lab's SCTP source
// ports (the kernel has no SCTP, so the lab picks them).
const (
	sctpPortBase = 32768
	sctpPortSpan = 28232
)

// sctpSourcePort returns the next SCTP source port, never equal to dport.
func (l *Lab) sctpSourcePort(dport uint16) uint16 {
	for {
		p := uint16(sctpPortBase + l.nextPort.Add(1)%sctpPortSpan)
		if p != dport {
			return p
		}
	}
}

// dialSCTP establishes an SCTP association from src in ns to dst:port and
// returns its stream 0 as a byte stream.
func (l *Lab) dialSCTP(ctx context.Context, ns *netns.Namespace, src, dst netip.Addr, port uint16) (net.Conn, error) {
	var raw *net.IPConn
	peer := &net.IPAddr{IP: dst.AsSlice()}
	err := ns.Do(func() error {
		var err error
		raw, err = net.DialIP(sctpNetwork(dst), &net.IPAddr{IP: src.AsSlice()}, peer)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open raw sctp socket: %w", err)
	}
	if err := growReadBuffer(raw); err != nil {
		_ = raw.Close()
		return nil, err
	}
	lport := l.sctpSourcePort(port)
	shim := newSCTPShim(raw, peer, lport, port, nil)
	name := fmt.Sprintf("client %s:%d->%s:%d", src, lport, dst, port)
	assoc, err := sctp.ClientContext(ctx, clientOptions(sctpOptions(shim, name))...)
	if err != nil {
		_ = shim.Close()
		return nil, fmt.Errorf("establish sctp association: %w", err)
	}
	st, err := assoc.OpenStream(0, sctp.PayloadTypeWebRTCBinary)
	if err != nil {
		_ = assoc.Close()
		return nil, fmt.Errorf("open sctp stream: %w", err)
	}
	return &sctpStream{assoc: assoc, stream: st, shim: shim, buf: make([]byte, 65536)}, nil
}

// probeICMP sends echo requests from src in ns to dst every udpRetry until
// a matching echo reply comes back. It uses a raw ICMP (ICMPv6) socket
// bound to src; replies are matched by peer, identifier, sequence and
// data, since a raw socket sees every ICMP message to its address.
func probeICMP(ctx context.Context, ns *netns.Namespace, src, dst netip.Addr, token []byte) error {
	network, proto := "ip4:icmp", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, proto = "ip6:ipv6-icmp", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var pc *icmp.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = icmp.ListenPacket(network, src.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("open icmp socket: %w", err)
	}
	defer pc.Close()
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	peer := &net.IPAddr{IP: dst.AsSlice()}
	buf := make([]byte, 1500)
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq, Data: token}}
		b, err := msg.Marshal(nil) // the kernel computes the ICMPv6 checksum
		if err != nil {
			return fmt.Errorf("marshal echo request: %w", err)
		}
		if _, err := pc.WriteTo(b, peer); err != nil {
			return fmt.Errorf("send echo request: %w", err)
		}
		next := time.Now().Add(udpRetry)
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			_ = pc.SetReadDeadline(earliest(ctx, next))
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return fmt.Errorf("receive echo reply: %w", err)
			}
			if !sameIP(from, peer) {
				continue
			}
			m, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil || m.Type != replyType {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && bytes.Equal(e.Data, token) {
				return nil
			}
		}
	}
}

// failure names why a probe failed: timeout, refused, reset, unreachable,
// or the error itself.
func failure(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "not permitted"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed by peer"
	}
	return err.Error()
}
