package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/xsk"
)

// ErrRunning is returned by [Node.Run] when it is called a second time.
var ErrRunning = errors.New("node already ran")

// restoreTimeout bounds the graceful restore after Run's context is done.
const restoreTimeout = 30 * time.Second

// Node owns the node side of the agent: the kernel leg, one fastpath port
// per local pod veth, the routes to local pods, and the state file that
// records them. Create it with [New] and call [Node.Run] once.
//
// Ready, Ports and NodeAddrs may be called from any goroutine at any time.
type Node struct {
	cfg Config
	log *slog.Logger

	started atomic.Bool
	ready   atomic.Bool

	// mu guards ports, kernel and nodeAddrs for the readers (Ports,
	// NodeAddrs). Only the Run goroutine writes them, under the write lock,
	// and closes sockets only under it, so a reader never reads the
	// statistics of a closed socket.
	mu        sync.RWMutex
	ports     map[int]*podPort // by ifindex
	kernel    *kernelPort
	nodeAddrs []netip.Addr

	// Owned by the Run goroutine.
	h *netlink.Handle
	// assign is which veth each pod address whose route is on the kernel
	// leg belongs to: the content of the state file.
	assign    map[netip.Addr]assignment
	published []netip.Addr // node addresses last given to the engine
	// unexplained are addresses routed via the kernel leg that no record
	// (memory or state file) explains: left alone, logged once.
	unexplained map[netip.Addr]bool
	swept       bool              // stale programs on non-port veths removed
	failures    map[string]string // port name → last setup error, logged once
}

// assignment says that a pod address belongs to a veth (name and ifindex)
// and what its route there looked like.
type assignment struct {
	name    string
	ifindex int
	route   savedRoute
}

// podPort is the port of one pod veth.
type podPort struct {
	name    string
	ifindex int
	mac     net.HardwareAddr
	peerMAC net.HardwareAddr // the pod's eth0, nil if unknown
	mtu     int
	sock    *xsk.Socket  // transmit-only
	ips     []netip.Addr // sorted; the engine's PodIPs while added
	added   bool         // in the engine
}

// kernelPort is the gateway end of the kernel leg.
type kernelPort struct {
	gwIndex, kIndex int
	gwMAC, kMAC     net.HardwareAddr
	mtu             int
	xskPort
	added bool
	// tcAttached: kernel_egress runs on the kernel end, which is the punt
	// interface.
	tcAttached bool
}

// PortInfo describes a port for metrics and status.
type PortInfo struct {
	// Name and Ifindex identify the interface the port is bound to.
	Name    string
	Ifindex int
	// Kind is fastpath.PodPort or fastpath.KernelPort.
	Kind fastpath.PortKind
	// PodIPs are the pod's addresses (pod ports).
	PodIPs []netip.Addr
	// MAC is the interface's MAC; PeerMAC the MAC of the other end (the
	// pod's eth0; nil if it could not be read, then the engine learns it).
	MAC, PeerMAC net.HardwareAddr
	// MTU is the interface's MTU when the port was set up.
	MTU int
	// Stats are the socket's counters (zero if they could not be read).
	Stats xsk.Stats
}

// New returns a Node for cfg (with defaults filled in). It makes no system
// call; [Node.Run] does the work.
func New(cfg Config) (*Node, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new node: %w", err)
	}
	return &Node{
		cfg:      cfg,
		log:      cfg.Logger,
		ports:    make(map[int]*podPort),
		assign:   make(map[netip.Addr]assignment),
		failures: make(map[string]string),

		unexplained: make(map[netip.Addr]bool),
	}, nil
}

// Ready reports whether the kernel leg is up and every pod veth found so
// far was reconciled at least once (ports that failed are retried and
// logged). It turns false when the graceful restore starts.
func (n *Node) Ready() bool { return n.ready.Load() }

// Ports returns the current ports, pod ports sorted by name, the kernel
// port last.
func (n *Node) Ports() []PortInfo {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make([]PortInfo, 0, len(n.ports)+1)
	for _, p := range n.ports {
		if !p.added {
			continue
		}
		pi := PortInfo{
			Name: p.name, Ifindex: p.ifindex, Kind: fastpath.PodPort,
			PodIPs: slices.Clone(p.ips), MAC: slices.Clone(p.mac), PeerMAC: slices.Clone(p.peerMAC), MTU: p.mtu,
		}
		pi.Stats, _ = p.sock.Stats()
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b PortInfo) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	if k := n.kernel; k != nil && k.added {
		pi := PortInfo{
			Name: n.cfg.GatewayLink, Ifindex: k.gwIndex, Kind: fastpath.KernelPort,
			MAC: slices.Clone(k.gwMAC), PeerMAC: slices.Clone(k.kMAC), MTU: k.mtu,
		}
		pi.Stats, _ = k.sock.Stats()
		out = append(out, pi)
	}
	return out
}

// NodeAddrs returns the node's own global unicast addresses (private ones
// included), leaving out those on the kernel leg and on pod veths, as of
// the last reconcile.
func (n *Node) NodeAddrs() []netip.Addr {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return slices.Clone(n.nodeAddrs)
}

// Run sets up the kernel leg, reconciles the pod ports and then follows
// netlink events (plus a periodic full reconcile) until ctx is done; then
// it restores the node (routes back on the veths, XDP programs detached,
// kernel leg deleted, state file removed) and returns. A non-nil error
// after ctx is done means the restore was incomplete; the state file is
// then kept for the next start.
//
// Before anything else Run takes the lock on the state directory, unless
// [Config.Lock] holds it already: if another process (another agent)
// holds it, Run returns an error wrapping [ErrLocked] and touches nothing.
//
// Run acts in the network namespace of the calling OS thread and keeps the
// calling goroutine locked to that thread until it returns. The agent runs
// it in the host's namespace (hostNetwork); a test calls it inside
// [netns.Namespace.Do] of a node namespace. The engine must keep running
// until Run returns.
//
// [netns.Namespace.Do]: https://pkg.go.dev/github.com/podgate/podgate/internal/netns#Namespace.Do
func (n *Node) Run(ctx context.Context) error {
	if !n.started.CompareAndSwap(false, true) {
		return fmt.Errorf("run node: %w", ErrRunning)
	}
	// One agent per node: nothing is touched without the lock.
	if n.cfg.Lock == nil {
		lock, err := AcquireLock(n.cfg.StateDir)
		if err != nil {
			return fmt.Errorf("run node: %w", err)
		}
		defer lock.Release()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := n.cfg.Offload.Replaced(); err != nil {
		// An upgrade that changed the maps' layouts, or a new flow table
		// size: the agent starts afresh rather than not at all.
		n.log.Warn("the offload's pinned maps did not fit this agent and were replaced", "err", err)
	}

	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("open netlink handle: %w", err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("set netlink timeout: %w", err)
	}
	n.h = h
	if err := os.MkdirAll(n.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	st, err := readState(n.cfg.StateDir)
	if err != nil {
		// Without the file the routes on the kernel leg cannot be given
		// back to their veths; say so and carry on, enforcing what can be.
		n.log.Error("state file unusable; routes of a previous run on the kernel leg stay there, unexplained", "err", err)
		st = state{}
	}
	for _, p := range st.Ports {
		for _, r := range p.Routes {
			if r.Dst.IsValid() {
				n.assign[r.Dst] = assignment{name: p.Name, ifindex: p.Ifindex, route: r}
			}
		}
	}
	if len(st.Ports) > 0 {
		n.log.Info("recovering from state file", "ports", len(st.Ports), "addresses", len(n.assign))
	}

	err = n.follow(ctx)
	n.ready.Store(false)
	rerr := n.restore(ctx)
	return errors.Join(err, rerr)
}

// follow reconciles on netlink events, periodically, and after failures
// with backoff, until ctx is done. It returns an error only if it cannot
// subscribe at all.
func (n *Node) follow(ctx context.Context) error {
	kick := make(chan struct{}, 1)
	lost := make(chan struct{}, 1)
	sub, err := n.subscribe(kick, lost)
	if err != nil {
		return err
	}
	defer func() { sub() }()

	resync := time.NewTicker(n.cfg.ResyncInterval)
	defer resync.Stop()
	debounce := time.NewTimer(0) // the first reconcile runs at once
	var (
		pending    = true
		firstEvent time.Time
		backoff    time.Duration
		retry      <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			debounce.Stop()
			return nil
		case <-kick:
			if !pending {
				pending, firstEvent = true, time.Now()
			}
			// Trailing debounce, but never more than 10 periods after the
			// first event of a burst.
			wait := n.cfg.Debounce
			if rest := 10*n.cfg.Debounce - time.Since(firstEvent); rest < wait {
				wait = max(rest, 0)
			}
			debounce.Reset(wait)
			continue
		case <-lost:
			n.log.Warn("netlink subscription lost; subscribing again")
			sub()
			for {
				sub, err = n.subscribe(kick, lost)
				if err == nil {
					break
				}
				n.log.Error("subscribe to netlink", "err", err)
				select {
				case <-ctx.Done():
					sub = func() {}
					return nil
				case <-time.After(time.Second):
				}
			}
		case <-resync.C:
		case <-retry:
		case <-debounce.C:
		}
		pending, retry = false, nil
		again, err := n.reconcile(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil && !again {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, 250*time.Millisecond), n.cfg.ResyncInterval)
		if err != nil {
			n.log.Error("reconcile node", "err", err, "retry", backoff)
		}
		retry = time.After(backoff)
	}
}

// subscribe opens link, route and address subscriptions (in the calling
// thread's namespace) whose events kick a reconcile; if one of them ends
// it signals lost. The returned function ends all of them.
func (n *Node) subscribe(kick, lost chan struct{}) (func(), error) {
	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	signal := func(c chan struct{}) {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	onErr := func(err error) {
		select {
		case <-done:
		default:
			n.log.Warn("netlink subscription", "err", err)
		}
	}
	drain := func(recv func() bool) {
		for recv() {
			signal(kick)
		}
		select {
		case <-done:
		default:
			signal(lost)
		}
	}
	links := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		stop()
		return nil, fmt.Errorf("subscribe to links: %w", err)
	}
	go drain(func() bool { _, ok := <-links; return ok })
	routes := make(chan netlink.RouteUpdate, 256)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		stop()
		return nil, fmt.Errorf("subscribe to routes: %w", err)
	}
	go drain(func() bool { _, ok := <-routes; return ok })
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		stop()
		return nil, fmt.Errorf("subscribe to addresses: %w", err)
	}
	go drain(func() bool { _, ok := <-addrs; return ok })
	return stop, nil
}

// restoreContext returns a context for engine commands during the
// restore, when Run's context is already done.
func restoreContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), restoreTimeout)
}

// engineErr treats a stopped engine as success for removals: its ports are
// gone with it.
func engineErr(err error) error {
	if errors.Is(err, fastpath.ErrStopped) {
		return nil
	}
	return err
}
