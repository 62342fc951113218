package lab

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Service is a Service of the manifests as the lab's nodes serve it: the
// part of kube-proxy that matters to policy, DNAT from a ClusterIP and
// Service port to one of the ready backends, programmed with iptables in
// every node's namespace (see [Lab.Services]).
type Service struct {
	// Name is "namespace/name".
	Name string
	// ClusterIPs are the Service's cluster addresses, one per family.
	ClusterIPs []netip.Addr
	Ports      []ServicePort
}

// ServicePort is a port of a [Service] and the backends the lab DNATs it
// to.
type ServicePort struct {
	Name     string
	Protocol table.Protocol
	Port     uint16
	// Backends are the ready endpoints of the port that are lab endpoints
	// (pods of any of the lab's nodes, outside hosts), of both families:
	// the first address of each ready endpoint of the Service's
	// EndpointSlices with the slice port of the same name and protocol.
	// Backends that are not in the lab (pods of nodes left out with
	// Spec.NodeName, unknown addresses) are left out, with a note.
	Backends []Backend
}

// Backend is a DNAT target of a [ServicePort].
type Backend struct {
	Addr     netip.Addr
	Port     uint16
	Endpoint *Endpoint
}

// String returns "Service namespace/name", the name a probe to the
// Service reports as its destination.
func (s *Service) String() string { return "Service " + s.Name }

// port returns the Service's port proto/port, or nil.
func (s *Service) port(proto table.Protocol, port uint16) *ServicePort {
	for i := range s.Ports {
		if s.Ports[i].Protocol == proto && s.Ports[i].Port == port {
			return &s.Ports[i]
		}
	}
	return nil
}

// backends returns the backends of sp of a's family.
func (sp *ServicePort) backends(is4 bool) []Backend {
	var out []Backend
	for _, b := range sp.Backends {
		if b.Addr.Is4() == is4 {
			out = append(out, b)
		}
	}
	return out
}

// planServices reads the Services of m the way kube-proxy does: every
// ClusterIP (not headless, not ExternalName) and port, with the ready
// backends of its EndpointSlices. owner resolves a backend address to a
// lab endpoint (nil: not in the lab). The manifests were validated by
// policy.Load.
func planServices(m *policy.Manifests, owner func(netip.Addr) *Endpoint) ([]Service, []string) {
	var out []Service
	var notes []string
	svcs := slices.Clone(m.Services)
	slices.SortFunc(svcs, func(a, b *corev1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, s := range svcs {
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		svc := Service{Name: s.Namespace + "/" + s.Name}
		for _, ip := range s.Spec.ClusterIPs {
			if a, err := netip.ParseAddr(ip); err == nil {
				svc.ClusterIPs = append(svc.ClusterIPs, a.Unmap())
			}
		}
		if len(svc.ClusterIPs) == 0 {
			continue // headless
		}
		for _, p := range s.Spec.Ports {
			sp := ServicePort{Name: p.Name, Protocol: labProtocol(p.Protocol), Port: uint16(p.Port)}
			seen := map[netip.AddrPort]bool{}
			for _, es := range m.EndpointSlices {
				if es.Namespace != s.Namespace || es.Labels[discoveryv1.LabelServiceName] != s.Name {
					continue
				}
				if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
					continue
				}
				target := uint16(0)
				for _, ep := range es.Ports {
					name, proto := "", corev1.ProtocolTCP
					if ep.Name != nil {
						name = *ep.Name
					}
					if ep.Protocol != nil {
						proto = *ep.Protocol
					}
					if name == p.Name && labProtocol(proto) == sp.Protocol && ep.Port != nil {
						target = uint16(*ep.Port)
						break
					}
				}
				if target == 0 {
					continue
				}
				for _, e := range es.Endpoints {
					if !policy.EndpointReady(&e) || len(e.Addresses) == 0 {
						continue
					}
					a, err := netip.ParseAddr(e.Addresses[0])
					if err != nil || !slices.ContainsFunc(svc.ClusterIPs, func(c netip.Addr) bool { return c.Is4() == a.Is4() }) {
						continue
					}
					ap := netip.AddrPortFrom(a.Unmap(), target)
					if seen[ap] {
						continue
					}
					seen[ap] = true
					ep := owner(ap.Addr())
					if ep == nil {
						notes = append(notes, fmt.Sprintf("Service %s port %d/%s: backend %s is not in the lab: not programmed", svc.Name, sp.Port, sp.Protocol, ap))
						continue
					}
					sp.Backends = append(sp.Backends, Backend{Addr: ap.Addr(), Port: ap.Port(), Endpoint: ep})
				}
			}
			slices.SortFunc(sp.Backends, func(a, b Backend) int {
				return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
			})
			svc.Ports = append(svc.Ports, sp)
		}
		out = append(out, svc)
	}
	return out, notes
}

func labProtocol(p corev1.Protocol) table.Protocol {
	switch p {
	case corev1.ProtocolUDP:
		return table.UDP
	case corev1.ProtocolSCTP:
		return table.SCTP
	}
	return table.TCP
}

// Services returns the Services the lab's nodes serve (ClusterIPs DNATed
// to their backends in every node's namespace), sorted by namespace and
// name. Only the Services of the manifests given to [Build] are
// programmed; [Lab.Apply] and [Lab.WriteManifest] change the agents' view,
// not the nodes' DNAT.
func (l *Lab) Services() []Service { return slices.Clone(l.services) }

// Service returns the Service "namespace/name", or the one that owns the
// ClusterIP name.
func (l *Lab) Service(name string) (*Service, bool) {
	if a, err := netip.ParseAddr(name); err == nil {
		s, ok := l.svcByAddr[a.Unmap()]
		return s, ok
	}
	for i := range l.services {
		if l.services[i].Name == name {
			return &l.services[i], true
		}
	}
	return nil, false
}

// natChain names for the lab's kube-proxy rules.
const (
	chainServices = "PGLAB-SERVICES"
	// markMasq marks connections of a pod to its own Service (hairpin),
	// which are masqueraded as kube-proxy does.
	markMasq = "0x4000/0x4000"
)

// ErrNoIPTables is returned by [Build] for manifests with Services when
// iptables-restore (IPv4) or ip6tables-restore (IPv6) is missing.
var ErrNoIPTables = errors.New("iptables not installed")

// natRules returns the iptables-restore input of the nat table for the
// Services' ClusterIPs of one family, kube-proxy style: a jump from
// PREROUTING and OUTPUT to PGLAB-SERVICES, one chain per Service port
// that picks a backend at random (-m statistic --mode random, 1/n, then
// 1/(n-1), ...), and one chain per backend that DNATs to it (and marks a
// pod's connection to itself for masquerading). It returns "" when no
// Service port of the family has a backend.
func natRules(svcs []Service, is4 bool) string {
	var body strings.Builder
	var chains []string
	proto := func(p table.Protocol) string { return strings.ToLower(p.String()) }
	host := func(a netip.Addr) string {
		if a.Is4() {
			return a.String() + "/32"
		}
		return a.String() + "/128"
	}
	for i, s := range svcs {
		for _, ip := range s.ClusterIPs {
			if ip.Is4() != is4 {
				continue
			}
			for j := range s.Ports {
				sp := &s.Ports[j]
				bs := sp.backends(is4)
				if len(bs) == 0 {
					continue
				}
				svcChain := fmt.Sprintf("PGLAB-SVC-%d-%d", i, j)
				chains = append(chains, svcChain)
				fmt.Fprintf(&body, "-A %s -d %s -p %s -m %s --dport %d -m comment --comment %q -j %s\n",
					chainServices, host(ip), proto(sp.Protocol), proto(sp.Protocol), sp.Port, s.Name+":"+strconv.Itoa(int(sp.Port)), svcChain)
				for k, b := range bs {
					sep := fmt.Sprintf("PGLAB-SEP-%d-%d-%d", i, j, k)
					chains = append(chains, sep)
					if k < len(bs)-1 {
						fmt.Fprintf(&body, "-A %s -m statistic --mode random --probability %s -j %s\n",
							svcChain, strconv.FormatFloat(1/float64(len(bs)-k), 'f', 10, 64), sep)
					} else {
						fmt.Fprintf(&body, "-A %s -j %s\n", svcChain, sep)
					}
					fmt.Fprintf(&body, "-A %s -s %s -j MARK --set-xmark %s\n", sep, host(b.Addr), markMasq)
					fmt.Fprintf(&body, "-A %s -p %s -j DNAT --to-destination %s\n", sep, proto(sp.Protocol), netip.AddrPortFrom(b.Addr, b.Port))
				}
			}
		}
	}
	if body.Len() == 0 {
		return ""
	}
	var out strings.Builder
	out.WriteString("*nat\n")
	fmt.Fprintf(&out, ":%s - [0:0]\n", chainServices)
	for _, c := range chains {
		fmt.Fprintf(&out, ":%s - [0:0]\n", c)
	}
	fmt.Fprintf(&out, "-A PREROUTING -j %s\n", chainServices)
	fmt.Fprintf(&out, "-A OUTPUT -j %s\n", chainServices)
	fmt.Fprintf(&out, "-A POSTROUTING -m mark --mark %s -j MASQUERADE\n", markMasq)
	out.WriteString(body.String())
	out.WriteString("COMMIT\n")
	return out.String()
}

// programServices loads the Services' DNAT rules into node n's nat
// tables with iptables-restore and ip6tables-restore (run inside the
// node's namespace; the caller's own namespace is never touched). Nothing
// runs when no Service has a backend in the lab.
func (l *Lab) programServices(ctx context.Context, n *Node) error {
	for _, fam := range []struct {
		is4  bool
		tool string
	}{{true, "iptables-restore"}, {false, "ip6tables-restore"}} {
		rules := natRules(l.services, fam.is4)
		if rules == "" {
			continue
		}
		path, err := exec.LookPath(fam.tool)
		if err != nil {
			return fmt.Errorf("%w: the lab programs kube-proxy's DNAT for the manifests' Services with %s in the node namespace, and it is not installed (Debian: apt-get install iptables): %v",
				ErrNoIPTables, fam.tool, err)
		}
		cmd := exec.CommandContext(ctx, path, "-w")
		cmd.Stdin = strings.NewReader(rules)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := n.ep.NS.Start(cmd); err != nil {
			return fmt.Errorf("program Services on node %s: start %s: %w", n.name, fam.tool, err)
		}
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("program Services on node %s: %s: %w: %s\ninput:\n%s", n.name, fam.tool, err, strings.TrimSpace(out.String()), rules)
		}
	}
	return nil
}

// serviceExpectation is what a probe to a Service is expected to do with
// podgate enforcing: the source's egress as the table judges it (against
// every ready backend), and then, after the DNAT on the source's node,
// every backend's ingress (kube-proxy may pick any of them). A node as
// the source (host) has no egress policy and reaches the backends on its
// own node (local) whatever their ingress.
func serviceExpectation(t *table.Table, r *Result, host bool, local func(netip.Addr, string) bool) bool {
	v := t.Lookup(r.Src, r.Dst, r.Port.Protocol, r.Port.Port)
	if !v.Egress.Allowed() {
		return false
	}
	bs, _ := t.ServiceBackends(r.Dst, r.Port.Protocol, r.Port.Port)
	for _, b := range bs {
		if host && local(b.Addr, "") {
			continue
		}
		if !t.Lookup(r.Src, b.Addr, r.Port.Protocol, b.Port).Ingress.Allowed() {
			return false
		}
	}
	return true
}
