package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	npaclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	npainformersv1alpha1 "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions/apis/v1alpha1"
	npainformersv1alpha2 "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions/apis/v1alpha2"
	npainformersv1beta1 "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions/apis/v1beta1"

	"github.com/podgate/podgate/policy"
)

// Cluster policies (sigs.k8s.io/network-policy-api) are custom resources:
// their CRDs may be missing, installed later or removed. The source asks
// the API server's discovery which of them it serves (at start, every
// ClusterPolicyConfig.Interval, and at once when a watch reports the
// resource gone) and runs one informer per served resource:
// ClusterNetworkPolicy at the preferred of v1beta1 and v1alpha2 (the same
// objects; v1alpha2 ones are converted to v1beta1 by the informer's
// transform), AdminNetworkPolicy and BaselineAdminNetworkPolicy at
// v1alpha1. Resources served at start are part of the first table; a
// resource that appears later joins the table once its informer synced; a
// resource that disappears leaves it.

// DefaultDiscoveryInterval is how often an [APISource] asks discovery
// again for the cluster policy resources, by default.
const DefaultDiscoveryInterval = time.Minute

// clusterPolicyGroup is the API group of the cluster policy resources.
const clusterPolicyGroup = "policy.networking.k8s.io"

// ClusterPolicyConfig configures the cluster policies of an [APISource].
type ClusterPolicyConfig struct {
	// Client is a clientset of sigs.k8s.io/network-policy-api. Required.
	Client npaclient.Interface
	// Discovery tells which cluster policy resources the API server
	// serves, for example the Kubernetes clientset's Discovery().
	// Required.
	Discovery discovery.DiscoveryInterface
	// Interval is the time between two discovery requests; zero means
	// DefaultDiscoveryInterval. A CRD installed meanwhile is noticed at
	// the next one.
	Interval time.Duration
}

// clusterResource is a cluster policy resource the source can watch.
type clusterResource struct {
	resource string
	kind     string
	// versions are the versions the source reads, preferred first.
	versions []string
}

var clusterResources = []clusterResource{
	{"clusternetworkpolicies", policy.KindClusterNetworkPolicy, []string{"v1beta1", "v1alpha2"}},
	{"adminnetworkpolicies", policy.KindAdminNetworkPolicy, []string{"v1alpha1"}},
	{"baselineadminnetworkpolicies", policy.KindBaselineAdminNetworkPolicy, []string{"v1alpha1"}},
}

// crWatch is the running informer of one cluster policy resource.
type crWatch struct {
	res     clusterResource
	version string
	w       *watched
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

func (c *crWatch) String() string {
	return fmt.Sprintf("%s.%s.%s", c.res.resource, c.version, clusterPolicyGroup)
}

// clusterWatch is the cluster policy part of an APISource.
type clusterWatch struct {
	cfg        ClusterPolicyConfig
	rediscover chan struct{} // buffered: a request to ask discovery now

	mu  sync.Mutex
	crs map[string]*crWatch // by resource
	ctx context.Context     // Run's, for informers started later
}

// servedResources asks discovery which version of each cluster policy
// resource the API server serves ("" when none).
func (cw *clusterWatch) servedResources(ctx context.Context) (map[string]string, error) {
	lists := map[string][]string{} // version -> resources
	for _, v := range []string{"v1beta1", "v1alpha2", "v1alpha1"} {
		l, err := cw.cfg.Discovery.ServerResourcesForGroupVersion(clusterPolicyGroup + "/" + v)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, fmt.Errorf("discover %s/%s: %w", clusterPolicyGroup, v, err)
		}
		for _, r := range l.APIResources {
			lists[v] = append(lists[v], r.Name)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	out := map[string]string{}
	for _, res := range clusterResources {
		for _, v := range res.versions {
			if slices.Contains(lists[v], res.resource) {
				out[res.resource] = v
				break
			}
		}
	}
	return out, nil
}

// discover brings the informers in line with what the API server serves.
// It returns the informers it started.
func (s *APISource) discover(ctx context.Context) ([]*crWatch, error) {
	cw := s.cluster
	served, err := cw.servedResources(ctx)
	if err != nil {
		return nil, err
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	var started []*crWatch
	changed := false
	for _, res := range clusterResources {
		version := served[res.resource]
		cur := cw.crs[res.resource]
		if cur != nil && cur.version == version {
			continue
		}
		if cur != nil {
			s.stopClusterInformer(cur)
			changed = true
		}
		if version == "" {
			continue
		}
		c, err := s.startClusterInformer(res, version)
		if err != nil {
			return started, err
		}
		started = append(started, c)
	}
	if changed {
		s.triggerFull()
	}
	return started, nil
}

// startClusterInformer starts the informer of res at version; cw.mu is
// held.
func (s *APISource) startClusterInformer(res clusterResource, version string) (*crWatch, error) {
	cw := s.cluster
	client := cw.cfg.Client
	var inf cache.SharedIndexInformer
	transform := StripManagedFields
	switch res.resource + "/" + version {
	case "clusternetworkpolicies/v1beta1":
		inf = npainformersv1beta1.NewClusterNetworkPolicyInformer(client, 0, cache.Indexers{})
	case "clusternetworkpolicies/v1alpha2":
		inf = npainformersv1alpha2.NewClusterNetworkPolicyInformer(client, 0, cache.Indexers{})
		transform = func(obj any) (any, error) {
			obj, _ = StripManagedFields(obj)
			if p, ok := obj.(*npav1alpha2.ClusterNetworkPolicy); ok {
				return policy.ClusterNetworkPolicyFromV1alpha2(p)
			}
			return obj, nil
		}
	case "adminnetworkpolicies/v1alpha1":
		inf = npainformersv1alpha1.NewAdminNetworkPolicyInformer(client, 0, cache.Indexers{})
	case "baselineadminnetworkpolicies/v1alpha1":
		inf = npainformersv1alpha1.NewBaselineAdminNetworkPolicyInformer(client, 0, cache.Indexers{})
	default:
		return nil, fmt.Errorf("watch %s/%s: not a resource podgate reads", res.resource, version)
	}
	c := &crWatch{res: res, version: version}
	c.w = &watched{name: res.resource, inf: inf, lastRV: inf.LastSyncResourceVersion}
	if err := inf.SetTransform(transform); err != nil {
		return nil, fmt.Errorf("watch %s: set transform: %w", c, err)
	}
	if err := inf.SetWatchErrorHandlerWithContext(s.clusterWatchErrorHandler(c)); err != nil {
		return nil, fmt.Errorf("watch %s: set watch error handler: %w", c, err)
	}
	reg, err := inf.AddEventHandler(s.policyHandler(res.kind, always, clusterPolicyChanged))
	if err != nil {
		return nil, fmt.Errorf("watch %s: add event handler: %w", c, err)
	}
	c.w.synced = reg.HasSynced
	ctx, cancel := context.WithCancel(cw.ctx)
	c.cancel = cancel
	c.done.Go(func() { inf.RunWithContext(ctx) })
	c.done.Go(func() {
		if cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
			s.triggerFull()
		}
	})
	cw.crs[res.resource] = c
	s.healthMu.Lock()
	s.watched = append(s.watched, c.w)
	s.healthMu.Unlock()
	s.log.Info("watching cluster policies", "resource", c.String())
	return c, nil
}

// stopClusterInformer stops c; cw.mu is held.
func (s *APISource) stopClusterInformer(c *crWatch) {
	c.cancel()
	c.done.Wait()
	delete(s.cluster.crs, c.res.resource)
	s.healthMu.Lock()
	s.watched = slices.DeleteFunc(s.watched, func(w *watched) bool { return w == c.w })
	s.healthMu.Unlock()
	s.log.Info("stopped watching cluster policies: the API server no longer serves them", "resource", c.String())
}

// clusterWatchErrorHandler is the watch error handler of a cluster policy
// informer: a resource that is not found any more (its CRD was removed, or
// the version is no longer served) makes the source ask discovery again;
// other errors make the view suspect, as for the other informers.
func (s *APISource) clusterWatchErrorHandler(c *crWatch) cache.WatchErrorHandlerWithContext {
	suspect := s.watchErrorHandler(c.w)
	return func(ctx context.Context, r *cache.Reflector, err error) {
		if ctx.Err() != nil {
			return
		}
		if apierrors.IsNotFound(err) {
			s.log.Debug("cluster policy resource not found; asking discovery", "resource", c.String(), "error", err)
			select {
			case s.cluster.rediscover <- struct{}{}:
			default:
			}
			return
		}
		suspect(ctx, r, err)
	}
}

// discoverUntilAnswered asks discovery until it answers or ctx is done and
// returns the informers it started.
func (s *APISource) discoverUntilAnswered(ctx context.Context) ([]*crWatch, bool) {
	for {
		started, err := s.discover(ctx)
		if err == nil {
			return started, true
		}
		s.log.Warn("cluster policy discovery failed; retrying", "error", err)
		t := s.clock.NewTimer(s.cfg.ProbeInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false
		case <-t.C():
		}
	}
}

// discoveryLoop asks discovery every interval, and when asked to, until
// ctx is done; then it stops the informers.
func (s *APISource) discoveryLoop(ctx context.Context) {
	cw := s.cluster
	defer func() {
		cw.mu.Lock()
		defer cw.mu.Unlock()
		for _, c := range cw.crs {
			c.cancel()
			c.done.Wait()
		}
	}()
	for {
		t := s.clock.NewTimer(cw.cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-cw.rediscover:
			t.Stop()
		}
		if _, err := s.discover(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("cluster policy discovery failed", "error", err)
		}
	}
}

// clusterPolicies lists the cluster policies of the synced informers into
// c.
func (s *APISource) clusterPolicies(c *policy.Cluster) error {
	cw := s.cluster
	cw.mu.Lock()
	defer cw.mu.Unlock()
	for _, w := range cw.crs {
		if !w.w.synced() {
			continue // joins the table once synced (the sync triggers a rebuild)
		}
		for _, obj := range w.w.inf.GetStore().List() {
			switch p := obj.(type) {
			case *npav1beta1.ClusterNetworkPolicy:
				c.ClusterNetworkPolicies = append(c.ClusterNetworkPolicies, p)
			case *npav1alpha1.AdminNetworkPolicy:
				c.AdminNetworkPolicies = append(c.AdminNetworkPolicies, p)
			case *npav1alpha1.BaselineAdminNetworkPolicy:
				c.BaselineAdminNetworkPolicies = append(c.BaselineAdminNetworkPolicies, p)
			default:
				return fmt.Errorf("list %s: unexpected %T", w, obj)
			}
		}
	}
	return nil
}

// ClusterPolicyResources returns the cluster policy resources the source
// watches, as "resource.version.group", sorted.
func (s *APISource) ClusterPolicyResources() []string {
	if s.cluster == nil {
		return nil
	}
	s.cluster.mu.Lock()
	defer s.cluster.mu.Unlock()
	var out []string
	for _, c := range s.cluster.crs {
		out = append(out, c.String())
	}
	slices.Sort(out)
	return out
}

// clusterPolicyChanged reports whether an update changes a cluster
// policy's spec.
func clusterPolicyChanged(old, cur any) bool {
	if sameVersion(old, cur) {
		return false
	}
	switch o := old.(type) {
	case *npav1beta1.ClusterNetworkPolicy:
		c, ok := cur.(*npav1beta1.ClusterNetworkPolicy)
		return !ok || !apiequality.Semantic.DeepEqual(o.Spec, c.Spec)
	case *npav1alpha1.AdminNetworkPolicy:
		c, ok := cur.(*npav1alpha1.AdminNetworkPolicy)
		return !ok || !apiequality.Semantic.DeepEqual(o.Spec, c.Spec)
	case *npav1alpha1.BaselineAdminNetworkPolicy:
		c, ok := cur.(*npav1alpha1.BaselineAdminNetworkPolicy)
		return !ok || !apiequality.Semantic.DeepEqual(o.Spec, c.Spec)
	}
	return true
}

func (c *ClusterPolicyConfig) validate() error {
	var errs []error
	if c.Client == nil {
		errs = append(errs, errors.New("cluster policies: the network-policy-api client is required"))
	}
	if c.Discovery == nil {
		errs = append(errs, errors.New("cluster policies: the discovery client is required"))
	}
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("cluster policies: discovery interval %v is negative", c.Interval))
	}
	return errors.Join(errs...)
}
