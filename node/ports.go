package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/xsk"
)

// openPort sets up the port of a pod veth: a transmit-only AF_XDP socket
// on its queue 0 (what the engine sends to the pod), then the offload's
// pod_ingress program on its TCX ingress, from which on every frame of the
// pod goes either on an offloaded flow or to the engine (punted to the
// kernel leg). A podgate XDP program left by an earlier version is
// removed first. On failure nothing of it is left.
func (n *Node) openPort(l netlink.Link) (*podPort, error) {
	a := l.Attrs()
	if _, err := xsk.RemoveStale(a.Index); err != nil && !errors.Is(err, xsk.ErrAttached) {
		return nil, fmt.Errorf("set up port %s: %w", a.Name, err)
	}
	cfg := n.cfg.Socket
	cfg.Ifindex, cfg.QueueID = a.Index, 0
	sock, err := xsk.Open(cfg)
	if err != nil {
		return nil, fmt.Errorf("set up port %s: %w", a.Name, err)
	}
	if err := n.cfg.Offload.AttachPod(a.Index); err != nil {
		_ = sock.Close()
		return nil, fmt.Errorf("set up port %s: %w", a.Name, err)
	}
	p := &podPort{
		name: a.Name, ifindex: a.Index, mac: slices.Clone(a.HardwareAddr), mtu: a.MTU,
		peerMAC: n.peerMAC(l), sock: sock,
	}
	n.mu.Lock()
	n.ports[a.Index] = p
	n.mu.Unlock()
	return p, nil
}

// xskPort is the socket and XDP program of the kernel port.
type xskPort struct {
	sock *xsk.Socket
	prog *xsk.Program
}

// gatewayXDPPin is the name of the kernel port's XDP link in the offload's
// pin directory.
const gatewayXDPPin = "gateway_xdp"

// openXSK opens a socket on the interface, loads a program, registers the
// socket for queue 0 and attaches the program through a BPF link, pinned
// in the offload's pin directory so that it outlives a crash (fail
// closed). A link a crashed run pinned is updated in place to the new
// program: the interface is never without one, so a punted frame never
// reaches the kernel unchecked. A program an older podgate version
// attached with netlink cannot be updated: it is removed, then the link
// attached. On failure nothing of it is left.
func (n *Node) openXSK(ifindex int, cfg xsk.Config) (xskPort, error) {
	cfg.Ifindex, cfg.QueueID = ifindex, 0
	sock, err := xsk.Open(cfg)
	if err != nil {
		return xskPort{}, err
	}
	prog, err := xsk.NewProgram(xsk.ProgramConfig{})
	if err != nil {
		_ = sock.Close()
		return xskPort{}, err
	}
	fail := func(err error) (xskPort, error) {
		_ = prog.Close()
		_ = sock.Close()
		return xskPort{}, err
	}
	if err := prog.Register(0, sock.FD()); err != nil {
		return fail(err)
	}
	attach := func() (bool, error) {
		if dir := n.cfg.Offload.PinDir(); dir != "" {
			return prog.AttachPinned(ifindex, n.cfg.AttachMode, filepath.Join(dir, gatewayXDPPin))
		}
		return false, prog.Attach(ifindex, n.cfg.AttachMode)
	}
	updated, err := attach()
	if errors.Is(err, xsk.ErrAttached) {
		removed, serr := xsk.RemoveStale(ifindex)
		if serr != nil {
			return fail(errors.Join(err, serr))
		}
		if removed > 0 {
			n.log.Info("removed an older podgate version's xdp program", "ifindex", ifindex)
		}
		updated, err = attach()
	}
	if err != nil {
		return fail(err)
	}
	if updated {
		n.log.Info("took over the xdp link of a previous run", "ifindex", ifindex)
	}
	return xskPort{sock: sock, prog: prog}, nil
}

// spec is the engine's description of the pod port with the given
// addresses. Without the pod's MAC the engine learns it.
func (p *podPort) spec(ips []netip.Addr) fastpath.PortSpec {
	return fastpath.PortSpec{
		Name: p.name, Kind: fastpath.PodPort, Port: p.sock,
		MAC: mac6(p.mac), PeerMAC: mac6(p.peerMAC), PodIPs: slices.Clone(ips),
		Ifindex: p.ifindex, TxOnly: true,
	}
}

func mac6(m net.HardwareAddr) [6]byte {
	var b [6]byte
	copy(b[:], m)
	return b
}

func (n *Node) setAdded(p *podPort, added bool, ips []netip.Addr) {
	n.mu.Lock()
	p.added, p.ips = added, slices.Clone(ips)
	n.mu.Unlock()
}

// closePort detaches and closes a port that is not in the engine.
func (n *Node) closePort(p *podPort) error {
	err := n.detachPod(p)
	n.mu.Lock()
	if cerr := p.sock.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close socket of %s: %w", p.name, cerr))
	}
	p.added = false
	delete(n.ports, p.ifindex)
	n.mu.Unlock()
	return err
}

// releasePort takes a port out: pod_ingress detached first (the pod's
// frames go to the kernel again), then out of the engine (which takes the
// pod's flows out of the kernel's table), then the socket closed. Routes
// are not touched.
func (n *Node) releasePort(ctx context.Context, p *podPort) error {
	err := n.detachPod(p)
	if p.added {
		if rerr := engineErr(n.cfg.Engine.RemovePort(ctx, p.name)); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove port %s: %w", p.name, rerr))
		}
	}
	n.mu.Lock()
	if cerr := p.sock.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close socket of %s: %w", p.name, cerr))
	}
	p.added = false
	delete(n.ports, p.ifindex)
	n.mu.Unlock()
	if err == nil {
		n.log.Info("port removed", "port", p.name)
	}
	return err
}

// detachPod detaches pod_ingress from a pod port's veth; a veth that is
// gone took it with it.
func (n *Node) detachPod(p *podPort) error {
	if err := n.cfg.Offload.DetachPod(p.ifindex); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("detach pod_ingress from %s: %w", p.name, err)
	}
	return nil
}

// detach detaches and closes the kernel port's program, and removes its
// link's pin.
func (n *Node) detach(x xskPort, name string) error {
	if err := x.prog.Close(); err != nil {
		return fmt.Errorf("detach xdp from %s: %w", name, err)
	}
	return nil
}

// peerMAC returns the MAC of a veth's peer, the pod's eth0, or nil if it
// cannot be read. The peer usually lives in the pod's namespace: it is
// read from here with RTM_GETLINK and IFLA_TARGET_NETNSID (Linux 4.20+)
// instead of entering that namespace.
//
// The engine needs it: until it knows a pod's MAC it drops the frames to
// the pod (a frame to the broadcast address would not reach the pod's
// TCP, not being PACKET_HOST); a pod that is silent after an agent restart
// (its gateway neighbour entry still valid) would stay unreachable.
func (n *Node) peerMAC(l netlink.Link) net.HardwareAddr {
	a := l.Attrs()
	if a.ParentIndex <= 0 {
		return nil
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(a.ParentIndex)
	req.AddData(msg)
	if a.NetNsID >= 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(a.NetNsID))))
	}
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil || len(msgs) == 0 {
		n.log.Debug("read veth peer", "link", a.Name, "err", err)
		return nil
	}
	peer, err := netlink.LinkDeserialize(nil, msgs[0])
	if err != nil || len(peer.Attrs().HardwareAddr) != 6 {
		return nil
	}
	return peer.Attrs().HardwareAddr
}
