// Package policy turns Kubernetes Namespaces, Pods and NetworkPolicies (and
// Services with their EndpointSlices, cluster policies and Nodes) into an
// immutable, compiled [table.Table] that answers "may this source talk to
// this destination on this protocol and port, and why" without locks or
// allocation. The table lives in package table, which imports nothing
// from Kubernetes, so that the fastpath does not either; this package is
// the part that reads Kubernetes objects.
//
// The semantics are those of networking.k8s.io/v1 as the API server and the
// upstream conformance suite define them:
//
//   - A pod is isolated for a direction only if a policy with that policy
//     type selects it; policies are allow-lists combined as a union.
//   - A connection is allowed only if the source's egress side and the
//     destination's ingress side both allow it. Sides that are not pods
//     (addresses outside the cluster, hostNetwork pods, the node) are not
//     subject to policy.
//   - A pod's traffic to itself never leaves its network namespace and is
//     always allowed (the conformance suite's "loopback").
//   - A pod's packet to a Service ClusterIP is judged before kube-proxy
//     DNATs it: when the cluster has Services and EndpointSlices, the
//     source's egress to a ClusterIP and Service port is judged against
//     every ready backend (address and target port) and allowed only if
//     each is; without ready backends, or for a port the Service does not
//     have, the ClusterIP is an address like any other. The backend's
//     ingress is judged after the DNAT, where the packet arrives.
//
// Cluster policies of sigs.k8s.io/network-policy-api (ClusterNetworkPolicy
// v1beta1 and v1alpha2, and the v1alpha1 AdminNetworkPolicy and
// BaselineAdminNetworkPolicy) add two tiers around NetworkPolicy, per
// direction: the Admin tier first, whose Accept and Deny are final and whose
// Pass hands the decision on; then NetworkPolicy; then, only for a pod that
// no NetworkPolicy selects for the direction, the Baseline tier; then the
// default, which allows. Within a tier, lower priority first, rules in
// order, the first match acts. Their peers are namespaces and pods (both
// directions) and, for egress, networks (CIDRs) and nodes (the addresses of
// the selected [Cluster.Nodes]); domainNames peers are not implemented and
// match nothing. Tables without cluster policies skip the tiers with one
// nil test per lookup.
//
// The package has three layers:
//
//   - [Load] reads manifest files (YAML or JSON, multi-document, kind: List)
//     into a [Cluster], validating every object the way the API server does
//     (cluster policies as their CRDs' schemas and CEL rules do) and naming
//     file, object and field in errors.
//   - [Compile] turns a [Cluster] into a [table.Table]: pods are grouped
//     into identities (namespace and labels), selectors are evaluated once
//     into bitsets over identities, and each identity points at the
//     compiled rules of the policies that select it ([table.Spec]).
//   - A [Compiler] compiles as Compile does and keeps what it learned, so
//     that [Compiler.UpdatePods] can derive the next table from the last
//     when only pods changed: new identities are matched against the
//     selectors once and added to the peer sets, rules and groups they
//     join, copy-on-write (incremental.go).
//   - [Lint] reports what users commonly get wrong in a cluster that
//     compiled.
//
// Files go by concern: load.go (manifests); validate.go,
// cluster_validate.go and service_validate.go (validation and defaults, as
// the API server does them); compile.go (pods, namespaces, identities),
// compile_rules.go (NetworkPolicy rules and their groups), cluster.go and
// cluster_compile.go (cluster policies), service_compile.go (ClusterIPs and
// backends); lint.go and cluster_lint.go. Lookups, explanations and the
// matrix are package table's.
package policy
