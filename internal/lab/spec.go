package lab

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/podgate/podgate/internal/netns"
)

// What a lab is built from: the Spec, its defaults and its checks.

// Defaults of [Spec].
const (
	DefaultPrefix            = "pglab"
	DefaultMTU               = 1500
	DefaultProbeTimeout      = 3 * time.Second
	DefaultParallel          = 32
	DefaultAgentReadyTimeout = 60 * time.Second
	DefaultAgentStopTimeout  = 45 * time.Second
)

// Interface names in a node namespace.
const (
	// NodeIf is the interface that carries the node's addresses in a lab
	// of one node: the node namespace's loopback (the lab kernels have no
	// dummy driver). In a lab of several they are on UplinkIf.
	NodeIf = "lo"
	// UplinkIf is the node end of the link to the outside namespace (one
	// node) or to the underlay bridge (several).
	UplinkIf = "uplink0"
)

// Enforcer is what enforces policy in the lab, which decides what the
// probes are expected to observe.
type Enforcer string

// Enforcers.
const (
	// EnforcerPodgate: a podgate agent runs in every node namespace
	// ([Lab.StartAgent]); probes are expected to follow the policy table.
	EnforcerPodgate Enforcer = "podgate"
	// EnforcerNone: the kernel alone forwards; every probe is expected to
	// succeed. This is also the bench harness's baseline.
	EnforcerNone Enforcer = "none"
)

// Spec describes a lab. Only Manifests is required.
type Spec struct {
	// Manifests are manifest files or directories, as for [policy.Load]:
	// Namespaces, Pods (with status.podIPs and spec.nodeName; hostNetwork
	// pods too), NetworkPolicies, Services with their EndpointSlices, and
	// OutsideHosts.
	Manifests []string
	// NodeName, if set, builds this node alone, as a lab of one node:
	// pods of other nodes are left out (with a note) and pods without
	// spec.nodeName are placed on it. Empty means every node the pods
	// name (see Nodes).
	NodeName string
	// Nodes is how many nodes to build: 0 means as many as the pods name
	// in spec.nodeName, at least one. The nodes the pods do not name are
	// called lab-node-K; pods without spec.nodeName are spread over all
	// nodes round-robin. Fewer nodes than the pods name is an error.
	Nodes int
	// NodeIPs are the node's own addresses in a lab of one node, at most
	// one per family; empty means the first free address of the /24 (/64)
	// of the first pod address of each family.
	NodeIPs []netip.Addr
	// NodeSubnets are the underlay's subnets in a lab of several nodes, at
	// most one per family; the nodes get their first free addresses, in
	// node order. A family left out defaults to the first /24 (/64) from
	// [DefaultNodeSubnet4] ([DefaultNodeSubnet6]) on that holds no address
	// of the manifests (pods, outside hosts, ClusterIPs). A given subnet
	// may hold pod addresses, as with Azure CNI, where nodes and pods
	// share a subnet.
	NodeSubnets []netip.Prefix
	// Prefix starts every namespace and directory name of the lab
	// (default "pglab"); names are PREFIX-PID-XXXXXX[-...]. At most 12
	// bytes of letters, digits and dashes.
	Prefix string
	// MTU of every veth (default 1500).
	MTU int
	// Enforcer decides the expectations (default EnforcerPodgate).
	Enforcer Enforcer
	// AgentKubeconfig, when set, makes StartAgent run the agents against
	// the Kubernetes API of this kubeconfig instead of the lab's manifest
	// directory. The caller creates the objects in the API; the lab's
	// expectations still come from Manifests (keep them in step with
	// [Lab.Apply]). A server on a loopback address (a test's
	// kube-apiserver on 127.0.0.1) is out of reach of the node
	// namespaces: the lab then listens on the same loopback address in
	// each node's namespace, relays to the server from its own, and
	// gives each node's agent a copy of the kubeconfig that names its
	// relay (kubeconfig-NODE in [Lab.Dir]).
	AgentKubeconfig string
	// ProbeTimeout bounds each probe (default 3s, so that one TCP SYN
	// retransmission, after 1s, fits). A probe that is denied
	// by dropping takes this long.
	ProbeTimeout time.Duration
	// Parallel is how many probes [Lab.Matrix] runs at once (default 32).
	Parallel int
	// ProbeFromNode adds the nodes as probe sources to [Lab.Matrix]: a
	// node to its own pods is expected to be allowed (kubelet probes), to
	// the pods of other nodes as their policies say.
	ProbeFromNode bool
	// AgentOutput, if set, receives the agents' stdout and stderr besides
	// their log files ([Node.AgentLog]).
	AgentOutput io.Writer
	// AgentReadyTimeout bounds the wait for the agent's /readyz (default
	// 60s); AgentStopTimeout the wait for it to exit after a signal before
	// it is killed (default 45s).
	AgentReadyTimeout, AgentStopTimeout time.Duration
}

func (s Spec) withDefaults() Spec {
	if s.Prefix == "" {
		s.Prefix = DefaultPrefix
	}
	if s.MTU == 0 {
		s.MTU = DefaultMTU
	}
	if s.Enforcer == "" {
		s.Enforcer = EnforcerPodgate
	}
	if s.ProbeTimeout == 0 {
		s.ProbeTimeout = DefaultProbeTimeout
	}
	if s.Parallel == 0 {
		s.Parallel = DefaultParallel
	}
	if s.AgentReadyTimeout == 0 {
		s.AgentReadyTimeout = DefaultAgentReadyTimeout
	}
	if s.AgentStopTimeout == 0 {
		s.AgentStopTimeout = DefaultAgentStopTimeout
	}
	return s
}

func (s Spec) validate() error {
	var errs []error
	if len(s.Manifests) == 0 {
		errs = append(errs, errors.New("manifests: required"))
	}
	if err := checkPrefix(s.Prefix); err != nil {
		errs = append(errs, err)
	}
	if s.Nodes < 0 {
		errs = append(errs, fmt.Errorf("nodes %d: must not be negative", s.Nodes))
	}
	if s.NodeName != "" && s.Nodes > 1 {
		errs = append(errs, fmt.Errorf("node name %q and %d nodes: a node name builds that node alone", s.NodeName, s.Nodes))
	}
	if s.MTU < 0 {
		errs = append(errs, fmt.Errorf("mtu %d: must not be negative", s.MTU))
	}
	if s.Enforcer != EnforcerPodgate && s.Enforcer != EnforcerNone {
		errs = append(errs, fmt.Errorf("enforcer %q: want %q or %q", s.Enforcer, EnforcerPodgate, EnforcerNone))
	}
	if s.ProbeTimeout < 0 || s.Parallel < 0 || s.AgentReadyTimeout < 0 || s.AgentStopTimeout < 0 {
		errs = append(errs, errors.New("timeouts and parallelism must not be negative"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab spec: %w", errors.Join(errs...))
	}
	return nil
}

func checkPrefix(p string) error {
	if p == "" || len(p) > netns.MaxPrefixLen {
		return fmt.Errorf("prefix %q: want 1 to %d bytes", p, netns.MaxPrefixLen)
	}
	for _, c := range p {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("prefix %q: only letters, digits and dashes", p)
		}
	}
	return nil
}
