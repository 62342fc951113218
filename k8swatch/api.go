package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Defaults of [APIConfig].
const (
	DefaultMinInterval   = 10 * time.Millisecond
	DefaultProbeInterval = 10 * time.Second
	DefaultProbeTimeout  = 5 * time.Second
)

// APIConfig configures an [APISource].
type APIConfig struct {
	// OnPublish, when set, is called after every table publication with
	// its generation and how long the rebuild took (from reading the
	// inputs to publishing), e.g. to feed a histogram. It must return
	// quickly.
	OnPublish func(generation uint64, rebuild time.Duration)

	// Pods, Namespaces and NetworkPolicies are the informers the table is
	// built from, cluster-wide. Required.
	Pods            coreinformers.PodInformer
	Namespaces      coreinformers.NamespaceInformer
	NetworkPolicies networkinginformers.NetworkPolicyInformer
	// Services and EndpointSlices, when both are set, put Services into
	// the table so that egress to a ClusterIP is judged against the
	// Service's ready backends ([policy.Cluster]). Optional, cluster-wide;
	// without them a ClusterIP is an address like any other.
	Services       coreinformers.ServiceInformer
	EndpointSlices discoveryinformers.EndpointSliceInformer
	// Nodes is the informer that NodeName is looked up in; required with
	// NodeName. It may come from a factory restricted to that node, unless
	// ClusterPolicies is set: the nodes peers of cluster policies select
	// among all nodes.
	Nodes coreinformers.NodeInformer
	// NodeName is the node the agent runs on, whose InternalIP and
	// ExternalIP addresses [APISource.NodeAddrs] returns. Optional.
	NodeName string
	// OnNodeAddrs, when set, is called with the node's addresses whenever
	// they change (nil when the node is gone). Calls are serialized; the
	// callee must not modify the slice and should return quickly.
	OnNodeAddrs func([]netip.Addr)

	// ClusterPolicies, when set, adds the cluster policies of
	// sigs.k8s.io/network-policy-api (ClusterNetworkPolicy,
	// AdminNetworkPolicy, BaselineAdminNetworkPolicy) to the table, each
	// while the API server serves it (its CRD is installed), and the nodes
	// of the Nodes informer, which their nodes peers select. Optional.
	ClusterPolicies *ClusterPolicyConfig

	// Store receives the tables. Required.
	Store *table.Store
	// Logger receives the source's log; nil discards it.
	Logger *slog.Logger
	// MinInterval is the shortest time between the starts of two
	// rebuilds. A change after a quiet period is rebuilt at once; changes
	// during a burst are coalesced. Zero means DefaultMinInterval.
	MinInterval time.Duration

	// Probe checks that the API server answers, for example
	// [ReadyzProbe]. Without it only failed lists and watches make the
	// view stale, and client-go reports those only for some errors (not
	// for a refused connection): set it.
	Probe func(context.Context) error
	// ProbeInterval is the time between probes, and between checks that
	// a stale view is current again; zero means DefaultProbeInterval.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe; zero means the smaller of
	// ProbeInterval and DefaultProbeTimeout.
	ProbeTimeout time.Duration

	// Clock is for tests; nil means the real clock.
	Clock clock.Clock
}

// Default fills in the defaults of unset fields.
func (c *APIConfig) Default() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MinInterval == 0 {
		c.MinInterval = DefaultMinInterval
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = min(c.ProbeInterval, DefaultProbeTimeout)
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.ClusterPolicies != nil && c.ClusterPolicies.Interval == 0 {
		cp := *c.ClusterPolicies
		cp.Interval = DefaultDiscoveryInterval
		c.ClusterPolicies = &cp
	}
}

// Validate reports every problem of the config, joined.
func (c *APIConfig) Validate() error {
	var errs []error
	if c.Pods == nil {
		errs = append(errs, errors.New("pod informer is required"))
	}
	if c.Namespaces == nil {
		errs = append(errs, errors.New("namespace informer is required"))
	}
	if c.NetworkPolicies == nil {
		errs = append(errs, errors.New("NetworkPolicy informer is required"))
	}
	if (c.Services == nil) != (c.EndpointSlices == nil) {
		errs = append(errs, errors.New("the Service and EndpointSlice informers go together: set both or neither"))
	}
	if c.NodeName != "" && c.Nodes == nil {
		errs = append(errs, fmt.Errorf("node informer is required with node name %q", c.NodeName))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("store is required"))
	}
	if c.ClusterPolicies != nil {
		errs = append(errs, c.ClusterPolicies.validate())
	}
	if c.MinInterval < 0 {
		errs = append(errs, fmt.Errorf("minimum interval %v is negative", c.MinInterval))
	}
	if c.ProbeInterval < 0 || c.ProbeTimeout < 0 {
		errs = append(errs, fmt.Errorf("probe interval %v and timeout %v must not be negative", c.ProbeInterval, c.ProbeTimeout))
	}
	return errors.Join(errs...)
}

// StripManagedFields is an informer transform (a [cache.TransformFunc],
// for informers.WithTransform) that drops metadata.managedFields, which
// no informer consumer in podgate reads and which is often the largest part
// of an object. Other values pass unchanged.
func StripManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil && m.GetManagedFields() != nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// APISource publishes tables built from the Kubernetes API through
// client-go shared informers. Create it with [NewAPISource] before the
// informer factory starts, then call Run. Its methods are safe for
// concurrent use.
type APISource struct {
	cfg    APIConfig
	log    *slog.Logger
	clock  clock.Clock
	pub    *publisher
	runner *runner
	// pending is what changed since the last rebuild; compiler compiles
	// the tables and updates the last one for pod changes. The compiler
	// is used on the runner's goroutine only.
	pending  *pendingChanges
	compiler *policy.Compiler

	pods       corelisters.PodLister
	namespaces corelisters.NamespaceLister
	policies   networkinglisters.NetworkPolicyLister
	services   corelisters.ServiceLister            // nil without Services
	slices     discoverylisters.EndpointSliceLister // nil without Services
	nodes      corelisters.NodeLister

	// watched are the informers the source depends on; cluster policy
	// informers come and go. Guarded by healthMu after NewAPISource.
	watched  []*watched
	handlers map[string]cache.ResourceEventHandler // by watched.name, for tests
	started  atomic.Bool

	cluster *clusterWatch // nil without ClusterPolicies

	// nodeMu serializes node address updates and OnNodeAddrs calls.
	nodeMu    sync.Mutex
	nodeAddrs atomic.Pointer[[]netip.Addr]

	// healthMu guards watched and the suspect fields of its elements.
	healthMu sync.Mutex
}

// watched is one informer the source depends on.
type watched struct {
	name   string
	inf    cache.SharedIndexInformer
	synced cache.InformerSynced
	// lastRV is the informer's LastSyncResourceVersion (replaced in
	// tests).
	lastRV func() string

	// suspect is set when the informer may have missed changes (the API
	// server did not answer, or its list or watch failed); it is cleared
	// once the server answers and lastRV differs from suspectRV, i.e. the
	// informer received data since. Guarded by APISource.healthMu.
	suspect   bool
	suspectRV string
}

// NewAPISource creates a source from the informers in cfg. It installs the
// watch error handler of each informer (so it must be called before the
// informer factory starts, and nothing else may set those handlers) and
// registers its event handlers; it does not start the informers.
func NewAPISource(cfg APIConfig) (*APISource, error) {
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configure API source: %w", err)
	}
	s := &APISource{
		cfg:        cfg,
		log:        cfg.Logger,
		clock:      cfg.Clock,
		pub:        newPublisher(cfg.Store, cfg.Logger, cfg.Clock),
		pods:       cfg.Pods.Lister(),
		namespaces: cfg.Namespaces.Lister(),
		policies:   cfg.NetworkPolicies.Lister(),
		handlers:   make(map[string]cache.ResourceEventHandler),
	}
	// The API server validated every object it serves.
	s.pub.opts = policy.Options{Trusted: true}
	s.pub.onPublish = cfg.OnPublish
	s.pending = newPendingChanges()
	s.compiler = policy.NewCompiler(s.pub.opts)
	s.pub.compile = s.compiler.Compile
	s.runner = newRunner(s.rebuild, cfg.MinInterval, cfg.Clock)
	if cfg.ClusterPolicies != nil {
		s.cluster = &clusterWatch{cfg: *cfg.ClusterPolicies, rediscover: make(chan struct{}, 1), crs: map[string]*crWatch{}}
	}
	add := func(name string, inf cache.SharedIndexInformer, h cache.ResourceEventHandler) {
		s.watched = append(s.watched, &watched{name: name, inf: inf, lastRV: inf.LastSyncResourceVersion})
		s.handlers[name] = h
	}
	add("pods", cfg.Pods.Informer(), s.policyHandler("pod", podPresent, podChanged))
	add("namespaces", cfg.Namespaces.Informer(), s.policyHandler("namespace", always, namespaceChanged))
	add("networkpolicies", cfg.NetworkPolicies.Informer(), s.policyHandler("NetworkPolicy", always, networkPolicyChanged))
	if cfg.Services != nil {
		s.services, s.slices = cfg.Services.Lister(), cfg.EndpointSlices.Lister()
		add("services", cfg.Services.Informer(), s.policyHandler("Service", always, serviceChanged))
		add("endpointslices", cfg.EndpointSlices.Informer(), s.policyHandler("EndpointSlice", endpointSlicePresent, endpointSliceChanged))
	}
	if cfg.ClusterPolicies != nil && cfg.Nodes == nil {
		s.log.Warn("no node informer: the nodes peers of cluster policies match no address")
	}
	if cfg.Nodes != nil {
		s.nodes = cfg.Nodes.Lister()
		add("nodes", cfg.Nodes.Informer(), s.nodeHandler())
	}
	// Watch error handlers first: they fail on a started informer, and
	// then no event handler has been added yet.
	for _, w := range s.watched {
		if err := w.inf.SetWatchErrorHandlerWithContext(s.watchErrorHandler(w)); err != nil {
			return nil, fmt.Errorf("set watch error handler of the %s informer: %w", w.name, err)
		}
	}
	var regs []cache.ResourceEventHandlerRegistration
	for _, w := range s.watched {
		reg, err := w.inf.AddEventHandler(s.handlers[w.name])
		if err != nil {
			for i, r := range regs {
				_ = s.watched[i].inf.RemoveEventHandler(r)
			}
			return nil, fmt.Errorf("add event handler to the %s informer: %w", w.name, err)
		}
		regs = append(regs, reg)
		w.synced = reg.HasSynced
	}
	return s, nil
}

// Run waits for the informers to sync, publishes a first table and then
// rebuilds on every change until ctx is done; it probes the API server
// meanwhile. The caller starts the informer factory. Run returns nil when
// ctx is done, and an error only if called twice.
func (s *APISource) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("run API source: already running")
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.probeLoop(ctx) })
	if s.cluster != nil {
		// Cluster policy resources served now are part of the first
		// table: their informers sync before it is published.
		s.cluster.mu.Lock()
		s.cluster.ctx = ctx
		s.cluster.mu.Unlock()
		if _, ok := s.discoverUntilAnswered(ctx); !ok {
			return nil
		}
		wg.Go(func() { s.discoveryLoop(ctx) })
	}
	s.healthMu.Lock()
	synced := make([]cache.InformerSynced, len(s.watched))
	for i, w := range s.watched {
		synced[i] = w.synced
	}
	s.healthMu.Unlock()
	s.log.Info("waiting for informer caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	s.pub.setSynced()
	s.log.Info("informer caches synced")
	s.updateNodeAddrs()
	s.triggerFull()
	s.runner.run(ctx)
	return nil
}

// triggerFull asks for a rebuild that compiles everything.
func (s *APISource) triggerFull() {
	s.pending.other()
	s.runner.trigger()
}

// Ready reports whether every informer synced, a table was published and
// the latest rebuild succeeded.
func (s *APISource) Ready() bool { return s.pub.status().Ready() }

// Status describes the source.
func (s *APISource) Status() Status { return s.pub.status() }

// NodeAddrs returns the InternalIP and ExternalIP addresses of the node
// named [APIConfig.NodeName], in the order of its status, or nil. The
// caller must not modify the slice. It does not lock or allocate.
func (s *APISource) NodeAddrs() []netip.Addr {
	if p := s.nodeAddrs.Load(); p != nil {
		return *p
	}
	return nil
}

// rebuild publishes a table of the informer caches: when only pods
// changed since the last rebuild, the last table updated for them
// ([policy.Compiler.UpdatePods]), otherwise (or when the update cannot
// be derived) a full compile of everything listed from the caches. It
// runs on the runner's goroutine only.
func (s *APISource) rebuild() {
	start := s.clock.Now()
	current := !s.pub.stale()
	full, changed := s.pending.take()
	if !full {
		if len(changed) == 0 {
			return // a trigger whose changes an earlier rebuild read
		}
		if s.updatePods(changed, start, current) {
			return
		}
	}
	nss, err1 := s.namespaces.List(labels.Everything())
	pods, err2 := s.pods.List(labels.Everything())
	nps, err3 := s.policies.List(labels.Everything())
	c := &policy.Cluster{Namespaces: nss, Pods: pods, Policies: nps}
	var err4, err5, err6, err7 error
	if s.services != nil {
		c.Services, err4 = s.services.List(labels.Everything())
		c.EndpointSlices, err5 = s.slices.List(labels.Everything())
	}
	if s.cluster != nil {
		if s.nodes != nil {
			c.Nodes, err6 = s.nodes.List(labels.Everything())
		}
		err7 = s.clusterPolicies(c)
	}
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7); err != nil {
		// What this rebuild should have compiled is not in the last
		// table: the next one compiles everything too.
		s.compiler.Reset()
		s.pub.fail(fmt.Errorf("list informer caches: %w", err))
		return
	}
	s.pub.publish(c, start, current)
}

// updatePods reads the pods from the cache and publishes the last table
// updated for them. It reports false when the update could not be
// derived and the caller must compile everything.
func (s *APISource) updatePods(pods []cache.ObjectName, start time.Time, current bool) bool {
	changes := make([]policy.PodChange, 0, len(pods))
	for _, k := range pods {
		pod, err := s.pods.Pods(k.Namespace).Get(k.Name)
		switch {
		case apierrors.IsNotFound(err):
			pod = nil
		case err != nil:
			s.log.Debug("read pod from cache; compiling everything", "pod", k.String(), "error", err)
			return false
		}
		changes = append(changes, policy.PodChange{Namespace: k.Namespace, Name: k.Name, Pod: pod})
	}
	t, err := s.compiler.UpdatePods(changes)
	if err != nil {
		s.log.Debug("pod changes need a full compile", "pods", len(pods), "reason", err)
		return false
	}
	s.pub.publishTable(t, start, current, true)
	return true
}
