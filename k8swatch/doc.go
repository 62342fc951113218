// Package k8swatch is where podgate's policy tables come from: it reads
// Namespaces, Pods and NetworkPolicies (and, optionally, Services and
// EndpointSlices, so that egress to a ClusterIP is judged against the
// Service's backends), compiles them with [policy.Compile] and publishes
// the result into a [table.Store], which the fastpath reads without
// locking.
//
// There are two sources, both implementing [Source]:
//
//   - [APISource] watches the Kubernetes API through typed client-go
//     shared informers that the caller creates from one
//     informers.SharedInformerFactory (with [TrimForPolicy] as its
//     transform, which keeps of Pods and Nodes only what the table reads,
//     or at least [StripManagedFields]) and hands to [NewAPISource] before
//     starting the factory.
//     Event handlers only note what changed (which pods, or that
//     something else did) and trigger a rebuild. A rebuild after pod
//     changes only reads those pods from the cache and updates the last
//     table for them ([policy.Compiler.UpdatePods]); any other change, or
//     a pod change it cannot derive, lists the informer caches and
//     compiles everything. Either way it publishes a new table. A
//     bounded-frequency runner coalesces bursts: the first change after a
//     quiet period is rebuilt at once, later ones at most every
//     [APIConfig.MinInterval]. The source also follows the addresses of
//     its own Node ([APISource.NodeAddrs]).
//     With [APIConfig.ClusterPolicies] it also reads the cluster policies
//     of sigs.k8s.io/network-policy-api (ClusterNetworkPolicy at v1beta1,
//     else v1alpha2, and the v1alpha1 AdminNetworkPolicy and
//     BaselineAdminNetworkPolicy) and the Nodes their nodes peers select.
//     These are custom resources: the source asks API discovery which of
//     them the API server serves (at start, every
//     [ClusterPolicyConfig.Interval], and at once when a watch finds its
//     resource gone) and runs an informer per served resource, generated
//     by the module's code generator, with managedFields stripped (and
//     v1alpha2 objects converted to v1beta1) by its transform. Resources
//     served at start are in the first table; one that appears later joins
//     the table when its informer has synced; one that disappears leaves
//     it. Without the CRDs the source works as before.
//   - [FileSource] reads manifest files and directories with [policy.Load]
//     and reloads them, debounced, when fsnotify reports a change
//     (editors that write a temporary file and rename it over the original,
//     and Kubernetes ConfigMap volumes that swap a "..data" symlink, are
//     handled by watching the parent directories).
//
// A table is published only after every input was read completely (all
// informers synced, all files parsed): publishing a partial view could
// allow traffic that a policy not yet seen denies. When reading or
// compiling fails, nothing new is published, the fastpath keeps enforcing
// the last table, and the error is logged and reported by [Status] and
// Ready.
//
// An APISource also reports whether its view is stale: the API server did
// not answer its health probe ([APIConfig.Probe], for example
// [ReadyzProbe]) or an informer's list or watch failed (the watch error
// handler that [NewAPISource] installs on each informer). client-go's
// reflectors retry a refused connection silently, without calling the
// watch error handler, so the probe is what notices an API server that is
// down. The view is current again once the probe succeeds and every
// informer has received data from the server since (its
// LastSyncResourceVersion moved: a relist, an event or a bookmark).
// Enforcement continues on the last table while the view is stale.
//
// An APISource needs RBAC permission to get, list and watch pods,
// namespaces and nodes (core) and networkpolicies (networking.k8s.io),
// with Services also services (core) and endpointslices
// (discovery.k8s.io), and with cluster policies clusternetworkpolicies,
// adminnetworkpolicies and baselineadminnetworkpolicies
// (policy.networking.k8s.io; discovery is open to every client);
// /readyz is open to every client by the default system:public-info-viewer
// role. Without permission the informers never sync, client-go reports
// Forbidden to the watch error handler and the view is stale.
//
// Nothing in the package is global: sources are built by constructors from
// a config and run by Run until its context is done. All exported methods
// are safe for concurrent use.
package k8swatch
