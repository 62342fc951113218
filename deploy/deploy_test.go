package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	namespace      = "podgate-system"
	name           = "podgate"
	defaultImage   = "ghcr.io/podgate/podgate:latest"
	metricsPort    = 9402
	healthPort     = 9403
	kustomization  = "kustomization.yaml"
	containerName  = "agent"
	stateHostPath  = "/run/podgate"
	gracePeriodMin = 30
)

// wantIDs are the objects deploy/ installs, in kind/namespace/name form.
var wantIDs = []string{
	"ClusterRole//podgate",
	"ClusterRoleBinding//podgate",
	"DaemonSet/podgate-system/podgate",
	"Namespace//podgate-system",
	"ServiceAccount/podgate-system/podgate",
}

// object is one Kubernetes object of a manifest, decoded strictly into its
// typed form and kept as unstructured for applying.
type object struct {
	source string
	typed  runtime.Object
	u      *unstructured.Unstructured
}

func (o object) id() string {
	return o.u.GetKind() + "/" + o.u.GetNamespace() + "/" + o.u.GetName()
}

// strict decodes into client-go's scheme and fails on unknown or
// duplicate fields.
var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// decodeDocs decodes every non-empty document of a multi-document YAML
// stream.
func decodeDocs(data []byte, source string) ([]object, error) {
	var objs []object
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: reading document %d: %w", source, i, err)
		}
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		if t := string(bytes.TrimSpace(j)); t == "null" || t == "" {
			continue
		}
		typed, _, err := strict.Decode(j, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(j); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", source, i, err)
		}
		objs = append(objs, object{source: source, typed: typed, u: u})
	}
}

// manifestFiles are the YAML files of deploy/ that hold objects: every
// top-level *.yaml but the kustomization (examples/ holds inputs of the
// policy CLI, not objects to install).
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return f == kustomization })
	sort.Strings(files)
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/")
	}
	return files
}

// manifests are the objects of deploy/, by kind.
type manifests struct {
	all     []object
	ns      *corev1.Namespace
	sa      *corev1.ServiceAccount
	role    *rbacv1.ClusterRole
	binding *rbacv1.ClusterRoleBinding
	ds      *appsv1.DaemonSet
}

func index(t *testing.T, objs []object) manifests {
	t.Helper()
	m := manifests{all: objs}
	for _, o := range objs {
		switch v := o.typed.(type) {
		case *corev1.Namespace:
			m.ns = v
		case *corev1.ServiceAccount:
			m.sa = v
		case *rbacv1.ClusterRole:
			m.role = v
		case *rbacv1.ClusterRoleBinding:
			m.binding = v
		case *appsv1.DaemonSet:
			m.ds = v
		}
	}
	var ids []string
	for _, o := range objs {
		ids = append(ids, o.id())
	}
	sort.Strings(ids)
	if diff := cmp.Diff(wantIDs, ids); diff != "" {
		t.Fatalf("objects (-want +got):\n%s", diff)
	}
	return m
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	var objs []object
	for _, f := range manifestFiles(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		o, err := decodeDocs(data, f)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	return index(t, objs)
}

// render builds the kustomization in dir of fSys, as `kubectl apply -k`
// would, and decodes the result strictly.
func render(t *testing.T, fSys filesys.FileSystem, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(fSys, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []object
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		o, err := decodeDocs(y, "kustomize:"+r.CurId().String())
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	return objs
}

func TestStrictDecoding(t *testing.T) {
	for _, tt := range []struct {
		name string
		yaml string
	}{
		{"unknown field", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\nautomount: true\n"},
		{"duplicate field", "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  name: y\n"},
		{"unknown kind", "apiVersion: v1\nkind: Nope\nmetadata:\n  name: x\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeDocs([]byte(tt.yaml), tt.name); err == nil {
				t.Error("decoded without an error; the manifest checks would miss typos")
			}
		})
	}
}

func TestManifests(t *testing.T) {
	m := loadManifests(t)
	for _, o := range m.all {
		t.Run(o.id()+"/labels", func(t *testing.T) {
			if got := o.u.GetLabels()["app.kubernetes.io/name"]; got != name {
				t.Errorf("label app.kubernetes.io/name = %q, want %q", got, name)
			}
		})
	}
	if got, want := m.ns.Labels["pod-security.kubernetes.io/enforce"], "privileged"; got != want {
		t.Errorf("namespace label pod-security.kubernetes.io/enforce = %q, want %q "+
			"(hostNetwork, hostPath and the added capabilities violate baseline)", got, want)
	}
}

func sortedCaps(caps []corev1.Capability) []string {
	s := make([]string, 0, len(caps))
	for _, c := range caps {
		s = append(s, string(c))
	}
	sort.Strings(s)
	return s
}

func quantities(l corev1.ResourceList) map[string]string {
	out := map[string]string{}
	for k, v := range l {
		out[string(k)] = v.String()
	}
	return out
}

// probe is the part of a probe the test checks.
type probe struct {
	Host string
	Path string
	Port int32
}

func httpProbe(c corev1.Container, p *corev1.Probe) *probe {
	if p == nil || p.HTTPGet == nil {
		return nil
	}
	port := p.HTTPGet.Port.IntVal
	if name := p.HTTPGet.Port.StrVal; name != "" {
		port = 0
		for _, cp := range c.Ports {
			if cp.Name == name {
				port = cp.ContainerPort
			}
		}
	}
	return &probe{Host: p.HTTPGet.Host, Path: p.HTTPGet.Path, Port: port}
}

func TestDaemonSet(t *testing.T) {
	m := loadManifests(t)
	ds := m.ds
	pod := ds.Spec.Template
	spec := pod.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 || len(spec.EphemeralContainers) != 0 {
		t.Fatalf("want exactly one container and no init or ephemeral ones, got %d, %d, %d",
			len(spec.Containers), len(spec.InitContainers), len(spec.EphemeralContainers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.Capabilities == nil {
		t.Fatal("container securityContext has no capabilities")
	}
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}

	hostPaths := map[string]string{}
	var otherVolumes []string
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		} else {
			otherVolumes = append(otherVolumes, v.Name)
		}
	}
	type mount struct {
		Name, Path  string
		ReadOnly    bool
		Propagation string
	}
	var mounts []mount
	for _, vm := range c.VolumeMounts {
		p := ""
		if vm.MountPropagation != nil {
			p = string(*vm.MountPropagation)
		}
		mounts = append(mounts, mount{vm.Name, vm.MountPath, vm.ReadOnly, p})
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			env[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
		case e.ValueFrom != nil:
			env[e.Name] = "valueFrom:other"
		default:
			env[e.Name] = e.Value
		}
	}
	privileged := sc.Privileged != nil && *sc.Privileged
	seccomp := func(p *corev1.SeccompProfile) corev1.SeccompProfileType {
		if p == nil {
			return ""
		}
		return p.Type
	}

	for _, tt := range []struct {
		name      string
		got, want any
	}{
		// Pod.
		{"hostNetwork", spec.HostNetwork, true},
		{"hostPID", spec.HostPID, false},
		{"hostIPC", spec.HostIPC, false},
		{"dnsPolicy", spec.DNSPolicy, corev1.DNSClusterFirstWithHostNet},
		{"priorityClassName", spec.PriorityClassName, "system-node-critical"},
		{"serviceAccountName", spec.ServiceAccountName, m.sa.Name},
		{"automountServiceAccountToken (unset: the agent reads the API in-cluster)",
			spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken, true},
		{"tolerations (every taint)", spec.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}}},
		{"terminationGracePeriodSeconds >= 30",
			spec.TerminationGracePeriodSeconds != nil && *spec.TerminationGracePeriodSeconds >= gracePeriodMin, true},
		{"pod seccompProfile", seccomp(psc.SeccompProfile), corev1.SeccompProfileTypeRuntimeDefault},
		{"selector matches template", ds.Spec.Selector.MatchLabels,
			map[string]string{
				"app.kubernetes.io/name":      pod.Labels["app.kubernetes.io/name"],
				"app.kubernetes.io/component": pod.Labels["app.kubernetes.io/component"],
			}},
		{"prometheus annotations", pod.Annotations, map[string]string{
			"prometheus.io/scrape": "true",
			"prometheus.io/port":   fmt.Sprint(metricsPort),
			"prometheus.io/path":   "/metrics",
		}},
		{"hostPath volumes", hostPaths, map[string]string{"state": stateHostPath}},
		{"other volumes", otherVolumes, []string(nil)},
		// Container.
		{"image", c.Image, defaultImage},
		{"command", c.Command, []string{"/podgate"}},
		{"args", c.Args, []string{"agent", "--node-name=$(NODE_NAME)", fmt.Sprintf("--metrics-addr=[$(POD_IP)]:%d", metricsPort),
			fmt.Sprintf("--health-addr=127.0.0.1:%d", healthPort)}},
		{"env", env, map[string]string{"NODE_NAME": "fieldRef:spec.nodeName", "POD_IP": "fieldRef:status.podIP"}},
		{"ports", c.Ports, []corev1.ContainerPort{
			{Name: "metrics", ContainerPort: metricsPort, Protocol: corev1.ProtocolTCP},
			{Name: "health", ContainerPort: healthPort, Protocol: corev1.ProtocolTCP},
		}},
		// The probes go to the health listener on loopback, which no
		// client of the metrics address can reach (issue 11, F3).
		{"livenessProbe", httpProbe(c, c.LivenessProbe), &probe{Host: "127.0.0.1", Path: "/healthz", Port: healthPort}},
		{"readinessProbe", httpProbe(c, c.ReadinessProbe), &probe{Host: "127.0.0.1", Path: "/readyz", Port: healthPort}},
		{"requests", quantities(c.Resources.Requests), map[string]string{"cpu": "100m", "memory": "128Mi"}},
		{"limits (memory only: a CPU limit throttles the fastpath)", quantities(c.Resources.Limits), map[string]string{"memory": "512Mi"}},
		{"volumeMounts (the state directory only; nothing is pinned in bpffs)", mounts, []mount{{"state", stateHostPath, false, ""}}},
		// Container security.
		{"capabilities.add", sortedCaps(sc.Capabilities.Add), []string{"BPF", "IPC_LOCK", "NET_ADMIN", "NET_RAW"}},
		{"capabilities.drop", sortedCaps(sc.Capabilities.Drop), []string{"ALL"}},
		{"privileged", privileged, false},
		{"allowPrivilegeEscalation", sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation, true},
		{"readOnlyRootFilesystem", sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, true},
		{"runAsUser 0 (capabilities need UID 0 without ambient capabilities)", sc.RunAsUser, new(int64)},
		{"procMount", sc.ProcMount, (*corev1.ProcMountType)(nil)},
		{"container seccompProfile", seccomp(sc.SeccompProfile), corev1.SeccompProfileTypeRuntimeDefault},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, tt.got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestRBAC(t *testing.T) {
	m := loadManifests(t)
	// Every (apiGroup, resource) the role names, with its verbs.
	got := map[string][]string{}
	for i, r := range m.role.Rules {
		if len(r.ResourceNames) != 0 || len(r.NonResourceURLs) != 0 {
			t.Errorf("rule %d: resourceNames/nonResourceURLs are not expected: %+v", i, r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				key := res
				if g != "" {
					key = g + "/" + res
				}
				verbs := append(got[key], r.Verbs...)
				sort.Strings(verbs)
				got[key] = slices.Compact(verbs)
			}
		}
	}
	read := []string{"get", "list", "watch"}
	want := map[string][]string{
		"pods":                              read,
		"namespaces":                        read,
		"nodes":                             read,
		"services":                          read,
		"networking.k8s.io/networkpolicies": read,
		"discovery.k8s.io/endpointslices":   read,
		"policy.networking.k8s.io/clusternetworkpolicies":       read,
		"policy.networking.k8s.io/adminnetworkpolicies":         read,
		"policy.networking.k8s.io/baselineadminnetworkpolicies": read,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ClusterRole %s rules (-want +got):\n%s", m.role.Name, diff)
	}
	if m.role.AggregationRule != nil {
		t.Errorf("ClusterRole %s aggregates other roles", m.role.Name)
	}
	if diff := cmp.Diff(rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: m.role.Name},
		m.binding.RoleRef); diff != "" {
		t.Errorf("ClusterRoleBinding roleRef (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: m.sa.Name, Namespace: m.sa.Namespace}},
		m.binding.Subjects); diff != "" {
		t.Errorf("ClusterRoleBinding subjects (-want +got):\n%s", diff)
	}
}

// TestKustomize renders deploy/ as `kubectl apply -k deploy/` does: the
// result must be exactly the manifests, and an overlay must be able to
// change the image.
func TestKustomize(t *testing.T) {
	files := manifestFiles(t)
	kust, err := os.ReadFile(kustomization)
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(kust, &k); err != nil {
		t.Fatal(err)
	}
	t.Run("resources are every manifest", func(t *testing.T) {
		got := slices.Clone(k.Resources)
		sort.Strings(got)
		if diff := cmp.Diff(files, got); diff != "" {
			t.Errorf("kustomization resources (-manifests +resources):\n%s", diff)
		}
	})

	rendered := render(t, filesys.MakeFsOnDisk(), ".")
	t.Run("render equals manifests", func(t *testing.T) {
		want := map[string]map[string]any{}
		for _, o := range loadManifests(t).all {
			want[o.id()] = o.u.Object
		}
		got := map[string]map[string]any{}
		for _, o := range index(t, rendered).all {
			got[o.id()] = o.u.Object
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("kustomize output differs from the manifests (-manifests +kustomize):\n%s", diff)
		}
	})

	t.Run("overlay sets the image", func(t *testing.T) {
		fSys := filesys.MakeFsInMemory()
		for _, f := range append(files, kustomization) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := fSys.WriteFile(filepath.Join("/base", f), data); err != nil {
				t.Fatal(err)
			}
		}
		overlay := strings.Join([]string{
			"resources: [../base]",
			"images:",
			"  - name: ghcr.io/podgate/podgate",
			"    newName: registry.example.test/team/podgate",
			"    newTag: v1.2.3",
			"",
		}, "\n")
		if err := fSys.WriteFile("/overlay/kustomization.yaml", []byte(overlay)); err != nil {
			t.Fatal(err)
		}
		m := index(t, render(t, fSys, "/overlay"))
		if got, want := m.ds.Spec.Template.Spec.Containers[0].Image, "registry.example.test/team/podgate:v1.2.3"; got != want {
			t.Errorf("image = %q, want %q", got, want)
		}
	})
}
