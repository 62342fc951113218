package node

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/xsk"
)

// Defaults used by [Config.WithDefaults].
const (
	DefaultGatewayLink    = "pgw0"
	DefaultKernelLink     = "pgk0"
	DefaultStateDir       = "/run/podgate"
	DefaultResyncInterval = 30 * time.Second
	// DefaultDebounce is how long the Node waits for netlink events to go
	// quiet before it reconciles.
	DefaultDebounce = 50 * time.Millisecond
)

// DefaultPodSocket sizes the socket of a pod port: it only transmits
// (what the engine sends to the pod), so 256 frames of 2 KiB, 512 KiB of
// UMEM, and one frame posted for receiving (which never happens: no XDP
// program redirects to it).
func DefaultPodSocket() xsk.Config {
	return xsk.Config{NumFrames: 256, RingSize: 256, FillFrames: 1}
}

// maxIfNameLen is the longest interface name the kernel accepts.
const maxIfNameLen = 15

// Config configures a [Node].
type Config struct {
	// Engine is the fastpath the Node adds its ports to. It must be running
	// ([fastpath.Engine.Run]) for as long as [Node.Run] runs, including the
	// graceful restore after Run's context is done: cancel the engine only
	// after Run returned.
	Engine *fastpath.Engine
	// GatewayLink is the gateway end of the kernel leg, which carries the
	// XDP program and the kernel port's socket (default "pgw0").
	GatewayLink string
	// KernelLink is the kernel end of the kernel leg; routes to local pods
	// point at it (default "pgk0").
	KernelLink string
	// StateDir is where the Node records what it changed, for recovery
	// after a crash (default "/run/podgate"). It must survive a restart of
	// the agent (a hostPath in a DaemonSet) and not a reboot.
	StateDir string
	// Lock is the caller's lock on StateDir ([AcquireLock]), held for as
	// long as it may act on the node (the agent takes it before anything
	// else). If nil, [Node.Run] takes it itself for its duration and fails
	// with [ErrLocked], touching nothing, if another process holds it.
	Lock *Lock
	// Offload is the kernel half of the data path (required): the Node
	// attaches its pod_ingress program to every pod veth, which forwards
	// the flows the engine offloaded and punts every other frame of the
	// pod to the kernel leg, and its kernel_egress program to the kernel
	// end of the kernel leg. The engine receives everything on the kernel
	// port; pod ports only transmit.
	Offload *offload.Offload
	// AttachMode is the XDP attach mode of the kernel port's program
	// (default [xsk.Native], which veth needs to keep frames within a UMEM
	// frame; see package xsk).
	AttachMode xsk.AttachMode
	// Socket sizes the transmit-only AF_XDP socket of each pod port;
	// Ifindex and QueueID are filled per port. The zero value means
	// [DefaultPodSocket]; zero fields of another value take the xsk
	// defaults.
	Socket xsk.Config
	// KernelSocket sizes the kernel port's socket, which receives every
	// frame the engine handles; zero fields take the xsk defaults.
	KernelSocket xsk.Config
	// InterfacePrefix, if set, limits pod ports to veths whose name starts
	// with it (for example "cali", "veth", "azv").
	InterfacePrefix string
	// PublishNodeAddrs makes the Node call [fastpath.Engine.SetNodeAddrs]
	// with [Node.NodeAddrs] whenever they change (standalone mode). Leave
	// it off when the caller sets the node addresses itself.
	PublishNodeAddrs bool
	// Logger receives progress and errors (default slog.Default()).
	Logger *slog.Logger
	// ResyncInterval is the period of the full reconcile that runs besides
	// the netlink-triggered ones (default 30s).
	ResyncInterval time.Duration
	// Debounce is how long netlink events must go quiet before a reconcile
	// (default 50ms); a burst never delays it by more than 10 times this.
	Debounce time.Duration
}

// WithDefaults returns c with zero fields replaced by their defaults.
func (c Config) WithDefaults() Config {
	if c.GatewayLink == "" {
		c.GatewayLink = DefaultGatewayLink
	}
	if c.KernelLink == "" {
		c.KernelLink = DefaultKernelLink
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.AttachMode == 0 {
		c.AttachMode = xsk.Native
	}
	if c.Socket == (xsk.Config{}) {
		c.Socket = DefaultPodSocket()
	}
	c.Socket = c.Socket.WithDefaults()
	c.KernelSocket = c.KernelSocket.WithDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ResyncInterval <= 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
	if c.Debounce <= 0 {
		c.Debounce = DefaultDebounce
	}
	return c
}

// Validate reports every problem with c, joined. Call it on the result of
// WithDefaults.
func (c Config) Validate() error {
	var errs []error
	if c.Engine == nil {
		errs = append(errs, errors.New("engine: required"))
	}
	if c.Offload == nil {
		errs = append(errs, errors.New("offload: required"))
	}
	for _, l := range []struct{ field, name string }{{"gateway link", c.GatewayLink}, {"kernel link", c.KernelLink}} {
		if l.name == "" || len(l.name) > maxIfNameLen {
			errs = append(errs, fmt.Errorf("%s %q: must be 1..%d bytes", l.field, l.name, maxIfNameLen))
		}
	}
	if c.Lock != nil && filepath.Clean(c.Lock.Dir()) != filepath.Clean(c.StateDir) {
		errs = append(errs, fmt.Errorf("lock %s: not for state dir %s", c.Lock.Path(), c.StateDir))
	}
	if c.GatewayLink == c.KernelLink {
		errs = append(errs, fmt.Errorf("gateway and kernel link: both %q", c.GatewayLink))
	}
	if c.AttachMode != xsk.Native && c.AttachMode != xsk.Generic {
		errs = append(errs, fmt.Errorf("attach mode %v: %w", c.AttachMode, xsk.ErrInvalidMode))
	}
	// Ifindex is filled per port; validate the rest with a placeholder.
	for _, s := range []struct {
		field string
		cfg   xsk.Config
	}{{"socket", c.Socket}, {"kernel socket", c.KernelSocket}} {
		s.cfg.Ifindex, s.cfg.QueueID = 1, 0
		if err := s.cfg.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.field, err))
		}
	}
	return errors.Join(errs...)
}
