package policy

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	netutils "k8s.io/utils/net"
)

// The label the API server puts on every namespace, set to its name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// ValidateNetworkPolicy checks a NetworkPolicy the way the API server's
// create validation does (networking/validation.ValidateNetworkPolicy), with
// CIDRs validated non-strictly as the StrictIPCIDRValidation feature gate
// leaves them by default: a CIDR with host bits set is accepted and treated
// as masked ([NetworkPolicyWarnings] reports it).
func ValidateNetworkPolicy(np *networkingv1.NetworkPolicy) field.ErrorList {
	allErrs := apimachineryvalidation.ValidateObjectMeta(&np.ObjectMeta, true,
		apimachineryvalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	return append(allErrs, validateNetworkPolicySpec(&np.Spec, field.NewPath("spec"))...)
}

func validateNetworkPolicySpec(spec *networkingv1.NetworkPolicySpec, fldPath *field.Path) field.ErrorList {
	opts := metav1validation.LabelSelectorValidationOptions{}
	allErrs := metav1validation.ValidateLabelSelector(&spec.PodSelector, opts, fldPath.Child("podSelector"))
	for i, in := range spec.Ingress {
		p := fldPath.Child("ingress").Index(i)
		for j := range in.Ports {
			allErrs = append(allErrs, validatePort(&in.Ports[j], p.Child("ports").Index(j))...)
		}
		for j := range in.From {
			allErrs = append(allErrs, validatePeer(&in.From[j], p.Child("from").Index(j))...)
		}
	}
	for i, eg := range spec.Egress {
		p := fldPath.Child("egress").Index(i)
		for j := range eg.Ports {
			allErrs = append(allErrs, validatePort(&eg.Ports[j], p.Child("ports").Index(j))...)
		}
		for j := range eg.To {
			allErrs = append(allErrs, validatePeer(&eg.To[j], p.Child("to").Index(j))...)
		}
	}
	types := []string{string(networkingv1.PolicyTypeIngress), string(networkingv1.PolicyTypeEgress)}
	if len(spec.PolicyTypes) > len(types) {
		return append(allErrs, field.Invalid(fldPath.Child("policyTypes"), spec.PolicyTypes, "may not specify more than two policyTypes"))
	}
	for i, t := range spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			allErrs = append(allErrs, field.NotSupported(fldPath.Child("policyTypes").Index(i), t, types))
		}
	}
	return allErrs
}

func validatePort(port *networkingv1.NetworkPolicyPort, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	if port.Protocol != nil && *port.Protocol != corev1.ProtocolTCP && *port.Protocol != corev1.ProtocolUDP && *port.Protocol != corev1.ProtocolSCTP {
		allErrs = append(allErrs, field.NotSupported(fldPath.Child("protocol"), *port.Protocol,
			[]string{string(corev1.ProtocolTCP), string(corev1.ProtocolUDP), string(corev1.ProtocolSCTP)}))
	}
	switch {
	case port.Port == nil:
		if port.EndPort != nil {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("endPort"), *port.EndPort, "may not be specified when `port` is not specified"))
		}
	case port.Port.Type == intstr.Int:
		for _, msg := range validation.IsValidPortNum(int(port.Port.IntVal)) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("port"), port.Port.IntVal, msg))
		}
		if port.EndPort != nil {
			if *port.EndPort < port.Port.IntVal {
				allErrs = append(allErrs, field.Invalid(fldPath.Child("endPort"), *port.EndPort, "must be greater than or equal to `port`"))
			}
			for _, msg := range validation.IsValidPortNum(int(*port.EndPort)) {
				allErrs = append(allErrs, field.Invalid(fldPath.Child("endPort"), *port.EndPort, msg))
			}
		}
	default:
		if port.EndPort != nil {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("endPort"), *port.EndPort, "may not be specified when `port` is non-numeric"))
		}
		for _, msg := range validation.IsValidPortName(port.Port.StrVal) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("port"), port.Port.StrVal, msg))
		}
	}
	return allErrs
}

func validatePeer(peer *networkingv1.NetworkPolicyPeer, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList
	opts := metav1validation.LabelSelectorValidationOptions{}
	n := 0
	if peer.PodSelector != nil {
		n++
		allErrs = append(allErrs, metav1validation.ValidateLabelSelector(peer.PodSelector, opts, fldPath.Child("podSelector"))...)
	}
	if peer.NamespaceSelector != nil {
		n++
		allErrs = append(allErrs, metav1validation.ValidateLabelSelector(peer.NamespaceSelector, opts, fldPath.Child("namespaceSelector"))...)
	}
	if peer.IPBlock != nil {
		n++
		allErrs = append(allErrs, validateIPBlock(peer.IPBlock, fldPath.Child("ipBlock"))...)
	}
	if n == 0 {
		allErrs = append(allErrs, field.Required(fldPath, "must specify a peer"))
	} else if n > 1 && peer.IPBlock != nil {
		allErrs = append(allErrs, field.Forbidden(fldPath, "may not specify both ipBlock and another peer"))
	}
	return allErrs
}

func validateIPBlock(b *networkingv1.IPBlock, fldPath *field.Path) field.ErrorList {
	if b.CIDR == "" {
		return field.ErrorList{field.Required(fldPath.Child("cidr"), "")}
	}
	allErrs := validation.IsValidCIDRForLegacyField(fldPath.Child("cidr"), b.CIDR, false, nil)
	cidr, err := parseCIDR(b.CIDR)
	if err != nil {
		return allErrs
	}
	for i, s := range b.Except {
		p := fldPath.Child("except").Index(i)
		errs := validation.IsValidCIDRForLegacyField(p, s, false, nil)
		allErrs = append(allErrs, errs...)
		ex, err := parseCIDR(s)
		if err != nil || len(errs) > 0 {
			continue
		}
		if !cidr.Contains(ex.Addr()) || cidr.Bits() >= ex.Bits() {
			allErrs = append(allErrs, field.Invalid(p, s, "must be a strict subset of `cidr`"))
		}
	}
	return allErrs
}

// NetworkPolicyWarnings returns the warnings the API server would send with
// a NetworkPolicy: CIDRs with host bits set or in non-standard form.
func NetworkPolicyWarnings(np *networkingv1.NetworkPolicy) []string {
	var out []string
	check := func(rules int, peers func(i int) ([]networkingv1.NetworkPolicyPeer, *field.Path)) {
		for i := 0; i < rules; i++ {
			ps, path := peers(i)
			for j, p := range ps {
				if p.IPBlock == nil {
					continue
				}
				bp := path.Index(j).Child("ipBlock")
				if _, err := parseCIDR(p.IPBlock.CIDR); err == nil {
					out = append(out, validation.GetWarningsForCIDR(bp.Child("cidr"), p.IPBlock.CIDR)...)
				}
				for k, e := range p.IPBlock.Except {
					if _, err := parseCIDR(e); err == nil {
						out = append(out, validation.GetWarningsForCIDR(bp.Child("except").Index(k), e)...)
					}
				}
			}
		}
	}
	spec := field.NewPath("spec")
	check(len(np.Spec.Ingress), func(i int) ([]networkingv1.NetworkPolicyPeer, *field.Path) {
		return np.Spec.Ingress[i].From, spec.Child("ingress").Index(i).Child("from")
	})
	check(len(np.Spec.Egress), func(i int) ([]networkingv1.NetworkPolicyPeer, *field.Path) {
		return np.Spec.Egress[i].To, spec.Child("egress").Index(i).Child("to")
	})
	return out
}

// parseCIDR parses a CIDR as the API server's legacy validation accepts it
// (leading zeros in IPv4 octets, host bits set) and returns it masked.
func parseCIDR(s string) (netip.Prefix, error) {
	_, ipnet, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	addr, ok := netip.AddrFromSlice(ipnet.IP)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	bits, _ := ipnet.Mask.Size()
	if addr.Is4In6() && bits >= 96 {
		// An IPv4-mapped IPv6 CIDR (warned about) means the IPv4 range.
		addr, bits = addr.Unmap(), bits-96
	}
	return netip.PrefixFrom(addr, bits).Masked(), nil
}

// validatePod checks the parts of a Pod that policy uses: its metadata and
// labels, its addresses and its container ports.
func validatePod(pod *corev1.Pod) field.ErrorList {
	allErrs := apimachineryvalidation.ValidateObjectMeta(&pod.ObjectMeta, true,
		apimachineryvalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
	return append(allErrs, validatePodPorts(pod)...)
}

// validatePodPorts checks a Pod's addresses and container ports: what
// compiling reads from it besides names and labels.
func validatePodPorts(pod *corev1.Pod) field.ErrorList {
	allErrs := validateContainerPorts(pod)
	_, errs := podIPs(pod)
	return append(allErrs, errs...)
}

// validateContainerPorts checks a Pod's container ports. Field paths are
// made only for errors: compiling checks every pod of the cluster.
func validateContainerPorts(pod *corev1.Pod) field.ErrorList {
	var allErrs field.ErrorList
	for i, c := range pod.Spec.Containers {
		for j, p := range c.Ports {
			pp := func() *field.Path {
				return field.NewPath("spec").Child("containers").Index(i).Child("ports").Index(j)
			}
			if p.Name != "" {
				for _, msg := range validation.IsValidPortName(p.Name) {
					allErrs = append(allErrs, field.Invalid(pp().Child("name"), p.Name, msg))
				}
			}
			for _, msg := range validation.IsValidPortNum(int(p.ContainerPort)) {
				allErrs = append(allErrs, field.Invalid(pp().Child("containerPort"), p.ContainerPort, msg))
			}
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP && p.Protocol != corev1.ProtocolUDP && p.Protocol != corev1.ProtocolSCTP {
				allErrs = append(allErrs, field.NotSupported(pp().Child("protocol"), p.Protocol,
					[]string{string(corev1.ProtocolTCP), string(corev1.ProtocolUDP), string(corev1.ProtocolSCTP)}))
			}
		}
	}
	return allErrs
}

// podIPs returns a pod's addresses, primary first, from status.podIPs or,
// when that is empty, status.podIP.
func podIPs(pod *corev1.Pod) ([]netip.Addr, field.ErrorList) {
	status := field.NewPath("status")
	var allErrs field.ErrorList
	var out []netip.Addr
	if len(pod.Status.PodIPs) == 0 {
		if pod.Status.PodIP == "" {
			return nil, nil
		}
		a, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil || a.Zone() != "" {
			return nil, field.ErrorList{field.Invalid(status.Child("podIP"), pod.Status.PodIP, "must be a valid IP address")}
		}
		return []netip.Addr{a.Unmap()}, nil
	}
	for i, ip := range pod.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil || a.Zone() != "" {
			allErrs = append(allErrs, field.Invalid(status.Child("podIPs").Index(i).Child("ip"), ip.IP, "must be a valid IP address"))
			continue
		}
		a = a.Unmap()
		for _, prev := range out {
			if prev.Is4() == a.Is4() {
				allErrs = append(allErrs, field.Invalid(status.Child("podIPs").Index(i).Child("ip"), ip.IP, "may specify no more than one IP for each IP family"))
			}
		}
		out = append(out, a)
	}
	if len(pod.Status.PodIPs) > 2 {
		allErrs = append(allErrs, field.TooMany(status.Child("podIPs"), len(pod.Status.PodIPs), 2))
	}
	if pod.Status.PodIP != "" && len(out) > 0 {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err != nil || a.Unmap() != out[0] {
			allErrs = append(allErrs, field.Invalid(status.Child("podIP"), pod.Status.PodIP, "must match status.podIPs[0]"))
		}
	}
	return out, allErrs
}

// validateNamespace checks a Namespace's name and labels.
func validateNamespace(ns *corev1.Namespace) field.ErrorList {
	return apimachineryvalidation.ValidateObjectMeta(&ns.ObjectMeta, false,
		apimachineryvalidation.ValidateNamespaceName, field.NewPath("metadata"))
}
