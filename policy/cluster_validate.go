package policy

import (
	"fmt"
	"net/netip"
	"regexp"

	"github.com/podgate/podgate/policy/table"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation/field"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Validation of cluster policies: what the CustomResourceDefinitions of
// sigs.k8s.io/network-policy-api v0.3.0 enforce. For ClusterNetworkPolicy
// that is the schema and the CEL rules of
// config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml
// (the experimental channel, a superset of the standard one: it adds nodes
// and domainNames peers and destinationNamedPort); v1alpha2 has the same
// schema. The module ships no CRD for the v1alpha1 kinds any more, so
// AdminNetworkPolicy and BaselineAdminNetworkPolicy are validated as the
// kubebuilder markers of their Go types in the module generate it.
//
// One check goes beyond the CRDs: label selectors must be ones a selector
// can be built from (operator In, NotIn, Exists or DoesNotExist, valid
// label keys and values). The schema only checks their structure; an API
// server accepts a selector with operator "Equals", which no implementation
// can enforce.

// Limits of the CRD schemas.
const (
	cnpMaxRules    = 25  // ClusterNetworkPolicy: spec.ingress, spec.egress, from, to, protocols
	anpMaxRules    = 100 // v1alpha1: spec.ingress, spec.egress, from, to, ports
	maxPeerItems   = 25  // networks and domainNames
	maxRuleName    = 100
	maxCIDRLength  = 43
	maxPriority    = 1000
	cnpNamedPortOn = "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames"
)

// domainNameRE is the pattern of the DomainName type.
var domainNameRE = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`)

// ValidateClusterNetworkPolicy checks a ClusterNetworkPolicy (v1beta1; a
// v1alpha2 object decoded into the v1beta1 type is checked the same way)
// as the API server does with the CRD installed, except for the presence
// of required fields that Go zero values hide (spec.priority and
// podSelector of pods selectors), which [Load] checks on the manifest.
func ValidateClusterNetworkPolicy(cnp *npav1beta1.ClusterNetworkPolicy) field.ErrorList {
	allErrs := validateClusterMeta(&cnp.ObjectMeta)
	spec := field.NewPath("spec")
	switch cnp.Spec.Tier {
	case npav1beta1.AdminTier, npav1beta1.BaselineTier:
	case "":
		allErrs = append(allErrs, field.Required(spec.Child("tier"), ""))
	default:
		allErrs = append(allErrs, field.NotSupported(spec.Child("tier"), cnp.Spec.Tier, []string{string(npav1beta1.AdminTier), string(npav1beta1.BaselineTier)}))
	}
	allErrs = append(allErrs, validatePriority(cnp.Spec.Priority, spec.Child("priority"))...)
	allErrs = append(allErrs, validateSubject(cnp.Spec.Subject.Namespaces, cnpPods(cnp.Spec.Subject.Pods), spec.Child("subject"))...)
	allErrs = append(allErrs, maxItems(len(cnp.Spec.Ingress), cnpMaxRules, spec.Child("ingress"))...)
	for i := range cnp.Spec.Ingress {
		r := &cnp.Spec.Ingress[i]
		rp := spec.Child("ingress").Index(i)
		allErrs = append(allErrs, validateRuleHead(r.Name, string(r.Action), cnpActions, rp)...)
		allErrs = append(allErrs, validatePeers(r.From, cnpIngressPeer, cnpMaxRules, rp.Child("from"))...)
		allErrs = append(allErrs, validateProtocols(r.Protocols, rp.Child("protocols"))...)
	}
	allErrs = append(allErrs, maxItems(len(cnp.Spec.Egress), cnpMaxRules, spec.Child("egress"))...)
	for i := range cnp.Spec.Egress {
		r := &cnp.Spec.Egress[i]
		rp := spec.Child("egress").Index(i)
		allErrs = append(allErrs, validateRuleHead(r.Name, string(r.Action), cnpActions, rp)...)
		allErrs = append(allErrs, validatePeers(r.To, cnpEgressPeer, cnpMaxRules, rp.Child("to"))...)
		allErrs = append(allErrs, validateProtocols(r.Protocols, rp.Child("protocols"))...)
		named := false
		for _, p := range r.Protocols {
			named = named || p.DestinationNamedPort != ""
		}
		allErrs = append(allErrs, validateNamedPortPeers(r.To, cnpEgressPeer, named, cnpNamedPortOn, rp)...)
	}
	return allErrs
}

// validateSubject checks a subject: exactly one of namespaces and pods.
func validateSubject(namespaces *metav1.LabelSelector, pods *cselector, fp *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	switch n := countSet(namespaces != nil, pods != nil); {
	case n == 0:
		allErrs = append(allErrs, field.Required(fp, "must set one of namespaces or pods"))
	case n > 1:
		allErrs = append(allErrs, field.TooMany(fp, n, 1))
	}
	return append(allErrs, validatePeerSelectors(peerFields{namespaces: namespaces, pods: pods}, fp)...)
}

// validatePeers checks a required list of peers (1 to limit items), each
// with exactly one field.
func validatePeers[T any](ps []T, fields func(*T) peerFields, limit int, fp *field.Path) field.ErrorList {
	allErrs := itemCount(ps == nil, len(ps), limit, fp)
	for j := range ps {
		f := fields(&ps[j])
		pp := fp.Index(j)
		allErrs = append(allErrs, exactlyOne(pp, countSet(f.namespaces != nil, f.pods != nil, f.nodes != nil, f.networks != nil, f.domains != nil))...)
		allErrs = append(allErrs, validatePeerSelectors(f, pp)...)
		allErrs = append(allErrs, validateNetworks(f.networks, f.networks != nil, pp.Child("networks"))...)
		allErrs = append(allErrs, validateDomainNames(f.domains, f.domains != nil, pp.Child("domainNames"))...)
	}
	return allErrs
}

// validatePeerSelectors checks the selectors of a peer or subject.
func validatePeerSelectors(f peerFields, fp *field.Path) field.ErrorList {
	allErrs := validateSelector(f.namespaces, fp.Child("namespaces"))
	if f.pods != nil {
		allErrs = append(allErrs, validateSelector(f.pods.ns, fp.Child("pods", "namespaceSelector"))...)
		allErrs = append(allErrs, validateSelector(f.pods.pod, fp.Child("pods", "podSelector"))...)
	}
	return append(allErrs, validateSelector(f.nodes, fp.Child("nodes"))...)
}

// validateNamedPortPeers is the CEL rule of egress rules: named ports do
// not go with networks, nodes or domainNames peers.
func validateNamedPortPeers[T any](ps []T, fields func(*T) peerFields, named bool, msg string, rp *field.Path) field.ErrorList {
	if !named {
		return nil
	}
	for j := range ps {
		if fields(&ps[j]).address() {
			return field.ErrorList{field.Invalid(rp, "object", msg)}
		}
	}
	return nil
}

var (
	cnpActions  = []string{"Accept", "Deny", "Pass"}
	anpActions  = []string{"Allow", "Deny", "Pass"}
	banpActions = []string{"Allow", "Deny"}
	alphaProtos = []string{"TCP", "UDP", "SCTP"}
)

// validateClusterMeta checks the metadata of a cluster-scoped custom
// resource: its name must be a DNS subdomain.
func validateClusterMeta(m *metav1.ObjectMeta) field.ErrorList {
	meta := *m
	// A cluster-scoped object has no namespace; the API server ignores
	// one in a manifest ([Load] notes it).
	meta.Namespace = ""
	return apimachineryvalidation.ValidateObjectMeta(&meta, false, apimachineryvalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
}

func validatePriority(p int32, fp *field.Path) field.ErrorList {
	if p < 0 || p > maxPriority {
		return field.ErrorList{field.Invalid(fp, p, fmt.Sprintf("must be from 0 to %d", maxPriority))}
	}
	return nil
}

func countSet(set ...bool) int {
	n := 0
	for _, s := range set {
		if s {
			n++
		}
	}
	return n
}

// exactlyOne reports an object with none or more than one of its fields
// set (MinProperties=1, MaxProperties=1).
func exactlyOne(fp *field.Path, n int) field.ErrorList {
	switch {
	case n == 0:
		return field.ErrorList{field.Invalid(fp, 0, "must have exactly one field set (minProperties 1)")}
	case n > 1:
		return field.ErrorList{field.TooMany(fp, n, 1)}
	}
	return nil
}

func maxItems(n, limit int, fp *field.Path) field.ErrorList {
	if n > limit {
		return field.ErrorList{field.TooMany(fp, n, limit)}
	}
	return nil
}

// itemCount checks a required list with at least one and at most limit
// items.
func itemCount(absent bool, n, limit int, fp *field.Path) field.ErrorList {
	switch {
	case absent:
		return field.ErrorList{field.Required(fp, "")}
	case n == 0:
		return field.ErrorList{field.Invalid(fp, 0, "must have at least 1 item")}
	}
	return maxItems(n, limit, fp)
}

// optionalItems checks an optional list that, when present, has at least
// one and at most limit items.
func optionalItems(present bool, n, limit int, fp *field.Path) field.ErrorList {
	if !present {
		return nil
	}
	return itemCount(false, n, limit, fp)
}

func validateRuleHead(name, action string, actions []string, fp *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if len(name) > maxRuleName {
		allErrs = append(allErrs, field.TooLong(fp.Child("name"), "", maxRuleName))
	}
	switch {
	case action == "":
		allErrs = append(allErrs, field.Required(fp.Child("action"), ""))
	case !sets.New(actions...).Has(action):
		allErrs = append(allErrs, field.NotSupported(fp.Child("action"), action, actions))
	}
	return allErrs
}

// validateSelector checks that a selector (nil: absent) can be built.
func validateSelector(s *metav1.LabelSelector, fp *field.Path) field.ErrorList {
	if s == nil {
		return nil
	}
	allErrs := field.ErrorList{}
	for i, e := range s.MatchExpressions {
		ep := fp.Child("matchExpressions").Index(i)
		if e.Key == "" {
			allErrs = append(allErrs, field.Required(ep.Child("key"), ""))
		}
		if e.Operator == "" {
			allErrs = append(allErrs, field.Required(ep.Child("operator"), ""))
		}
	}
	if len(allErrs) > 0 {
		return allErrs
	}
	if _, err := metav1.LabelSelectorAsSelector(s); err != nil {
		return field.ErrorList{field.Invalid(fp, s.String(), fmt.Sprintf("not a label selector: %v", err))}
	}
	return nil
}

// parseNetwork parses a CIDR of a networks peer as the CRD's CEL rule
// "isCIDR(self) && cidr(self) == cidr(self).masked()" does (the API
// server's CEL library parses with netip.ParsePrefix and rejects
// IPv4-mapped IPv6).
func parseNetwork(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("IPv4-mapped IPv6 address %q is not allowed", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (want %s)", s, p.Masked())
	}
	return p, nil
}

func validateNetworks(nets []string, present bool, fp *field.Path) field.ErrorList {
	allErrs := optionalItems(present, len(nets), maxPeerItems, fp)
	seen := sets.New[string]()
	for i, n := range nets {
		np := fp.Index(i)
		if len(n) > maxCIDRLength {
			allErrs = append(allErrs, field.TooLong(np, "", maxCIDRLength))
		}
		if _, err := parseNetwork(n); err != nil {
			allErrs = append(allErrs, field.Invalid(np, n, "Invalid CIDR format provided: "+err.Error()))
		}
		if seen.Has(n) {
			allErrs = append(allErrs, field.Duplicate(np, n))
		}
		seen.Insert(n)
	}
	return allErrs
}

func validateDomainNames(names []string, present bool, fp *field.Path) field.ErrorList {
	allErrs := optionalItems(present, len(names), maxPeerItems, fp)
	seen := sets.New[string]()
	for i, n := range names {
		if !domainNameRE.MatchString(n) {
			allErrs = append(allErrs, field.Invalid(fp.Index(i), n, "must be a domain name, optionally with a leading '*.'"))
		}
		if seen.Has(n) {
			allErrs = append(allErrs, field.Duplicate(fp.Index(i), n))
		}
		seen.Insert(n)
	}
	return allErrs
}

func validateProtocols(ps []npav1beta1.ClusterNetworkPolicyProtocol, fp *field.Path) field.ErrorList {
	allErrs := optionalItems(ps != nil, len(ps), cnpMaxRules, fp)
	for i := range ps {
		p := &ps[i]
		pp := fp.Index(i)
		allErrs = append(allErrs, exactlyOne(pp, countSet(p.TCP != nil, p.UDP != nil, p.SCTP != nil, p.DestinationNamedPort != ""))...)
		check := func(name string, dp *npav1beta1.Port) {
			allErrs = append(allErrs, validateDestinationPort(dp, pp.Child(name))...)
		}
		if p.TCP != nil {
			check("tcp", p.TCP.DestinationPort)
		}
		if p.UDP != nil {
			check("udp", p.UDP.DestinationPort)
		}
		if p.SCTP != nil {
			check("sctp", p.SCTP.DestinationPort)
		}
	}
	return allErrs
}

// validateDestinationPort checks the destinationPort of a tcp, udp or sctp
// entry at fp: required (the entry has minProperties 1), exactly one of
// number and range.
func validateDestinationPort(dp *npav1beta1.Port, fp *field.Path) field.ErrorList {
	if dp == nil {
		return field.ErrorList{field.Invalid(fp, 0, "must set destinationPort (minProperties 1)")}
	}
	dpp := fp.Child("destinationPort")
	allErrs := exactlyOne(dpp, countSet(dp.Number != 0, dp.Range != nil))
	if dp.Number != 0 {
		allErrs = append(allErrs, validatePortNumber(dp.Number, dpp.Child("number"))...)
	}
	if r := dp.Range; r != nil {
		rp := dpp.Child("range")
		allErrs = append(allErrs, validatePortNumber(r.Start, rp.Child("start"))...)
		allErrs = append(allErrs, validatePortNumber(r.End, rp.Child("end"))...)
		if r.Start >= r.End {
			allErrs = append(allErrs, field.Invalid(rp, fmt.Sprintf("%d-%d", r.Start, r.End), "Start port must be less than End port"))
		}
	}
	return allErrs
}

func validatePortNumber(n int32, fp *field.Path) field.ErrorList {
	if n < 1 || n > 65535 {
		return field.ErrorList{field.Invalid(fp, n, "must be from 1 to 65535")}
	}
	return nil
}

// ValidateAdminNetworkPolicy checks a v1alpha1 AdminNetworkPolicy as the
// CRD generated from its Go type in sigs.k8s.io/network-policy-api v0.3.0
// would, except for the presence of required fields that Go zero values
// hide, which [Load] checks on the manifest.
func ValidateAdminNetworkPolicy(anp *npav1alpha1.AdminNetworkPolicy) field.ErrorList {
	allErrs := validateClusterMeta(&anp.ObjectMeta)
	spec := field.NewPath("spec")
	allErrs = append(allErrs, validatePriority(anp.Spec.Priority, spec.Child("priority"))...)
	allErrs = append(allErrs, validateSubject(anp.Spec.Subject.Namespaces, alphaPods(anp.Spec.Subject.Pods), spec.Child("subject"))...)
	allErrs = append(allErrs, maxItems(len(anp.Spec.Ingress), anpMaxRules, spec.Child("ingress"))...)
	for i := range anp.Spec.Ingress {
		r := &anp.Spec.Ingress[i]
		allErrs = append(allErrs, validateAlphaRule(r.Name, string(r.Action), anpActions, r.Ports, spec.Child("ingress").Index(i))...)
		allErrs = append(allErrs, validatePeers(r.From, alphaIngressPeer, anpMaxRules, spec.Child("ingress").Index(i).Child("from"))...)
	}
	allErrs = append(allErrs, maxItems(len(anp.Spec.Egress), anpMaxRules, spec.Child("egress"))...)
	for i := range anp.Spec.Egress {
		r := &anp.Spec.Egress[i]
		rp := spec.Child("egress").Index(i)
		allErrs = append(allErrs, validateAlphaRule(r.Name, string(r.Action), anpActions, r.Ports, rp)...)
		allErrs = append(allErrs, validatePeers(r.To, anpEgressPeer, anpMaxRules, rp.Child("to"))...)
		allErrs = append(allErrs, validateNamedPortPeers(r.To, anpEgressPeer, alphaNamedPort(r.Ports), cnpNamedPortOn, rp)...)
	}
	return allErrs
}

// ValidateBaselineAdminNetworkPolicy checks a v1alpha1
// BaselineAdminNetworkPolicy like [ValidateAdminNetworkPolicy]; its name
// must be "default" (the cluster has at most one).
func ValidateBaselineAdminNetworkPolicy(banp *npav1alpha1.BaselineAdminNetworkPolicy) field.ErrorList {
	allErrs := validateClusterMeta(&banp.ObjectMeta)
	if banp.Name != "default" {
		allErrs = append(allErrs, field.Invalid(field.NewPath("metadata", "name"), banp.Name,
			`Only one baseline admin network policy with metadata.name="default" can be created in the cluster`))
	}
	spec := field.NewPath("spec")
	allErrs = append(allErrs, validateSubject(banp.Spec.Subject.Namespaces, alphaPods(banp.Spec.Subject.Pods), spec.Child("subject"))...)
	allErrs = append(allErrs, maxItems(len(banp.Spec.Ingress), anpMaxRules, spec.Child("ingress"))...)
	for i := range banp.Spec.Ingress {
		r := &banp.Spec.Ingress[i]
		allErrs = append(allErrs, validateAlphaRule(r.Name, string(r.Action), banpActions, r.Ports, spec.Child("ingress").Index(i))...)
		allErrs = append(allErrs, validatePeers(r.From, alphaIngressPeer, anpMaxRules, spec.Child("ingress").Index(i).Child("from"))...)
	}
	allErrs = append(allErrs, maxItems(len(banp.Spec.Egress), anpMaxRules, spec.Child("egress"))...)
	for i := range banp.Spec.Egress {
		r := &banp.Spec.Egress[i]
		rp := spec.Child("egress").Index(i)
		allErrs = append(allErrs, validateAlphaRule(r.Name, string(r.Action), banpActions, r.Ports, rp)...)
		allErrs = append(allErrs, validatePeers(r.To, banpEgressPeer, anpMaxRules, rp.Child("to"))...)
		allErrs = append(allErrs, validateNamedPortPeers(r.To, banpEgressPeer, alphaNamedPort(r.Ports),
			"networks/nodes peer cannot be set with namedPorts since there are no namedPorts for networks/nodes", rp)...)
	}
	return allErrs
}

// validateAlphaRule checks a v1alpha1 rule's name, action and ports.
func validateAlphaRule(name, action string, actions []string, ports *[]npav1alpha1.AdminNetworkPolicyPort, rp *field.Path) field.ErrorList {
	return append(validateRuleHead(name, action, actions, rp), validateAlphaPorts(ports, rp.Child("ports"))...)
}

func alphaNamedPort(ports *[]npav1alpha1.AdminNetworkPolicyPort) bool {
	if ports == nil {
		return false
	}
	for _, p := range *ports {
		if p.NamedPort != nil {
			return true
		}
	}
	return false
}

func validateAlphaProtocol(p string, fp *field.Path) field.ErrorList {
	if p != "" && !sets.New(alphaProtos...).Has(p) {
		return field.ErrorList{field.NotSupported(fp, p, alphaProtos)}
	}
	return nil
}

func validateAlphaPorts(ports *[]npav1alpha1.AdminNetworkPolicyPort, fp *field.Path) field.ErrorList {
	if ports == nil {
		return nil
	}
	allErrs := itemCount(false, len(*ports), anpMaxRules, fp)
	for i, p := range *ports {
		pp := fp.Index(i)
		allErrs = append(allErrs, exactlyOne(pp, countSet(p.PortNumber != nil, p.NamedPort != nil, p.PortRange != nil))...)
		if n := p.PortNumber; n != nil {
			allErrs = append(allErrs, validateAlphaProtocol(string(n.Protocol), pp.Child("portNumber", "protocol"))...)
			allErrs = append(allErrs, validatePortNumber(n.Port, pp.Child("portNumber", "port"))...)
		}
		if r := p.PortRange; r != nil {
			rp := pp.Child("portRange")
			allErrs = append(allErrs, validateAlphaProtocol(string(r.Protocol), rp.Child("protocol"))...)
			allErrs = append(allErrs, validatePortNumber(r.Start, rp.Child("start"))...)
			allErrs = append(allErrs, validatePortNumber(r.End, rp.Child("end"))...)
		}
	}
	return allErrs
}

// clusterPolicyWarnings returns what a valid cluster policy asks for that
// podgate does not do, or does differently than it may look.
func clusterPolicyWarnings(p *cpolicy) []string {
	var out []string
	for dir := table.Ingress; dir <= table.Egress; dir++ {
		for i, r := range p.rules[dir] {
			for j, peer := range r.peers {
				where := fmt.Sprintf("spec.%s[%d].%s[%d]", dir, i, peersField(dir), j)
				if peer.domains != nil {
					out = append(out, fmt.Sprintf("%s.domainNames: podgate does not implement domainNames (FQDN) peers: the peer matches no connection (an Accept rule with it accepts nothing more)", where))
				}
			}
			for j, pt := range r.ports {
				if pt.name == "" && pt.lo > pt.hi {
					out = append(out, fmt.Sprintf("spec.%s[%d].ports[%d].portRange: start %d is greater than end %d: the range matches no port", dir, i, j, pt.lo, pt.hi))
				}
			}
		}
	}
	return out
}

func peersField(dir table.Direction) string {
	if dir == table.Egress {
		return "to"
	}
	return "from"
}
