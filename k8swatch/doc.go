// Package k8swatch is where podgate's policy tables come from: it reads
// Namespaces, Pods and NetworkPolicies (and, optionally, Services and
// EndpointSlices, so that egress to a ClusterIP is judged against the
// Service's backends), compiles them with [policy.Compile] and publishes
// the result into a [policy.Store], which the fastpath reads without
// locking.
//
// There are two sources, both implementing [Source]:
//
//   - [APISource] watches the Kubernetes API through typed client-go
//     shared informers that the caller creates from one
//     informers.SharedInformerFactory (with [StripManagedFields] as its
//     transform) and hands to [NewAPISource] before starting the factory.
//     Event handlers only note that the view changed and trigger a rebuild;
//     rebuilds list the informer caches, compile and publish. A
//     bounded-frequency runner coalesces bursts: the first change after a
//     quiet period is rebuilt at once, later ones at most every
//     [APIConfig.MinInterval]. The source also follows the addresses of
//     its own Node ([APISource.NodeAddrs]).
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
// and with Services also services (core) and endpointslices
// (discovery.k8s.io);
// /readyz is open to every client by the default system:public-info-viewer
// role. Without permission the informers never sync, client-go reports
// Forbidden to the watch error handler and the view is stale.
//
// Nothing in the package is global: sources are built by constructors from
// a config and run by Run until its context is done. All exported methods
// are safe for concurrent use.
package k8swatch
