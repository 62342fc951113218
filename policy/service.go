package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	netutils "k8s.io/utils/net"

	"github.com/podgate/podgate/internal/addrmap"
)

// Services and their endpoints.
//
// A pod's packet to a Service ClusterIP reaches the gateway before
// kube-proxy DNATs it to one of the Service's backends, in the kernel,
// after the gateway. Upstream semantics judge egress on the backend pod,
// so the table keeps an index from every ClusterIP to the Service's ports
// and, per port, the ready backends (address and target port) of the
// ClusterIP's family, from the EndpointSlices of the Service. The egress
// side of a connection to a ClusterIP and Service port is the AND of the
// egress decisions for every ready backend: kube-proxy picks the backend
// after the gateway has judged the packet, so only a connection that every
// backend may receive is safe to let through.

// ServiceInfo identifies a Service of a [Table].
type ServiceInfo struct {
	Namespace string
	Name      string
	// ClusterIPs are the Service's cluster addresses, primary first.
	ClusterIPs []netip.Addr
}

// String returns "namespace/name".
func (s ServiceInfo) String() string { return s.Namespace + "/" + s.Name }

// svcAddr is one ClusterIP of a Service: the Service's ports with the
// ready backends of the address's family.
type svcAddr struct {
	svc   int32 // index into Table.services
	ports []svcPort
}

// svcPort is one port of a Service and its ready backends.
type svcPort struct {
	name     string
	proto    Protocol
	port     uint16
	backends []svcBackend
}

// svcBackend is a ready endpoint behind a Service port: the address and
// port kube-proxy DNATs to, and the pod that owns the address (or -1).
type svcBackend struct {
	addr netip.Addr
	port uint16
	ep   int32
}

// Backend is a ready endpoint behind a Service port, as [Table.ServiceBackends]
// returns it.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Endpoint is the pod that owns Addr, or -1 when it is no pod's.
	Endpoint int32
}

// servicePort returns the port of the Service that owns the ClusterIP dst
// for proto and port, if it has ready backends; nil otherwise.
func (t *Table) servicePort(dst netip.Addr, proto Protocol, port uint16) *svcPort {
	if t.svcByAddr == nil || !proto.HasPorts() {
		return nil
	}
	i, ok := t.svcByAddr.Get(dst)
	if !ok {
		return nil
	}
	sa := &t.svcAddrs[i]
	for j := range sa.ports {
		p := &sa.ports[j]
		if p.proto == proto && p.port == port {
			if len(p.backends) == 0 {
				return nil
			}
			return p
		}
	}
	return nil
}

// decideService judges the egress of pod s (subject to egress policy) to
// the backends of sp: allowed only if every backend is.
func (t *Table) decideService(s int32, sp *svcPort, proto Protocol) Decision {
	if t.tiers != nil {
		return t.decideServiceTiers(s, sp, proto)
	}
	first := noRule
	for i := range sp.backends {
		b := &sp.backends[i]
		d := t.decide(Egress, s, b.ep, b.addr, proto, b.port, b.ep)
		switch d.Reason {
		case Denied:
			return d
		case AllowedByRule:
			if first.Policy < 0 {
				first = d.Rule
			}
		}
	}
	if first.Policy < 0 {
		// Every backend is the source itself.
		return Decision{Reason: Loopback, Endpoint: s, Rule: noRule}
	}
	return Decision{Reason: AllowedByRule, Endpoint: s, Rule: first}
}

// decideServiceTiers is decideService in a table with cluster policies,
// where decisions have more reasons: the first denial, or else the first
// backend's decision that is not the source's own (Loopback).
func (t *Table) decideServiceTiers(s int32, sp *svcPort, proto Protocol) Decision {
	out := Decision{Reason: Loopback, Endpoint: s, Rule: noRule}
	for i := range sp.backends {
		b := &sp.backends[i]
		d := t.decide(Egress, s, b.ep, b.addr, proto, b.port, b.ep)
		if !d.Allowed() {
			return d
		}
		if out.Reason == Loopback {
			out = d
		}
	}
	return out
}

// judgedOnBackends reports whether egress from pod s to a ClusterIP is
// judged against the Service's backends: when some policy (a
// NetworkPolicy or a cluster policy) governs the egress of s.
func (t *Table) judgedOnBackends(s int32) bool {
	return t.hot[s].groups[Egress] >= 0 || t.subjectOfTiers(s, Egress)
}

// egress decides the egress of pod s (>= 0) to dst, owned by pod d or -1.
func (t *Table) egress(s, d int32, dst netip.Addr, proto Protocol, dport uint16) Decision {
	if d < 0 && t.judgedOnBackends(s) {
		if sp := t.servicePort(dst, proto, dport); sp != nil {
			return t.decideService(s, sp, proto)
		}
	}
	return t.decide(Egress, s, d, dst, proto, dport, d)
}

// Services returns the Services of the table that have a ClusterIP,
// sorted by namespace and name. The caller must not modify them.
func (t *Table) Services() []ServiceInfo { return t.services }

// ServiceByAddr returns the Service whose ClusterIP addr is, unless addr is
// a pod's (pods win).
func (t *Table) ServiceByAddr(addr netip.Addr) (ServiceInfo, bool) {
	if t.svcByAddr == nil {
		return ServiceInfo{}, false
	}
	if _, isPod := t.byAddr.Get(addr); isPod {
		return ServiceInfo{}, false
	}
	i, ok := t.svcByAddr.Get(addr)
	if !ok {
		return ServiceInfo{}, false
	}
	return t.services[t.svcAddrs[i].svc], true
}

// ServiceBackends returns the ready backends of the Service port proto/port
// of the ClusterIP addr (of addr's family), and whether addr is a
// ClusterIP with that port. It allocates; lookups do not use it.
func (t *Table) ServiceBackends(addr netip.Addr, proto Protocol, port uint16) ([]Backend, bool) {
	if _, ok := t.ServiceByAddr(addr); !ok {
		return nil, false
	}
	i, _ := t.svcByAddr.Get(addr)
	for _, p := range t.svcAddrs[i].ports {
		if p.proto == proto && p.port == port {
			out := make([]Backend, len(p.backends))
			for j, b := range p.backends {
				out[j] = Backend{Addr: b.addr, Port: b.port, Endpoint: b.ep}
			}
			return out, true
		}
	}
	return nil, false
}

// parseServiceIP parses an address of a Service or an EndpointSlice as the
// API server's legacy validation accepts it (leading zeros in IPv4
// octets) and as kube-proxy reads it.
func parseServiceIP(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

var supportedProtocols = []string{string(corev1.ProtocolTCP), string(corev1.ProtocolUDP), string(corev1.ProtocolSCTP)}

func validProtocol(p corev1.Protocol) bool {
	return p == "" || p == corev1.ProtocolTCP || p == corev1.ProtocolUDP || p == corev1.ProtocolSCTP
}

// DefaultService returns a copy of svc with the API server's defaults that
// podgate relies on: the namespace defaults to "default", each port's
// protocol to TCP, and spec.clusterIPs to spec.clusterIP.
func DefaultService(svc *corev1.Service) *corev1.Service {
	out := svc.DeepCopy()
	out.Namespace = namespaceOf(&out.ObjectMeta)
	for i := range out.Spec.Ports {
		if out.Spec.Ports[i].Protocol == "" {
			out.Spec.Ports[i].Protocol = corev1.ProtocolTCP
		}
	}
	if len(out.Spec.ClusterIPs) == 0 && out.Spec.ClusterIP != "" {
		out.Spec.ClusterIPs = []string{out.Spec.ClusterIP}
	}
	return out
}

// DefaultEndpointSlice returns a copy of es with the namespace defaulting
// to "default" and each port's protocol to TCP, as the API server does.
func DefaultEndpointSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	out := es.DeepCopy()
	out.Namespace = namespaceOf(&out.ObjectMeta)
	for i := range out.Ports {
		if out.Ports[i].Protocol == nil {
			tcp := corev1.ProtocolTCP
			out.Ports[i].Protocol = &tcp
		}
	}
	return out
}

// ValidateService checks a defaulted Service in the fields podgate uses,
// the way the API server does: its name (a DNS-1035 label) and labels,
// spec.type, spec.clusterIP and spec.clusterIPs (valid addresses or
// "None", at most one per family), and spec.ports (names, numbers,
// protocols, uniqueness).
func ValidateService(svc *corev1.Service) field.ErrorList {
	allErrs := apimachineryvalidation.ValidateObjectMeta(&svc.ObjectMeta, true,
		apimachineryvalidation.NameIsDNS1035Label, field.NewPath("metadata"))
	spec := field.NewPath("spec")
	switch svc.Spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName:
	default:
		allErrs = append(allErrs, field.NotSupported(spec.Child("type"), svc.Spec.Type, []string{
			string(corev1.ServiceTypeClusterIP), string(corev1.ServiceTypeNodePort),
			string(corev1.ServiceTypeLoadBalancer), string(corev1.ServiceTypeExternalName)}))
	}
	allErrs = append(allErrs, validateClusterIPs(svc, spec)...)
	return append(allErrs, validateServicePorts(svc, spec, true)...)
}

func validateClusterIPs(svc *corev1.Service, spec *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		allErrs = append(allErrs, validation.IsValidIPForLegacyField(spec.Child("clusterIP"), ip, false, nil)...)
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) > 2 {
		allErrs = append(allErrs, field.TooMany(spec.Child("clusterIPs"), len(ips), 2))
	}
	if len(ips) > 0 && svc.Spec.ClusterIP != "" && ips[0] != svc.Spec.ClusterIP {
		allErrs = append(allErrs, field.Invalid(spec.Child("clusterIPs").Index(0), ips[0], "must match `clusterIP`"))
	}
	var seen []netip.Addr
	for i, ip := range ips {
		p := spec.Child("clusterIPs").Index(i)
		if ip == corev1.ClusterIPNone {
			if len(ips) > 1 {
				allErrs = append(allErrs, field.Invalid(p, ip, "`None` must be the only value"))
			}
			continue
		}
		errs := validation.IsValidIPForLegacyField(p, ip, false, nil)
		allErrs = append(allErrs, errs...)
		a, ok := parseServiceIP(ip)
		if len(errs) > 0 || !ok {
			continue
		}
		for _, prev := range seen {
			if prev.Is4() == a.Is4() {
				allErrs = append(allErrs, field.Invalid(p, ip, "may specify no more than one IP for each IP family"))
			}
		}
		seen = append(seen, a)
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName && len(seen) > 0 {
		allErrs = append(allErrs, field.Forbidden(spec.Child("clusterIP"), "may not be set for ExternalName services"))
	}
	return allErrs
}

// validateServicePorts checks a defaulted Service's ports: numbers and
// protocols always, names and uniqueness when full.
func validateServicePorts(svc *corev1.Service, spec *field.Path, full bool) field.ErrorList {
	var allErrs field.ErrorList
	names := map[string]bool{}
	type pp struct {
		proto corev1.Protocol
		port  int32
	}
	seen := map[pp]bool{}
	for i, p := range svc.Spec.Ports {
		path := spec.Child("ports").Index(i)
		for _, msg := range validation.IsValidPortNum(int(p.Port)) {
			allErrs = append(allErrs, field.Invalid(path.Child("port"), p.Port, msg))
		}
		if !validProtocol(p.Protocol) {
			allErrs = append(allErrs, field.NotSupported(path.Child("protocol"), p.Protocol, supportedProtocols))
		}
		if !full {
			continue
		}
		switch {
		case p.Name == "" && len(svc.Spec.Ports) > 1:
			allErrs = append(allErrs, field.Required(path.Child("name"), "must be specified when there is more than one port"))
		case p.Name != "":
			for _, msg := range validation.IsDNS1123Label(p.Name) {
				allErrs = append(allErrs, field.Invalid(path.Child("name"), p.Name, msg))
			}
			if names[p.Name] {
				allErrs = append(allErrs, field.Duplicate(path.Child("name"), p.Name))
			}
			names[p.Name] = true
		}
		k := pp{p.Protocol, p.Port}
		if seen[k] {
			allErrs = append(allErrs, field.Duplicate(path, fmt.Sprintf("%d/%s", p.Port, p.Protocol)))
		}
		seen[k] = true
	}
	return allErrs
}

// ValidateEndpointSlice checks a defaulted EndpointSlice in the fields
// podgate uses, the way the API server does: its name and labels,
// addressType, every endpoint's addresses (1 to 100, of the slice's
// family) and the ports (names, numbers, protocols, uniqueness).
func ValidateEndpointSlice(es *discoveryv1.EndpointSlice) field.ErrorList {
	allErrs := apimachineryvalidation.ValidateObjectMeta(&es.ObjectMeta, true,
		apimachineryvalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	return append(allErrs, validateEndpointSliceValues(es, true)...)
}

// validateEndpointSliceValues checks what compiling reads of an
// EndpointSlice: the address type, addresses and port numbers always, and
// with full also counts, port names and uniqueness.
func validateEndpointSliceValues(es *discoveryv1.EndpointSlice, full bool) field.ErrorList {
	var allErrs field.ErrorList
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	case "":
		allErrs = append(allErrs, field.Required(field.NewPath("addressType"), ""))
	default:
		allErrs = append(allErrs, field.NotSupported(field.NewPath("addressType"), es.AddressType, []string{
			string(discoveryv1.AddressTypeIPv4), string(discoveryv1.AddressTypeIPv6), string(discoveryv1.AddressTypeFQDN)}))
	}
	if full && len(es.Endpoints) > 1000 {
		allErrs = append(allErrs, field.TooMany(field.NewPath("endpoints"), len(es.Endpoints), 1000))
	}
	for i, ep := range es.Endpoints {
		path := field.NewPath("endpoints").Index(i).Child("addresses")
		if full && (len(ep.Addresses) == 0 || len(ep.Addresses) > 100) {
			allErrs = append(allErrs, field.Invalid(path, len(ep.Addresses), "must contain at least 1 and at most 100 addresses"))
		}
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for j, s := range ep.Addresses {
			a, ok := parseServiceIP(s)
			if !ok {
				allErrs = append(allErrs, field.Invalid(path.Index(j), s, "must be a valid IP address"))
				continue
			}
			if a.Is4() != (es.AddressType == discoveryv1.AddressTypeIPv4) {
				allErrs = append(allErrs, field.Invalid(path.Index(j), s, fmt.Sprintf("must be an %s address", es.AddressType)))
			}
		}
	}
	if full && len(es.Ports) > 100 {
		allErrs = append(allErrs, field.TooMany(field.NewPath("ports"), len(es.Ports), 100))
	}
	names := map[string]bool{}
	for i, p := range es.Ports {
		path := field.NewPath("ports").Index(i)
		if p.Port != nil {
			for _, msg := range validation.IsValidPortNum(int(*p.Port)) {
				allErrs = append(allErrs, field.Invalid(path.Child("port"), *p.Port, msg))
			}
		}
		if p.Protocol != nil && !validProtocol(*p.Protocol) {
			allErrs = append(allErrs, field.NotSupported(path.Child("protocol"), *p.Protocol, supportedProtocols))
		}
		if !full {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != "" {
			for _, msg := range validation.IsDNS1123Label(name) {
				allErrs = append(allErrs, field.Invalid(path.Child("name"), name, msg))
			}
		}
		if names[name] {
			allErrs = append(allErrs, field.Duplicate(path.Child("name"), name))
		}
		names[name] = true
	}
	return allErrs
}

// EndpointReady reports whether kube-proxy sends new connections to an
// endpoint: its ready condition is unset or true. Serving and terminating
// are not considered.
func EndpointReady(ep *discoveryv1.Endpoint) bool {
	return ep.Conditions.Ready == nil || *ep.Conditions.Ready
}

func (b *builder) validateService(svc *corev1.Service) field.ErrorList {
	if !b.opts.Trusted {
		return ValidateService(svc)
	}
	// The API server validated it: check only what compiling would
	// otherwise truncate or misread.
	return validateServicePorts(svc, field.NewPath("spec"), false)
}

func (b *builder) validateEndpointSlice(es *discoveryv1.EndpointSlice) field.ErrorList {
	if !b.opts.Trusted {
		return ValidateEndpointSlice(es)
	}
	return validateEndpointSliceValues(es, false)
}

// addServices builds the ClusterIP index from the Services and the
// EndpointSlices that carry the kubernetes.io/service-name label. It runs
// after addPods, whose address index resolves backends to pods.
func (b *builder) addServices(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice) []error {
	var errs []error
	t := b.t
	sorted := make([]*corev1.Service, 0, len(svcs))
	for _, s := range svcs {
		d := DefaultService(s)
		if el := b.validateService(d); len(el) > 0 {
			errs = append(errs, invalid("Service", d.Namespace, d.Name, el.ToAggregate()))
			continue
		}
		sorted = append(sorted, d)
	}
	slices.SortFunc(sorted, func(x, y *corev1.Service) int {
		return cmp.Or(cmp.Compare(x.Namespace, y.Namespace), cmp.Compare(x.Name, y.Name))
	})
	for i := 1; i < len(sorted); i++ {
		if sorted[i].Namespace == sorted[i-1].Namespace && sorted[i].Name == sorted[i-1].Name {
			errs = append(errs, invalid("Service", sorted[i].Namespace, sorted[i].Name, errors.New("declared more than once")))
		}
	}
	// EndpointSlices by the Service they belong to.
	type svcKey struct{ ns, name string }
	bySvc := map[svcKey][]*discoveryv1.EndpointSlice{}
	seenSlice := map[svcKey]bool{}
	for _, es := range eps {
		d := DefaultEndpointSlice(es)
		if el := b.validateEndpointSlice(d); len(el) > 0 {
			errs = append(errs, invalid("EndpointSlice", d.Namespace, d.Name, el.ToAggregate()))
			continue
		}
		if k := (svcKey{d.Namespace, d.Name}); seenSlice[k] {
			errs = append(errs, invalid("EndpointSlice", d.Namespace, d.Name, errors.New("declared more than once")))
			continue
		}
		seenSlice[svcKey{d.Namespace, d.Name}] = true
		if name := d.Labels[discoveryv1.LabelServiceName]; name != "" {
			k := svcKey{d.Namespace, name}
			bySvc[k] = append(bySvc[k], d)
		}
	}
	if len(errs) > 0 {
		return errs
	}

	type ipOf struct {
		svc  int32
		addr netip.Addr
	}
	var ips []ipOf
	n4, n6 := 0, 0
	for _, s := range sorted {
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		info := ServiceInfo{Namespace: s.Namespace, Name: s.Name}
		for _, ip := range s.Spec.ClusterIPs {
			if ip == corev1.ClusterIPNone || ip == "" {
				continue
			}
			a, ok := parseServiceIP(ip)
			if !ok {
				errs = append(errs, invalid("Service", s.Namespace, s.Name, fmt.Errorf("spec.clusterIPs: invalid IP address %q", ip)))
				continue
			}
			if slices.ContainsFunc(info.ClusterIPs, func(x netip.Addr) bool { return x.Is4() == a.Is4() }) {
				continue // one per family; the API server enforces it
			}
			info.ClusterIPs = append(info.ClusterIPs, a)
		}
		if len(info.ClusterIPs) == 0 {
			continue // headless or ExternalName: no address to translate
		}
		si := int32(len(t.services))
		t.services = append(t.services, info)
		for _, a := range info.ClusterIPs {
			ips = append(ips, ipOf{si, a})
			if a.Is4() {
				n4++
			} else {
				n6++
			}
			sa := svcAddr{svc: si}
			for _, p := range s.Spec.Ports {
				sa.ports = append(sa.ports, svcPort{
					name:     p.Name,
					proto:    protocolOf(&p.Protocol),
					port:     uint16(p.Port),
					backends: b.backends(bySvc[svcKey{s.Namespace, s.Name}], p, a.Is4()),
				})
				t.stats.ServiceBackends += len(sa.ports[len(sa.ports)-1].backends)
			}
			t.svcAddrs = append(t.svcAddrs, sa)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	t.svcByAddr = addrmap.New[int32](n4, n6)
	for i, ip := range ips {
		if !t.svcByAddr.Insert(ip.addr, int32(i)) {
			prev, _ := t.svcByAddr.Get(ip.addr)
			t.warnings = append(t.warnings, fmt.Sprintf("Services %s and %s both have ClusterIP %s; the address belongs to %s",
				t.services[t.svcAddrs[prev].svc], t.services[ip.svc], ip.addr, t.services[t.svcAddrs[prev].svc]))
			continue
		}
		if pod, isPod := t.byAddr.Get(ip.addr); isPod {
			t.warnings = append(t.warnings, fmt.Sprintf("Service %s has ClusterIP %s, which is pod %s's address; the address is treated as the pod's",
				t.services[ip.svc], ip.addr, t.endpoints[pod].String()))
		}
	}
	t.stats.Services = len(t.services)
	return nil
}

// backends returns the ready backends of Service port p of the family is4
// from the Service's EndpointSlices: the first address of every ready
// endpoint (kube-proxy ignores the others) with the number of the slice
// port that has p's name and protocol. Sorted by address and port,
// without duplicates.
func (b *builder) backends(eslices []*discoveryv1.EndpointSlice, p corev1.ServicePort, is4 bool) []svcBackend {
	want := discoveryv1.AddressTypeIPv6
	if is4 {
		want = discoveryv1.AddressTypeIPv4
	}
	var out []svcBackend
	for _, es := range eslices {
		if es.AddressType != want {
			continue
		}
		port := int32(-1)
		for _, ep := range es.Ports {
			name := ""
			if ep.Name != nil {
				name = *ep.Name
			}
			if name == p.Name && ep.Port != nil && ep.Protocol != nil && *ep.Protocol == p.Protocol {
				port = *ep.Port
				break
			}
		}
		if port < 1 || port > 65535 {
			continue // no such port in this slice
		}
		for i := range es.Endpoints {
			e := &es.Endpoints[i]
			if !EndpointReady(e) || len(e.Addresses) == 0 {
				continue
			}
			a, ok := parseServiceIP(e.Addresses[0])
			if !ok || a.Is4() != is4 {
				continue
			}
			out = append(out, svcBackend{addr: a, port: uint16(port), ep: b.t.resolve(a)})
		}
	}
	slices.SortFunc(out, func(x, y svcBackend) int { return cmp.Or(x.addr.Compare(y.addr), cmp.Compare(x.port, y.port)) })
	return slices.CompactFunc(out, func(x, y svcBackend) bool { return x.addr == y.addr && x.port == y.port })
}
