package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/podgate/podgate/internal/addrmap"
	"github.com/podgate/podgate/policy/table"
)

// Services in a compiled table: the index from every ClusterIP to the
// Service's ports and their ready backends (table.ServiceAddr), built from
// the Services and their EndpointSlices. How a lookup uses it is in
// package table (service.go).

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
	spec := b.spec
	sorted, errs := defaultAndSort("Service", svcs, DefaultService, b.validateService)
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
		info := table.ServiceInfo{Namespace: s.Namespace, Name: s.Name}
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
		si := int32(len(spec.Services))
		spec.Services = append(spec.Services, info)
		for _, a := range info.ClusterIPs {
			ips = append(ips, ipOf{si, a})
			if a.Is4() {
				n4++
			} else {
				n6++
			}
			sa := table.ServiceAddr{Service: si}
			for _, p := range s.Spec.Ports {
				sa.Ports = append(sa.Ports, table.ServicePort{
					Name:     p.Name,
					Proto:    protocolOf(&p.Protocol),
					Port:     uint16(p.Port),
					Backends: b.backends(bySvc[svcKey{s.Namespace, s.Name}], p, a.Is4()),
				})
				spec.Stats.ServiceBackends += len(sa.Ports[len(sa.Ports)-1].Backends)
			}
			spec.ServiceAddrs = append(spec.ServiceAddrs, sa)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	spec.ServiceByAddr = addrmap.New[int32](n4, n6)
	for i, ip := range ips {
		if !spec.ServiceByAddr.Insert(ip.addr, int32(i)) {
			prev, _ := spec.ServiceByAddr.Get(ip.addr)
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("Services %s and %s both have ClusterIP %s; the address belongs to %s",
				spec.Services[spec.ServiceAddrs[prev].Service], spec.Services[ip.svc], ip.addr, spec.Services[spec.ServiceAddrs[prev].Service]))
			continue
		}
		if pod, isPod := spec.ByAddr.Get(ip.addr); isPod {
			b.podWarnings = true
			spec.Warnings = append(spec.Warnings, fmt.Sprintf("Service %s has ClusterIP %s, which is pod %s's address; the address is treated as the pod's",
				spec.Services[ip.svc], ip.addr, spec.Endpoints[pod].String()))
		}
	}
	spec.Stats.Services = len(spec.Services)
	return nil
}

// backends returns the ready backends of Service port p of the family is4
// from the Service's EndpointSlices: the first address of every ready
// endpoint (kube-proxy ignores the others) with the number of the slice
// port that has p's name and protocol. Sorted by address and port,
// without duplicates.
func (b *builder) backends(eslices []*discoveryv1.EndpointSlice, p corev1.ServicePort, is4 bool) []table.Backend {
	want := discoveryv1.AddressTypeIPv6
	if is4 {
		want = discoveryv1.AddressTypeIPv4
	}
	var out []table.Backend
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
			out = append(out, table.Backend{Addr: a, Port: uint16(port), Endpoint: b.resolve(a)})
		}
	}
	slices.SortFunc(out, func(x, y table.Backend) int { return cmp.Or(x.Addr.Compare(y.Addr), cmp.Compare(x.Port, y.Port)) })
	return slices.CompactFunc(out, func(x, y table.Backend) bool { return x.Addr == y.Addr && x.Port == y.Port })
}
