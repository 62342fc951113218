package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/rest"
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

// ReadyzProbe returns an [APIConfig.Probe] that asks the API server's
// /readyz endpoint through c, for example a clientset's
// Discovery().RESTClient(). Probes share the clientset's connections, so a
// dead connection fails the probe as it stalls the watches.
func ReadyzProbe(c rest.Interface) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
			return fmt.Errorf("probe API server readiness: %w", err)
		}
		return nil
	}
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
	s.runner.trigger()
	s.runner.run(ctx)
	return nil
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

// rebuild lists the informer caches, compiles and publishes. It runs on
// the runner's goroutine only.
func (s *APISource) rebuild() {
	start := s.clock.Now()
	current := !s.pub.stale()
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
		s.pub.fail(fmt.Errorf("list informer caches: %w", err))
		return
	}
	s.pub.publish(c, start, current)
}

// policyHandler returns the event handler of an informer whose objects
// make up the table: it counts the change and triggers a rebuild, nothing
// more. Objects that are not in the table (present false: a pod without
// an address) and updates that do not change what the table is compiled
// from (status conditions, annotations, resyncs) are ignored. A deletion
// may arrive as a cache.DeletedFinalStateUnknown tombstone (the watch
// missed it and a relist found the object gone); its Obj is the last state
// the cache had, so the table was compiled from it.
func (s *APISource) policyHandler(kind string, present func(obj any) bool, changed func(old, cur any) bool) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if present(obj) {
				s.changed(kind, "added", obj)
			}
		},
		UpdateFunc: func(old, cur any) {
			if changed(old, cur) {
				s.changed(kind, "updated", cur)
			}
		},
		DeleteFunc: func(obj any) {
			last := obj
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				last = t.Obj
			}
			if last == nil || present(last) {
				s.changed(kind, "deleted", obj)
			}
		},
	}
}

// always is the present function of kinds that are always in the table.
func always(any) bool { return true }

// podPresent reports whether a pod is in the table; objects of other types
// count as present, to be safe.
func podPresent(obj any) bool {
	p, ok := obj.(*corev1.Pod)
	return !ok || policy.PodTakesPart(p)
}

func (s *APISource) changed(kind, what string, obj any) {
	s.pub.event()
	s.runner.trigger()
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		key, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		s.log.Debug("policy input changed", "kind", kind, "change", what, "object", key)
	}
}

// sameVersion reports whether an update is a resync of an unchanged
// object.
func sameVersion(old, cur any) bool {
	o, err1 := meta.Accessor(old)
	c, err2 := meta.Accessor(cur)
	return err1 == nil && err2 == nil && o.GetResourceVersion() != "" && o.GetResourceVersion() == c.GetResourceVersion()
}

// podChanged reports whether an update changes what [policy.Compile]
// reads of a pod: whether it takes part, its labels, node, addresses and
// named ports.
func podChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Pod)
	c, ok2 := cur.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	takesPart := policy.PodTakesPart(o)
	if takesPart != policy.PodTakesPart(c) {
		return true
	}
	if !takesPart {
		return false
	}
	return !maps.Equal(o.Labels, c.Labels) ||
		o.Spec.NodeName != c.Spec.NodeName ||
		o.Status.PodIP != c.Status.PodIP ||
		!slices.Equal(o.Status.PodIPs, c.Status.PodIPs) ||
		!slices.EqualFunc(o.Spec.Containers, c.Spec.Containers, func(a, b corev1.Container) bool {
			return slices.Equal(a.Ports, b.Ports)
		})
}

func namespaceChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Namespace)
	c, ok2 := cur.(*corev1.Namespace)
	return !ok1 || !ok2 || !maps.Equal(o.Labels, c.Labels)
}

func networkPolicyChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*networkingv1.NetworkPolicy)
	c, ok2 := cur.(*networkingv1.NetworkPolicy)
	return !ok1 || !ok2 || !apiequality.Semantic.DeepEqual(o.Spec, c.Spec)
}

// serviceChanged reports whether an update changes what [policy.Compile]
// reads of a Service: its type, cluster addresses and ports.
func serviceChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Service)
	c, ok2 := cur.(*corev1.Service)
	if !ok1 || !ok2 {
		return true
	}
	return o.Spec.Type != c.Spec.Type ||
		o.Spec.ClusterIP != c.Spec.ClusterIP ||
		!slices.Equal(o.Spec.ClusterIPs, c.Spec.ClusterIPs) ||
		!slices.EqualFunc(o.Spec.Ports, c.Spec.Ports, func(a, b corev1.ServicePort) bool {
			return a.Name == b.Name && a.Protocol == b.Protocol && a.Port == b.Port
		})
}

// endpointSlicePresent reports whether an EndpointSlice belongs to a
// Service (the kubernetes.io/service-name label); objects of other types
// count as present, to be safe.
func endpointSlicePresent(obj any) bool {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	return !ok || es.Labels[discoveryv1.LabelServiceName] != ""
}

// endpointSliceChanged reports whether an update changes what
// [policy.Compile] reads of an EndpointSlice: its Service, address type,
// ports, and its endpoints' addresses and readiness (not their other
// conditions, hints, node names or zones).
func endpointSliceChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*discoveryv1.EndpointSlice)
	c, ok2 := cur.(*discoveryv1.EndpointSlice)
	if !ok1 || !ok2 {
		return true
	}
	if !endpointSlicePresent(o) && !endpointSlicePresent(c) {
		return false
	}
	return o.Labels[discoveryv1.LabelServiceName] != c.Labels[discoveryv1.LabelServiceName] ||
		o.AddressType != c.AddressType ||
		!apiequality.Semantic.DeepEqual(o.Ports, c.Ports) ||
		!slices.EqualFunc(o.Endpoints, c.Endpoints, func(a, b discoveryv1.Endpoint) bool {
			return slices.Equal(a.Addresses, b.Addresses) && policy.EndpointReady(&a) == policy.EndpointReady(&b)
		})
}

// nodeHandler follows the agent's own node. Nodes do not take part in the
// table; only the addresses are updated.
func (s *APISource) nodeHandler() cache.ResourceEventHandler {
	mine := func(obj any) bool {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
			if obj == nil {
				_, name, err := cache.SplitMetaNamespaceKey(t.Key)
				return err == nil && name == s.cfg.NodeName
			}
		}
		m, err := meta.Accessor(obj)
		return err == nil && m.GetName() == s.cfg.NodeName
	}
	// With cluster policies, nodes are in the table (nodes peers): a
	// node's labels and addresses matter.
	table := func(kind string, obj any) {
		if s.cluster != nil {
			s.changed("node", kind, obj)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if mine(obj) {
				s.updateNodeAddrs()
			}
			table("added", obj)
		},
		UpdateFunc: func(old, cur any) {
			if mine(cur) {
				s.updateNodeAddrs()
			}
			if nodeChanged(old, cur) {
				table("updated", cur)
			}
		},
		DeleteFunc: func(obj any) {
			if mine(obj) {
				s.updateNodeAddrs()
			}
			table("deleted", obj)
		},
	}
}

// nodeChanged reports whether an update changes what [policy.Compile]
// reads of a node: its labels and addresses.
func nodeChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	o, ok1 := old.(*corev1.Node)
	c, ok2 := cur.(*corev1.Node)
	return !ok1 || !ok2 || !maps.Equal(o.Labels, c.Labels) || !slices.Equal(o.Status.Addresses, c.Status.Addresses)
}

// updateNodeAddrs reads the node from the cache and publishes its
// addresses if they changed.
func (s *APISource) updateNodeAddrs() {
	if s.cfg.NodeName == "" {
		return
	}
	s.nodeMu.Lock()
	defer s.nodeMu.Unlock()
	var addrs []netip.Addr
	node, err := s.nodes.Get(s.cfg.NodeName)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		s.log.Error("read node from cache", "node", s.cfg.NodeName, "error", err)
		return
	default:
		addrs = nodeAddrs(node)
	}
	if slices.Equal(addrs, s.NodeAddrs()) && s.nodeAddrs.Load() != nil {
		return
	}
	s.nodeAddrs.Store(&addrs)
	s.log.Info("node addresses", "node", s.cfg.NodeName, "addresses", addrs)
	if s.cfg.OnNodeAddrs != nil {
		s.cfg.OnNodeAddrs(addrs)
	}
}

// nodeAddrs returns a node's InternalIP and ExternalIP addresses, without
// duplicates, in the order of its status.
func nodeAddrs(node *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" {
			continue
		}
		ip = ip.Unmap()
		if !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	return out
}

// watchErrorHandler is called by w's reflector when a list or watch fails
// with an error it does not retry by itself (a refused connection it does
// retry, silently). It marks w suspect.
func (s *APISource) watchErrorHandler(w *watched) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		if ctx.Err() != nil {
			return // stopping
		}
		s.log.Debug("list or watch failed", "informer", w.name, "error", err)
		s.suspect([]*watched{w}, fmt.Sprintf("list and watch %s: %v", w.name, err))
	}
}

// suspect marks ws as possibly behind the API server.
func (s *APISource) suspect(ws []*watched, reason string) {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	for _, w := range ws {
		if !w.suspect {
			w.suspect, w.suspectRV = true, w.lastRV()
		}
	}
	s.pub.setStale(reason)
}

// suspectAll marks every informer as possibly behind the API server.
func (s *APISource) suspectAll(reason string) {
	s.healthMu.Lock()
	ws := slices.Clone(s.watched)
	s.healthMu.Unlock()
	s.suspect(ws, reason)
}

// probed records a successful probe: informers that received data since
// they became suspect are current again, and when all are, so is the view.
func (s *APISource) probed() {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	for _, w := range s.watched {
		if w.suspect && w.lastRV() != w.suspectRV {
			w.suspect = false
		}
		if w.suspect {
			return
		}
	}
	s.pub.setCurrent()
}

// probeLoop probes the API server every ProbeInterval until ctx is done.
// Without a Probe it only checks whether suspect informers heard from the
// server again.
func (s *APISource) probeLoop(ctx context.Context) {
	for {
		var err error
		if s.cfg.Probe != nil {
			pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
			err = s.cfg.Probe(pctx)
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.suspectAll(err.Error())
		} else {
			s.probed()
		}
		t := s.clock.NewTimer(s.cfg.ProbeInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
