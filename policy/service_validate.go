package policy

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	netutils "k8s.io/utils/net"
)

// Services and EndpointSlices: defaults and validation, as the API server
// does them, of the fields podgate reads. How egress to a ClusterIP is
// judged is in package table (service.go); how the index of ClusterIPs is
// built, in service_compile.go.

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
