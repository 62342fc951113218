package table

import "net/netip"

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

// ServiceAddr is one ClusterIP of a Service: the Service's ports with the
// ready backends of the address's family.
type ServiceAddr struct {
	Service int32 // index into Spec.Services
	Ports   []ServicePort
}

// ServicePort is one port of a Service and its ready backends.
type ServicePort struct {
	Name     string
	Proto    Protocol
	Port     uint16
	Backends []Backend
}

// Backend is a ready endpoint behind a Service port: the address and port
// kube-proxy DNATs to, and the pod that owns the address.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Endpoint is the pod that owns Addr, or -1 when it is no pod's.
	Endpoint int32
}

// servicePort returns the port of the Service that owns the ClusterIP dst
// for proto and port, if it has ready backends; nil otherwise.
func (t *Table) servicePort(dst netip.Addr, proto Protocol, port uint16) *ServicePort {
	if t.spec.ServiceByAddr == nil || !proto.HasPorts() {
		return nil
	}
	i, ok := t.spec.ServiceByAddr.Get(dst)
	if !ok {
		return nil
	}
	sa := &t.spec.ServiceAddrs[i]
	for j := range sa.Ports {
		p := &sa.Ports[j]
		if p.Proto == proto && p.Port == port {
			if len(p.Backends) == 0 {
				return nil
			}
			return p
		}
	}
	return nil
}

// decideService judges the egress of pod s (subject to egress policy) to
// the backends of sp: allowed only if every backend is.
func (t *Table) decideService(s int32, sp *ServicePort, proto Protocol) Decision {
	if t.tiers != nil {
		return t.decideServiceTiers(s, sp, proto)
	}
	first := noRule
	for i := range sp.Backends {
		b := &sp.Backends[i]
		d := t.decide(Egress, s, b.Endpoint, b.Addr, proto, b.Port, b.Endpoint)
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
func (t *Table) decideServiceTiers(s int32, sp *ServicePort, proto Protocol) Decision {
	out := Decision{Reason: Loopback, Endpoint: s, Rule: noRule}
	for i := range sp.Backends {
		b := &sp.Backends[i]
		d := t.decide(Egress, s, b.Endpoint, b.Addr, proto, b.Port, b.Endpoint)
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
func (t *Table) Services() []ServiceInfo { return t.spec.Services }

// ServiceByAddr returns the Service whose ClusterIP addr is, unless addr is
// a pod's (pods win).
func (t *Table) ServiceByAddr(addr netip.Addr) (ServiceInfo, bool) {
	if t.spec.ServiceByAddr == nil {
		return ServiceInfo{}, false
	}
	if _, isPod := t.spec.ByAddr.Get(addr); isPod {
		return ServiceInfo{}, false
	}
	i, ok := t.spec.ServiceByAddr.Get(addr)
	if !ok {
		return ServiceInfo{}, false
	}
	return t.spec.Services[t.spec.ServiceAddrs[i].Service], true
}

// ServiceBackends returns the ready backends of the Service port proto/port
// of the ClusterIP addr (of addr's family), and whether addr is a
// ClusterIP with that port. It allocates; lookups do not use it.
func (t *Table) ServiceBackends(addr netip.Addr, proto Protocol, port uint16) ([]Backend, bool) {
	if _, ok := t.ServiceByAddr(addr); !ok {
		return nil, false
	}
	i, _ := t.spec.ServiceByAddr.Get(addr)
	for _, p := range t.spec.ServiceAddrs[i].Ports {
		if p.Proto == proto && p.Port == port {
			out := make([]Backend, len(p.Backends))
			copy(out, p.Backends)
			return out, true
		}
	}
	return nil, false
}
