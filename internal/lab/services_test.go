package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

const servicesDir = "testdata/services"

// The article's Service: backend/db at 10.1.0.100:80, in front of dbpod.
const (
	dbClusterIP = "10.1.0.100"
	dbPod       = "10.0.1.10"
)

var tcp80 = table.PortSpec{Port: 80, Protocol: table.TCP}

// TestPlanServices reads the Services as the lab's kube-proxy does and
// writes the iptables-restore input, without touching the kernel.
func TestPlanServices(t *testing.T) {
	m, err := policy.Load(servicesDir)
	if err != nil {
		t.Fatal(err)
	}
	owners := map[netip.Addr]*Endpoint{}
	for _, p := range m.Pods {
		ep := &Endpoint{Name: p.Namespace + "/" + p.Name, Kind: KindPod}
		for _, ip := range p.Status.PodIPs {
			owners[netip.MustParseAddr(ip.IP)] = ep
		}
	}
	// web-2 is "on another node": not programmed, with a note.
	delete(owners, netip.MustParseAddr("fd00:30::4"))
	svcs, notes := planServices(m, func(a netip.Addr) *Endpoint { return owners[a] })
	var got []string
	for _, s := range svcs {
		for _, p := range s.Ports {
			for _, b := range p.Backends {
				got = append(got, fmt.Sprintf("%s %v %d/%s -> %s %s", s.Name, s.ClusterIPs, p.Port, p.Protocol, netip.AddrPortFrom(b.Addr, b.Port), b.Endpoint.Name))
			}
		}
	}
	want := []string{
		"svc/mixed [10.30.100.2] 80/TCP -> 10.30.0.3:8080 svc/web-1",
		"svc/mixed [10.30.100.2] 80/TCP -> 10.30.0.5:8080 svc/other",
		"svc/web [10.30.100.1 fd00:30:100::1] 80/TCP -> 10.30.0.3:8080 svc/web-1",
		"svc/web [10.30.100.1 fd00:30:100::1] 80/TCP -> 10.30.0.4:8080 svc/web-2",
		"svc/web [10.30.100.1 fd00:30:100::1] 80/TCP -> [fd00:30::3]:8080 svc/web-1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("services:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "Service svc/web port 80/TCP: backend [fd00:30::4]:8080 is not in the lab") {
		t.Errorf("notes: %q", notes)
	}

	v4 := natRules(svcs, true)
	for _, w := range []string{
		"*nat\n", ":PGLAB-SERVICES - [0:0]\n", "-A PREROUTING -j PGLAB-SERVICES\n", "-A OUTPUT -j PGLAB-SERVICES\n",
		"-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n",
		`-A PGLAB-SERVICES -d 10.30.100.1/32 -p tcp -m tcp --dport 80 -m comment --comment "svc/web:80" -j PGLAB-SVC-1-0` + "\n",
		"-A PGLAB-SVC-1-0 -m statistic --mode random --probability 0.5000000000 -j PGLAB-SEP-1-0-0\n",
		"-A PGLAB-SVC-1-0 -j PGLAB-SEP-1-0-1\n",
		"-A PGLAB-SEP-1-0-0 -s 10.30.0.3/32 -j MARK --set-xmark 0x4000/0x4000\n",
		"-A PGLAB-SEP-1-0-0 -p tcp -j DNAT --to-destination 10.30.0.3:8080\n",
		"-A PGLAB-SEP-1-0-1 -p tcp -j DNAT --to-destination 10.30.0.4:8080\n",
		"COMMIT\n",
	} {
		if !strings.Contains(v4, w) {
			t.Errorf("IPv4 rules lack %q:\n%s", w, v4)
		}
	}
	v6 := natRules(svcs, false)
	if !strings.Contains(v6, "-A PGLAB-SERVICES -d fd00:30:100::1/128 -p tcp") ||
		!strings.Contains(v6, "-A PGLAB-SVC-1-0 -j PGLAB-SEP-1-0-0\n") || // one backend: no statistic
		!strings.Contains(v6, "-j DNAT --to-destination [fd00:30::3]:8080\n") || strings.Contains(v6, "statistic") {
		t.Errorf("IPv6 rules:\n%s", v6)
	}
	if got := natRules(nil, true); got != "" {
		t.Errorf("rules without Services: %q", got)
	}
}

// deniedFlow waits for the agent's flow log to record a denied flow from
// src to dst and returns the side that denied it.
func deniedFlow(t *testing.T, l *Lab, src, dst string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		dir, ok, err := lookupDeniedFlow(l, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return dir
		}
		if time.Now().After(deadline) {
			t.Fatalf("no denied flow %s -> %s in the agent's flow log", src, dst)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lookupDeniedFlow reads the agent's flow log once and returns the
// direction of a denied flow src -> dst, if there is one.
func lookupDeniedFlow(l *Lab, src, dst string) (string, bool, error) {
	resp, err := l.HTTPClient().Get(l.AgentURL() + "/flows?verdict=deny")
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var rec struct {
			Src, Dst  struct{ IP string }
			Direction string
		}
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Src.IP == src && rec.Dst.IP == dst {
			return rec.Direction, true, nil
		}
	}
	return "", false, sc.Err()
}

// probeService probes from -> to and checks expectation and observation.
func probeService(t *testing.T, l *Lab, from, to string, p table.PortSpec, want bool) Result {
	t.Helper()
	r, err := l.ProbeResult(context.Background(), from, to, p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Expected != want || r.Observed != want {
		t.Errorf("%s: want %s", r.String(), verdict(want))
	}
	return r
}

// TestArticleServiceKernelOnly: without an agent, the lab's node DNATs the
// db Service to the DB pod (kube-proxy's part is real): every source
// reaches it.
func TestArticleServiceKernelOnly(t *testing.T) {
	l := newArticleLab(t, EnforcerNone)
	svc, ok := l.Service("backend/db")
	if !ok || len(svc.Ports) != 1 || len(svc.Ports[0].Backends) != 1 || svc.Ports[0].Backends[0].Endpoint.Name != "backend/dbpod" {
		t.Fatalf("Service backend/db: %+v", svc)
	}
	// backend/dbpod reaches its own Service: hairpin, masqueraded.
	for _, from := range []string{"frontend/apipod", "frontend/apppod", "testvm", "node", "backend/dbpod"} {
		r := probeService(t, l, from, dbClusterIP, tcp80, true)
		if r.To != "Service backend/db" {
			t.Errorf("probe destination %q", r.To)
		}
	}
	// Names work as destinations too; a Service is no source, and has
	// only its own ports.
	probeService(t, l, "frontend/apppod", "Service backend/db", tcp80, true)
	if _, err := l.ProbeResult(context.Background(), dbClusterIP, "frontend/apipod", tcp80); err == nil {
		t.Error("a Service as a probe source: no error")
	}
	if _, err := l.ProbeResult(context.Background(), "frontend/apipod", dbClusterIP, table.PortSpec{Port: 81, Protocol: table.TCP}); err == nil || !strings.Contains(err.Error(), "has no port") {
		t.Errorf("a port the Service does not have: %v", err)
	}
}

// TestArticleServiceWithAgent is the article's db Service with podgate
// enforcing and the node DNATing ClusterIP 10.1.0.100:80 to the DB pod:
// the API pod connects through the Service (its egress is judged against
// the Service's backend, allowed by its backend-namespace rule; the DB
// pod's ingress is judged after the DNAT and allows it), the App pod is
// denied at its egress, and the test VM (outside: not a pod's egress) is
// denied only by the DB pod's ingress after the DNAT.
func TestArticleServiceWithAgent(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{articleDir}, Prefix: testPrefix})
	if err := l.StartAgent(context.Background(), bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	tab := l.Table()
	api, app, vm, svcIP := netip.MustParseAddr("10.0.1.30"), netip.MustParseAddr("10.0.1.20"), netip.MustParseAddr("10.0.0.4"), netip.MustParseAddr(dbClusterIP)

	t.Run("apipod connects through the Service", func(t *testing.T) {
		v := tab.Lookup(api, svcIP, table.TCP, 80)
		if v.Egress.Reason != table.AllowedByRule || tab.Rule(table.Egress, v.Egress.Rule).String() != "frontend/apipod-policy egress[0]" {
			t.Errorf("egress of apipod to the Service: %+v", v.Egress)
		}
		if in := tab.Lookup(api, netip.MustParseAddr(dbPod), table.TCP, 80).Ingress; in.Reason != table.AllowedByRule {
			t.Errorf("dbpod's ingress from apipod: %+v", in)
		}
		probeService(t, l, "frontend/apipod", dbClusterIP, tcp80, true)
		// A longer exchange over one connection, through the DNAT.
		c, err := l.Dial(context.Background(), "frontend/apipod", dbClusterIP, tcp80)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range 20 {
			if err := echo(c, time.Second); err != nil {
				t.Fatalf("echo through the Service: %v", err)
			}
		}
	})
	t.Run("apppod is denied at its egress", func(t *testing.T) {
		if v := tab.Lookup(app, svcIP, table.TCP, 80); v.Egress.Reason != table.Denied {
			t.Errorf("egress of apppod to the Service: %+v", v.Egress)
		}
		probeService(t, l, "frontend/apppod", dbClusterIP, tcp80, false)
		if got := deniedFlow(t, l, "10.0.1.20", dbClusterIP); got != "egress" {
			t.Errorf("apppod -> the ClusterIP was denied at %q, want egress (before the DNAT)", got)
		}
	})
	t.Run("dbpod reaches its own Service", func(t *testing.T) {
		// Its egress is isolated without rules, but the only backend is
		// itself (loopback); the node masquerades the hairpin connection,
		// and the node may reach its pods.
		if v := tab.Lookup(netip.MustParseAddr(dbPod), svcIP, table.TCP, 80); v.Egress.Reason != table.Loopback {
			t.Errorf("dbpod -> its Service: %+v", v.Egress)
		}
		probeService(t, l, "backend/dbpod", dbClusterIP, tcp80, true)
		// Anywhere else, its egress is denied.
		probeService(t, l, "backend/dbpod", "frontend/apipod", tcp80, false)
	})
	t.Run("testvm is outside: only dbpod's ingress judges it", func(t *testing.T) {
		if v := tab.Lookup(vm, svcIP, table.TCP, 80); v.Egress.Reason != table.NotPod || v.Ingress.Reason != table.NotPod {
			t.Errorf("testvm -> the ClusterIP: %+v, want not-pod on both sides", v)
		}
		probeService(t, l, "testvm", dbClusterIP, tcp80, false)
		if got := deniedFlow(t, l, "10.0.0.4", dbPod); got != "ingress" {
			t.Errorf("testvm -> the DB pod (after the DNAT) was denied at %q, want ingress", got)
		}
	})
}

// conntrackBackends returns the addresses the node's conntrack table
// DNATed connections to dst to.
func conntrackBackends(t *testing.T, l *Lab, dst string) map[string]int {
	t.Helper()
	out := map[string]int{}
	var data []byte
	err := l.Node().NS.Do(func() error {
		var err error
		data, err = os.ReadFile("/proc/thread-self/net/nf_conntrack")
		return err
	})
	if err != nil {
		t.Skipf("no conntrack table to read: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		var srcs, dsts []string
		for _, x := range f {
			if v, ok := strings.CutPrefix(x, "src="); ok {
				srcs = append(srcs, v)
			}
			if v, ok := strings.CutPrefix(x, "dst="); ok {
				dsts = append(dsts, v)
			}
		}
		// Original tuple first, reply tuple second: the reply's source is
		// the backend.
		if len(dsts) == 2 && len(srcs) == 2 && netip.MustParseAddr(dsts[0]) == netip.MustParseAddr(dst) {
			out[netip.MustParseAddr(srcs[1]).String()]++
		}
	}
	return out
}

// TestServicesWithAgent: a dual-stack Service with two backends that the
// node picks at random, behind a named target port; a Service one of whose
// backends the client may not reach; and a source whose egress is free
// but that the backends' ingress refuses.
func TestServicesWithAgent(t *testing.T) {
	bin, extra := buildPodgate(t)
	l := NewForTest(t, Spec{Manifests: []string{servicesDir}, Prefix: testPrefix, ProbeTimeout: time.Second, ProbeFromNode: true})
	if err := l.StartAgent(context.Background(), bin, extra(l)...); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"10.30.100.1", "fd00:30:100::1"} {
		t.Run("client to web "+ip, func(t *testing.T) {
			for range 16 {
				probeService(t, l, "svc/client", ip, tcp80, true)
			}
			hit := conntrackBackends(t, l, ip)
			if len(hit) != 2 {
				t.Errorf("16 connections went to %v, want both backends", hit)
			}
			t.Logf("backends chosen by the node: %v", hit)
		})
	}
	t.Run("one backend the client may not reach denies the Service", func(t *testing.T) {
		for range 4 {
			probeService(t, l, "svc/client", "10.30.100.2", tcp80, false)
		}
		if got := deniedFlow(t, l, "10.30.0.2", "10.30.100.2"); got != "egress" {
			t.Errorf("denied at %q, want egress", got)
		}
	})
	t.Run("backends' ingress after the DNAT", func(t *testing.T) {
		probeService(t, l, "svc/other", "10.30.100.1", tcp80, false)
		probeService(t, l, "svc/other", "fd00:30:100::1", tcp80, false)
		probeService(t, l, "node", "10.30.100.1", tcp80, true)
	})
	t.Run("matrix unchanged", func(t *testing.T) {
		results, err := l.Matrix(context.Background(), []table.PortSpec{{Port: 8080, Protocol: table.TCP}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range Mismatches(results) {
			t.Errorf("%s %s", r.Mark(), r.String())
		}
	})
}
