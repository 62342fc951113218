// Package table is the compiled, immutable policy table that the fastpath
// consults for every new flow: "may this source talk to this destination
// on this protocol and port, and why". It imports nothing from
// Kubernetes; package policy reads manifests and API objects, validates
// them and compiles them into a [Spec], which [New] turns into a [Table].
//
// A [Table] answers lookups ([Table.Lookup], [Table.Ingress],
// [Table.Egress]) without locks or allocation: an address-index probe per
// side, then a scan of the rules of the policies that select the pod in
// question, independent of the total number of policies; egress to a
// Service's ClusterIP costs one more probe and one rule scan per ready
// backend. Each side of a connection gets a [Decision] with a [Reason];
// a [Verdict] holds both. Tables with cluster policies
// (ClusterNetworkPolicy) go through the Admin tier, NetworkPolicy, then the
// Baseline tier; the others skip the tiers with one nil test per lookup.
//
// A [Store] publishes the current table through an atomic pointer so that
// readers (the fastpath workers) never lock.
//
// [Table.Explain] says why a connection is allowed or denied (the
// `podgate policy check` output), [Table.Matrix] decides every pair of
// pods for a list of ports ([PortSpec]).
//
// The data types of a [Spec] (identities, rule groups, compiled rules,
// Services, tier groups) are exported so that the compiler can fill them;
// once a table is made of them, nobody modifies them.
package table
