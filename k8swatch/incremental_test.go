package k8swatch

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// TestAPISourceUpdatesTableForPodChanges churns pods (creations,
// deletions, relabels, new addresses) through the API with a policy
// change now and then, and checks that the source updates the last table
// for pod changes (Status.Incremental) and that its table ends up equal,
// verdict for verdict over every pair of pods, to a full compile of the
// informer caches.
func TestAPISourceUpdatesTableForPodChanges(t *testing.T) {
	ctx := t.Context()
	objs := []runtime.Object{
		newNamespace("a", map[string]string{"team": "x"}),
		newNamespace("b", map[string]string{"team": "x"}),
		newNamespace("c", map[string]string{"team": "y"}),
		ingressPolicy("a", "web", "web", "client", "x", 80),
		ingressPolicy("b", "db", "db", "web", "", 80),
		ingressPolicy("c", "web", "web", "client", "x", 81),
	}
	nss := []string{"a", "b", "c"}
	apps := []string{"web", "client", "db"}
	type podRef struct{ ns, name string }
	var pods []podRef
	ip := 0
	nextIP := func() string {
		ip++
		return fmt.Sprintf("10.0.%d.%d", ip/250, ip%250+1)
	}
	for i := range 12 {
		ns := nss[i%3]
		name := fmt.Sprintf("p%d", i)
		objs = append(objs, newPod(ns, name, nextIP(), map[string]string{"app": apps[i%3]}))
		pods = append(pods, podRef{ns, name})
	}
	f := newFake(t, APIConfig{MinInterval: time.Millisecond}, objs...)
	f.start(t)
	f.waitReady(t)

	r := rand.New(rand.NewPCG(3, 4))
	created := 0
	for step := range 150 {
		switch k := r.IntN(20); {
		case k < 5 || len(pods) == 0: // a new pod, with or without an address
			ns := nss[r.IntN(3)]
			name := fmt.Sprintf("n%d", created)
			created++
			addr := nextIP()
			if r.IntN(4) == 0 {
				addr = ""
			}
			if _, err := f.client.CoreV1().Pods(ns).Create(ctx, newPod(ns, name, addr, map[string]string{"app": apps[r.IntN(3)]}), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			pods = append(pods, podRef{ns, name})
		case k < 8: // a pod goes
			i := r.IntN(len(pods))
			if err := f.client.CoreV1().Pods(pods[i].ns).Delete(ctx, pods[i].name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			pods = slices.Delete(pods, i, i+1)
		case k < 19: // relabel (often to a label no pod had) or readdress
			p := pods[r.IntN(len(pods))]
			pod, err := f.client.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.IntN(4) == 0 {
				a := nextIP()
				pod.Status.PodIP, pod.Status.PodIPs = a, []corev1.PodIP{{IP: a}}
			} else {
				pod.Labels = map[string]string{"app": apps[r.IntN(3)]}
				if r.IntN(2) == 0 {
					pod.Labels["rev"] = fmt.Sprint(step)
				}
			}
			if _, err := f.client.CoreV1().Pods(p.ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		default: // a policy change: a full compile
			np := ingressPolicy(nss[r.IntN(3)], fmt.Sprintf("later%d", step), apps[r.IntN(3)], apps[r.IntN(3)], "y", int32(80+r.IntN(2)))
			if _, err := f.client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if r.IntN(4) == 0 {
			time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
		}
	}

	// A last relabel: pods that take no part in policy are noted for the
	// next rebuild (Stats.Pods) but do not trigger one.
	pod, err := f.client.CoreV1().Pods(pods[0].ns).Get(ctx, pods[0].name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Labels = map[string]string{"app": "last"}
	if _, err := f.client.CoreV1().Pods(pod.Namespace).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The table must come to agree with a full compile of the caches.
	ports := []table.PortSpec{{Protocol: table.TCP, Port: 80}, {Protocol: table.TCP, Port: 81}}
	var diff string
	agrees := func() bool {
		want, err := compileCaches(f)
		if err != nil {
			t.Fatal(err)
		}
		got := f.store.Load()
		diff = ""
		if w, g := want.Matrix(ports), got.Matrix(ports); !slices.Equal(w, g) {
			diff = fmt.Sprintf("full compile %d entries, source %d", len(w), len(g))
			for i := range min(len(w), len(g)) {
				if w[i] != g[i] {
					diff = fmt.Sprintf("first difference: full compile %+v, source %+v", w[i], g[i])
					break
				}
			}
			return false
		}
		if w, g := want.Stats(), got.Stats(); w.Endpoints != g.Endpoints || w.Pods != g.Pods {
			diff = fmt.Sprintf("full compile %d endpoints of %d pods, source %d of %d", w.Endpoints, w.Pods, g.Endpoints, g.Pods)
			return false
		}
		return true
	}
	for deadline := time.Now().Add(10 * time.Second); !agrees(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the table does not agree with a full compile of the caches after 10 s: %s", diff)
		}
	}
	st := f.src.Status()
	t.Logf("%d events, %d rebuilds, %d of them incremental, %d failures", st.Events, st.Rebuilds, st.Incremental, st.Failures)
	if st.Incremental == 0 || st.Incremental == st.Rebuilds {
		t.Errorf("%d of %d rebuilds incremental: want some of each", st.Incremental, st.Rebuilds)
	}
	if st.Failures > 0 {
		t.Errorf("%d rebuilds failed: %v", st.Failures, st.LastError)
	}
}

// compileCaches compiles what the source's informer caches hold.
func compileCaches(f *fakeSetup) (*table.Table, error) {
	nss, err1 := f.src.namespaces.List(labels.Everything())
	pods, err2 := f.src.pods.List(labels.Everything())
	nps, err3 := f.src.policies.List(labels.Everything())
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, fmt.Errorf("list caches: %v %v %v", err1, err2, err3)
	}
	return policy.Compile(&policy.Cluster{Namespaces: nss, Pods: pods, Policies: nps})
}
