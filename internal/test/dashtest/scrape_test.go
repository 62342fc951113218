package dashtest

import (
	"bytes"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/podgate/podgate/deploy/grafana"
)

// promConfig is the part of a Prometheus configuration that
// deploy/prometheus/prometheus.yml uses, decoded strictly.
type promConfig struct {
	Global struct {
		ScrapeInterval     string `yaml:"scrape_interval"`
		ScrapeTimeout      string `yaml:"scrape_timeout"`
		EvaluationInterval string `yaml:"evaluation_interval"`
	} `yaml:"global"`
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName             string `yaml:"job_name"`
		KubernetesSDConfigs []struct {
			Role       string `yaml:"role"`
			Namespaces struct {
				Names []string `yaml:"names"`
			} `yaml:"namespaces"`
		} `yaml:"kubernetes_sd_configs"`
		RelabelConfigs []*relabel.Config `yaml:"relabel_configs"`
	} `yaml:"scrape_configs"`
}

func loadPromConfig(tb testing.TB) promConfig {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(prometheusDir, "prometheus.yml"))
	if err != nil {
		tb.Fatal(err)
	}
	var c promConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		tb.Fatalf("decode prometheus.yml: %v", err)
	}
	return c
}

func loadDaemonSet(tb testing.TB) *appsv1.DaemonSet {
	tb.Helper()
	raw, err := os.ReadFile(daemonSetFile)
	if err != nil {
		tb.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := sigsyaml.UnmarshalStrict(raw, &ds); err != nil {
		tb.Fatalf("decode %s: %v", daemonSetFile, err)
	}
	return &ds
}

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// podTargets returns the targets Prometheus' Kubernetes discovery (role
// pod) makes for a pod of ds's template: one per container port, with the
// __meta_kubernetes_* labels it documents.
func podTargets(ds *appsv1.DaemonSet, pod, node string, ip netip.Addr) []map[string]string {
	common := map[string]string{
		"__meta_kubernetes_namespace":           ds.Namespace,
		"__meta_kubernetes_pod_name":            pod,
		"__meta_kubernetes_pod_ip":              ip.String(),
		"__meta_kubernetes_pod_node_name":       node,
		"__meta_kubernetes_pod_host_ip":         ip.String(),
		"__meta_kubernetes_pod_ready":           "true",
		"__meta_kubernetes_pod_phase":           "Running",
		"__meta_kubernetes_pod_controller_kind": "DaemonSet",
		"__meta_kubernetes_pod_controller_name": ds.Name,
	}
	for k, v := range ds.Spec.Template.Labels {
		n := invalidLabelChars.ReplaceAllString(k, "_")
		common["__meta_kubernetes_pod_label_"+n] = v
		common["__meta_kubernetes_pod_labelpresent_"+n] = "true"
	}
	for k, v := range ds.Spec.Template.Annotations {
		n := invalidLabelChars.ReplaceAllString(k, "_")
		common["__meta_kubernetes_pod_annotation_"+n] = v
		common["__meta_kubernetes_pod_annotationpresent_"+n] = "true"
	}
	var out []map[string]string
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			t := map[string]string{
				model.AddressLabel:                              net.JoinHostPort(ip.String(), strconv.Itoa(int(p.ContainerPort))),
				"__meta_kubernetes_pod_container_name":          c.Name,
				"__meta_kubernetes_pod_container_port_name":     p.Name,
				"__meta_kubernetes_pod_container_port_number":   strconv.Itoa(int(p.ContainerPort)),
				"__meta_kubernetes_pod_container_port_protocol": string(p.Protocol),
			}
			for k, v := range common {
				t[k] = v
			}
			out = append(out, t)
		}
	}
	return out
}

// podgateJob returns the relabel configuration of the podgate job.
func podgateJob(tb testing.TB, c promConfig) []*relabel.Config {
	tb.Helper()
	for _, sc := range c.ScrapeConfigs {
		if sc.JobName != grafana.Job {
			continue
		}
		for _, rc := range sc.RelabelConfigs {
			rc.NameValidationScheme = model.LegacyValidation
			if err := rc.Validate(model.LegacyValidation); err != nil {
				tb.Fatalf("relabel config %+v: %v", rc, err)
			}
		}
		return sc.RelabelConfigs
	}
	tb.Fatalf("prometheus.yml has no job %q", grafana.Job)
	return nil
}

// TestScrapeConfigFindsAgents applies the podgate job's relabeling in
// prometheus.yml to the targets that Kubernetes discovery makes for the
// DaemonSet's pods (deploy/daemonset.yaml, its prometheus.io/*
// annotations): one target per agent, on the pod IP and the annotated port
// and path, with the node label the dashboards and alerts use.
func TestScrapeConfigFindsAgents(t *testing.T) {
	c := loadPromConfig(t)
	ds := loadDaemonSet(t)
	if !contains(c.RuleFiles, "podgate-rules.yml") {
		t.Errorf("rule_files %q: want podgate-rules.yml", c.RuleFiles)
	}
	for _, sc := range c.ScrapeConfigs {
		if sc.JobName != grafana.Job {
			continue
		}
		if len(sc.KubernetesSDConfigs) != 1 || sc.KubernetesSDConfigs[0].Role != "pod" ||
			!contains(sc.KubernetesSDConfigs[0].Namespaces.Names, ds.Namespace) {
			t.Errorf("job %s discovers %+v, want pods in %s", sc.JobName, sc.KubernetesSDConfigs, ds.Namespace)
		}
	}
	cfgs := podgateJob(t, c)
	for _, tt := range []struct {
		ip       string
		wantAddr string
	}{
		{"10.1.2.3", "10.1.2.3:9402"},
		{"fd00::3", "[fd00::3]:9402"},
	} {
		t.Run(tt.ip, func(t *testing.T) {
			var kept []map[string]string
			for _, target := range podTargets(ds, "podgate-x1", "node-1", netip.MustParseAddr(tt.ip)) {
				lb := labels.NewBuilder(labels.FromMap(target))
				if !relabel.ProcessBuilder(lb, cfgs...) {
					continue
				}
				got := map[string]string{}
				lb.Labels().Range(func(l labels.Label) {
					if !strings.HasPrefix(l.Name, "__meta_") {
						got[l.Name] = l.Value
					}
				})
				kept = append(kept, got)
			}
			want := []map[string]string{{
				model.AddressLabel:     tt.wantAddr,
				model.MetricsPathLabel: "/metrics",
				"node":                 "node-1",
				"agent_pod":            "podgate-x1",
			}}
			if diff := cmp.Diff(want, kept); diff != "" {
				t.Errorf("targets after relabeling (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("not annotated", func(t *testing.T) {
		ds := loadDaemonSet(t)
		ds.Spec.Template.Annotations["prometheus.io/scrape"] = "false"
		for _, target := range podTargets(ds, "podgate-x1", "node-1", netip.MustParseAddr("10.1.2.3")) {
			if relabel.ProcessBuilder(labels.NewBuilder(labels.FromMap(target)), cfgs...) {
				t.Errorf("target %v kept", target)
			}
		}
	})
}

// TestOperatorObjects renders deploy/prometheus with kustomize and checks
// that the Service selects the DaemonSet's pods on its metrics port, that
// the ServiceMonitor selects the Service and adds the node label, and that
// the default install (deploy/kustomization.yaml) leaves them out.
func TestOperatorObjects(t *testing.T) {
	ds := loadDaemonSet(t)
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), prometheusDir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", prometheusDir, err)
	}
	var (
		svc   corev1.Service
		sm    serviceMonitor
		kinds []string
	)
	for _, r := range rm.Resources() {
		kinds = append(kinds, r.GetKind())
		if ns := r.GetNamespace(); ns != ds.Namespace {
			t.Errorf("%s %s in namespace %q, want %q", r.GetKind(), r.GetName(), ns, ds.Namespace)
		}
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		switch r.GetKind() {
		case "Service":
			err = sigsyaml.UnmarshalStrict(y, &svc)
		case "ServiceMonitor":
			err = sigsyaml.UnmarshalStrict(y, &sm)
		}
		if err != nil {
			t.Fatalf("decode %s: %v", r.GetKind(), err)
		}
	}
	slices.Sort(kinds)
	if diff := cmp.Diff([]string{"PrometheusRule", "Service", "ServiceMonitor"}, kinds); diff != "" {
		t.Fatalf("objects (-want +got):\n%s", diff)
	}

	podLabels := ds.Spec.Template.Labels
	for k, v := range svc.Spec.Selector {
		if podLabels[k] != v {
			t.Errorf("Service selects %s=%s, the DaemonSet's pods have %q", k, v, podLabels[k])
		}
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service clusterIP %q, want headless", svc.Spec.ClusterIP)
	}
	if svc.Name != grafana.Job {
		t.Errorf("Service %q: its name is the job label, want %q", svc.Name, grafana.Job)
	}
	var containerPorts []string
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			containerPorts = append(containerPorts, p.Name+"/"+strconv.Itoa(int(p.ContainerPort)))
		}
	}
	var svcPorts []string
	for _, p := range svc.Spec.Ports {
		svcPorts = append(svcPorts, p.Name)
		want := p.TargetPort.String() + "/" + strconv.Itoa(int(p.Port))
		if !contains(containerPorts, want) {
			t.Errorf("Service port %s targets %s, container ports %q", p.Name, want, containerPorts)
		}
	}

	for k, v := range sm.Spec.Selector.MatchLabels {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%s, the Service has %q", k, v, svc.Labels[k])
		}
	}
	if !contains(sm.Spec.NamespaceSelector.MatchNames, ds.Namespace) {
		t.Errorf("ServiceMonitor namespaces %q, want %s", sm.Spec.NamespaceSelector.MatchNames, ds.Namespace)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("ServiceMonitor endpoints: %d, want 1", len(sm.Spec.Endpoints))
	}
	ep := sm.Spec.Endpoints[0]
	if !contains(svcPorts, ep.Port) {
		t.Errorf("ServiceMonitor port %q, Service ports %q", ep.Port, svcPorts)
	}
	if want := ds.Spec.Template.Annotations["prometheus.io/path"]; ep.Path != want {
		t.Errorf("ServiceMonitor path %q, the DaemonSet annotates %q", ep.Path, want)
	}
	if !ep.HonorLabels {
		t.Error("ServiceMonitor without honorLabels: the operator's namespace/pod target labels would rename the agent's")
	}
	hasNode := false
	for _, r := range ep.Relabelings {
		if slices.Equal(r.SourceLabels, []string{"__meta_kubernetes_pod_node_name"}) && r.TargetLabel == "node" &&
			(r.Action == "" || r.Action == "replace") {
			hasNode = true
		}
	}
	if !hasNode {
		t.Errorf("ServiceMonitor relabelings %+v do not set node", ep.Relabelings)
	}

	// The default install must work without the operator's CRDs.
	def, err := k.Run(filesys.MakeFsOnDisk(), repoRoot+"/deploy")
	if err != nil {
		t.Fatalf("kustomize build deploy: %v", err)
	}
	for _, r := range def.Resources() {
		if strings.Contains(r.GetApiVersion(), "monitoring.coreos.com") {
			t.Errorf("deploy/kustomization.yaml installs %s %s", r.GetKind(), r.GetName())
		}
	}
}

// serviceMonitor is the part of the operator's ServiceMonitor used here.
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			HonorLabels   bool   `json:"honorLabels"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
				Action       string   `json:"action"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}
