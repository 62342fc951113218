package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	npaclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/offload"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/k8swatch"
	"github.com/podgate/podgate/node"
	"github.com/podgate/podgate/policy/table"
)

// agentConfig is the agent's configuration, filled from flags.
type agentConfig struct {
	NodeName        string
	Kubeconfig      string
	Manifests       []string
	MetricsAddr     string
	HealthAddr      string
	PprofAddr       string
	AllowNodeToPod  bool
	KeepEstablished bool
	ReversePickup   time.Duration
	CutReset        bool
	Offload         string
	BPFDir          string
	BusyPoll        time.Duration
	WorkerNice      int
	RingSize        int
	MaxConns        int
	MaxConnsClient  int
	ConntrackMax    int
	StateDir        string
	GatewayLink     string
	KernelLink      string
	InterfacePrefix string
	LogLevel        string
	ManifestLimits  manifestLimits
}

// validate reports every problem with the configuration, joined.
func (c *agentConfig) validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name: required (or set NODE_NAME)"))
	}
	if c.MaxConns < 4 {
		errs = append(errs, fmt.Errorf("--metrics-max-conns %d: must be at least 4", c.MaxConns))
	}
	if c.MaxConnsClient < 1 {
		errs = append(errs, fmt.Errorf("--metrics-max-conns-per-client %d: must be at least 1", c.MaxConnsClient))
	}
	if c.WorkerNice < -20 || c.WorkerNice > 19 {
		errs = append(errs, fmt.Errorf("--worker-nice %d: must be between -20 and 19", c.WorkerNice))
	}
	if c.BusyPoll < 0 {
		errs = append(errs, fmt.Errorf("--busy-poll %v: must not be negative", c.BusyPoll))
	}
	if c.RingSize != 0 && (c.RingSize < 64 || c.RingSize > 1<<16 || c.RingSize&(c.RingSize-1) != 0) {
		errs = append(errs, fmt.Errorf("--xsk-ring-size %d: must be a power of two in [64, 65536]", c.RingSize))
	}
	if c.Offload != "tc" && c.Offload != "none" {
		errs = append(errs, fmt.Errorf("--offload %q: want tc or none", c.Offload))
	}
	if c.BPFDir == "" {
		errs = append(errs, errors.New("--bpf-dir: required"))
	}
	if c.ConntrackMax < 1024 {
		errs = append(errs, fmt.Errorf("--conntrack-max %d: must be at least 1024", c.ConntrackMax))
	}
	if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
		errs = append(errs, fmt.Errorf("--metrics-addr %q: %w", c.MetricsAddr, err))
	}
	if _, _, err := net.SplitHostPort(c.HealthAddr); err != nil {
		errs = append(errs, fmt.Errorf("--health-addr %q: %w", c.HealthAddr, err))
	} else if c.HealthAddr == c.MetricsAddr {
		errs = append(errs, fmt.Errorf("--health-addr %q: must differ from --metrics-addr", c.HealthAddr))
	}
	if c.PprofAddr != "" {
		if _, _, err := net.SplitHostPort(c.PprofAddr); err != nil {
			errs = append(errs, fmt.Errorf("--pprof-addr %q: %w", c.PprofAddr, err))
		} else if c.PprofAddr == c.MetricsAddr || c.PprofAddr == c.HealthAddr {
			errs = append(errs, fmt.Errorf("--pprof-addr %q: must differ from --metrics-addr and --health-addr", c.PprofAddr))
		}
	}
	if len(c.Manifests) > 0 && c.Kubeconfig != "" {
		errs = append(errs, errors.New("--manifests and --kubeconfig: give one source, not both"))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

func newAgentCommand() *cobra.Command {
	cfg := agentConfig{}
	cmd := &cobra.Command{
		Use:   "agent --node-name NODE [--manifests PATH | --kubeconfig PATH]",
		Short: "Enforce NetworkPolicy for the pods of this node",
		Long: `Run the node agent: intercept the traffic of the node's pods with XDP and
AF_XDP, enforce the policies in the fastpath, serve /metrics and /flows
(and /healthz, /readyz) on --metrics-addr, and /healthz and /readyz for the
kubelet's probes on --health-addr (loopback: no client of the metrics
address can delay them). Only one agent runs per node: a second one with
the same --state-dir exits at once. The policy table comes from the Kubernetes
API (in-cluster config, or --kubeconfig) or, standalone, from manifest
files that are watched for changes (--manifests). On SIGTERM or SIGINT the
agent restores the node's routes and removes its XDP programs: pods keep
their connectivity, without enforcement.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.validate(); err != nil {
				return err
			}
			ctx, stop := signalContext(cmd)
			defer stop()
			return runAgent(ctx, cfg, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration)")
	f.StringArrayVar(&cfg.Manifests, "manifests", nil, "manifest file or directory to read policies from instead of the API (repeatable)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9402", "address for /metrics and /flows (and /healthz, /readyz)")
	f.StringVar(&cfg.HealthAddr, "health-addr", "127.0.0.1:9403", "address for /healthz and /readyz only, for the kubelet's probes (keep it on loopback)")
	f.StringVar(&cfg.PprofAddr, "pprof-addr", "", "address for Go's profiles under /debug/pprof/ (off when empty; keep it on loopback, e.g. 127.0.0.1:6060)")
	f.BoolVar(&cfg.AllowNodeToPod, "allow-node-to-pod", true, "let the node's own addresses reach its pods whatever their policies (kubelet probes)")
	f.BoolVar(&cfg.KeepEstablished, "keep-established", false, "keep connections that a new policy would deny (default: cut them)")
	f.DurationVar(&cfg.ReversePickup, "reverse-pickup", 2*time.Minute, "after a start, how long TCP connections that were open across a restart are picked up from a segment without SYN (judged from client to server, whichever end sent it); later such segments are dropped; 0 disables")
	f.StringVar(&cfg.Offload, "offload", "tc", "tc: established flows the fastpath allowed are forwarded by the kernel (TC programs and a BPF flow table the fastpath programs); none: every packet goes through the fastpath (for comparison)")
	f.StringVar(&cfg.BPFDir, "bpf-dir", "/sys/fs/bpf", "a bpffs (one is mounted if it is not) where the agent pins its TC programs and maps in podgate/, so that a crashed agent's node keeps failing closed")
	f.BoolVar(&cfg.CutReset, "cut-reset", true, "answer segments of TCP connections that a policy change cut with a reset, so applications fail at once instead of retransmitting (new connections that policy denies are always dropped silently)")
	f.IntVar(&cfg.WorkerNice, "worker-nice", 0, "nice value of the fastpath worker's thread (-20 to 19; below 0 needs CAP_SYS_NICE): on a busy node a lower value lets it preempt the node's other work sooner")
	f.DurationVar(&cfg.BusyPoll, "busy-poll", 0, "keep polling for this long after the last frame instead of sleeping (lower latency, a CPU kept busy while traffic flows)")
	f.IntVar(&cfg.RingSize, "xsk-ring-size", xsk.DefaultRingSize, "descriptors per AF_XDP ring and frames posted for receiving per port; each port's UMEM is twice this many 2 KiB frames (deeper rings absorb longer worker stalls at the cost of memory)")
	f.IntVar(&cfg.MaxConns, "metrics-max-conns", 1024, "connections the --metrics-addr server accepts at once")
	f.IntVar(&cfg.MaxConnsClient, "metrics-max-conns-per-client", 64, "connections the --metrics-addr server accepts at once from one client address (more are closed at once)")
	f.IntVar(&cfg.ConntrackMax, "conntrack-max", 262144, "maximum number of tracked flows")
	f.StringVar(&cfg.StateDir, "state-dir", "/run/podgate", "where the agent records what it changed, for recovery after a crash")
	f.StringVar(&cfg.GatewayLink, "gateway-link", "pgw0", "name of the gateway end of the kernel leg")
	f.StringVar(&cfg.KernelLink, "kernel-link", "pgk0", "name of the kernel end of the kernel leg")
	f.StringVar(&cfg.InterfacePrefix, "interface-prefix", "", "only veths whose name starts with this are pod interfaces (default: every veth with pod host routes)")
	f.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	cfg.ManifestLimits.addFlags(f)
	return cmd
}

func runAgent(ctx context.Context, cfg agentConfig, stderr io.Writer) error {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.LogLevel))
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl})).With("node", cfg.NodeName)

	// One agent per node: a second one stops here, before it touches any
	// program, route, file or port.
	lock, err := node.AcquireLock(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Release()

	// The kernel half of the data path. Programs and maps are pinned, so
	// that the node stays closed if the agent dies (a new agent takes
	// them over); a previous run's flows are forgotten: their verdicts
	// and counter slots mean nothing to this run.
	pinDir := filepath.Join(cfg.BPFDir, "podgate")
	unmountBPF, err := offload.PrepareBPFFS(pinDir)
	if err != nil {
		return err
	}
	kern, err := offload.Open(offload.Config{MaxFlows: cfg.ConntrackMax, PinDir: pinDir})
	if err != nil {
		return errors.Join(err, unmountIf(unmountBPF))
	}
	restored := false
	defer func() {
		if restored {
			// The node is back to the kernel: nothing of ours may stay.
			if err := kern.Unpin(); err != nil {
				logger.Error("unpin offload", "err", err)
			}
		}
		if err := kern.Close(); err != nil {
			logger.Error("close offload", "err", err)
		}
		if restored {
			if err := unmountIf(unmountBPF); err != nil {
				logger.Error("unmount bpffs", "err", err)
			}
		}
	}()
	if n, err := kern.Clear(); err != nil {
		return err
	} else if n > 0 {
		logger.Info("forgot the previous run's offloaded flows", "flows", n)
	}

	store := &table.Store{}
	ecfg := fastpath.Config{
		Store:           store,
		Conntrack:       conntrack.Config{Capacity: cfg.ConntrackMax},
		AllowNodeToPod:  cfg.AllowNodeToPod,
		KeepEstablished: cfg.KeepEstablished,
		ReversePickup:   reversePickup(cfg.ReversePickup),
		CutReset:        cfg.CutReset,
		BusyPoll:        cfg.BusyPoll,
	}
	if cfg.Offload == "tc" {
		ecfg.Offload = node.KernelFlows(kern, cfg.ConntrackMax)
	}
	engine, err := fastpath.New(ecfg)
	if err != nil {
		return err
	}
	nd, err := node.New(node.Config{
		Engine:          engine,
		Offload:         kern,
		GatewayLink:     cfg.GatewayLink,
		KernelLink:      cfg.KernelLink,
		StateDir:        cfg.StateDir,
		Lock:            lock,
		AttachMode:      xsk.Native,
		KernelSocket:    xsk.Config{RingSize: cfg.RingSize, NumFrames: 2 * cfg.RingSize},
		InterfacePrefix: cfg.InterfacePrefix,
		// Standalone, the node's own addresses are those of this host;
		// with the API they come from the Node object.
		PublishNodeAddrs: len(cfg.Manifests) > 0,
		Logger:           logger.With("component", "node"),
	})
	if err != nil {
		return err
	}

	// The engine outlives the node plumbing, which needs it to remove its
	// ports while it restores the node on shutdown.
	engineCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	engineDone := make(chan error, 1)
	workerStarted := make(chan error, 1)
	go func() {
		if cfg.WorkerNice != 0 {
			if err := niceThread(cfg.WorkerNice); err != nil {
				workerStarted <- fmt.Errorf("--worker-nice %d: %w", cfg.WorkerNice, err)
				engineDone <- nil
				return
			}
		}
		workerStarted <- nil
		engineDone <- engine.Run(engineCtx)
	}()
	if err := <-workerStarted; err != nil {
		return err
	}

	setNodeAddrs := func(addrs []netip.Addr) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := engine.SetNodeAddrs(c, addrs); err != nil && ctx.Err() == nil {
			logger.Error("set node addresses", "err", err)
		}
	}

	reg := prometheus.NewRegistry()
	rebuilds := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "podgate_table_rebuild_duration_seconds",
		Help:    "Time from reading the policy inputs (after a change) to publishing the compiled table.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})
	// The start-up (the first list of every object, the first compile)
	// leaves much more garbage than the agent keeps live. The Go runtime
	// would return it to the OS over the next minute or more with its
	// background scavenger, paced at about 1% of a CPU: that was most of an
	// idle agent's CPU (and of its RSS) in its first minute. Return it at
	// once after the first table, off the source's goroutine.
	var released sync.Once
	onPublish := func(_ uint64, d time.Duration) {
		rebuilds.Observe(d.Seconds())
		released.Do(func() { go debug.FreeOSMemory() })
	}

	var src k8swatch.Source
	var startInformers func()
	if len(cfg.Manifests) > 0 {
		fs, err := k8swatch.NewFileSource(k8swatch.FileConfig{
			Paths:     cfg.Manifests,
			Loader:    cfg.ManifestLimits.loader(),
			Store:     store,
			Logger:    logger.With("component", "files"),
			NodeAddrs: nd.NodeAddrs(),
			OnPublish: onPublish,
		})
		if err != nil {
			return err
		}
		src = fs
	} else {
		restCfg, err := kubeConfig(cfg.Kubeconfig)
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("create Kubernetes client: %w", err)
		}
		npaClient, err := npaclient.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("create network-policy-api client: %w", err)
		}
		factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(k8swatch.TrimForPolicy))
		// Services and EndpointSlices: a pod's egress to a ClusterIP is
		// judged against the Service's ready backends, as after
		// kube-proxy's DNAT (which happens after the gateway).
		as, err := k8swatch.NewAPISource(k8swatch.APIConfig{
			Pods:            factory.Core().V1().Pods(),
			Namespaces:      factory.Core().V1().Namespaces(),
			NetworkPolicies: factory.Networking().V1().NetworkPolicies(),
			Services:        factory.Core().V1().Services(),
			EndpointSlices:  factory.Discovery().V1().EndpointSlices(),
			Nodes:           factory.Core().V1().Nodes(),
			// ClusterNetworkPolicy and the v1alpha1 Admin/Baseline
			// kinds, while their CRDs are installed.
			ClusterPolicies: &k8swatch.ClusterPolicyConfig{Client: npaClient, Discovery: client.Discovery()},
			NodeName:        cfg.NodeName,
			OnNodeAddrs:     setNodeAddrs,
			Store:           store,
			Logger:          logger.With("component", "k8swatch"),
			Probe:           k8swatch.ReadyzProbe(client.Discovery().RESTClient()),
			OnPublish:       onPublish,
		})
		if err != nil {
			return err
		}
		src = as
		startInformers = func() {
			factory.Start(ctx.Done())
			go func() { <-ctx.Done(); factory.Shutdown() }()
		}
	}

	flows, err := fastpath.NewFlowLog(fastpath.FlowLogConfig{Engine: engine, Store: store, Logger: logger.With("component", "flows")})
	if err != nil {
		return err
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newBuildInfo(),
		fastpath.NewCollector(engine, store, flows),
		node.NewCollector(nd),
		offload.NewCollector(kern),
		k8swatch.NewCollector(src),
		rebuilds,
	)
	// Bounded serving (see serve.go): a client that reaches the metrics
	// address cannot exhaust the agent nor delay its health probes.
	srv, err := newServers(serveConfig{
		MetricsAddr: cfg.MetricsAddr, HealthAddr: cfg.HealthAddr, PprofAddr: cfg.PprofAddr,
		MaxConns: cfg.MaxConns, MaxConnsPerClient: cfg.MaxConnsClient,
		Registry: reg, Source: src, Node: nd, Store: store, Flows: flows,
	})
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return src.Run(gctx) })
	if startInformers != nil {
		startInformers()
	}
	g.Go(func() error {
		err := nd.Run(gctx)
		restored = err == nil
		return err
	})
	g.Go(func() error { return flows.Run(gctx) })
	g.Go(func() error { return srv.Serve(gctx) })
	attrs := []any{"metricsAddr", srv.metricsLn.Addr().String(), "healthAddr", srv.healthLn.Addr().String(),
		"manifests", strings.Join(cfg.Manifests, ",")}
	if srv.pprofLn != nil {
		attrs = append(attrs, "pprofAddr", srv.pprofLn.Addr().String())
	}
	logger.Info("agent started", attrs...)
	err = g.Wait()
	stopEngine()
	if eerr := <-engineDone; eerr != nil {
		err = errors.Join(err, eerr)
	}
	logger.Info("agent stopped", "err", err)
	return err
}

func unmountIf(unmount func() error) error {
	if unmount == nil {
		return nil
	}
	return unmount()
}

// reversePickup maps the flag (0 disables) to the engine's setting (0
// means the default, negative disables).
func reversePickup(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

func kubeConfig(path string) (*rest.Config, error) {
	if path != "" {
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (give --kubeconfig or --manifests outside a cluster): %w", err)
	}
	return c, nil
}

// niceThread locks the calling goroutine to its thread and sets the
// thread's nice value (Linux schedules threads, and setpriority with a
// thread ID changes that thread alone). The goroutine must never unlock
// it: one that exits locked takes its thread with it, so no other
// goroutine runs at that priority.
func niceThread(nice int) error {
	runtime.LockOSThread()
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), nice); err != nil {
		return fmt.Errorf("set the worker thread's nice value: %w", err)
	}
	return nil
}
