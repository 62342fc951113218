package fastpath

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podgate/podgate/policy"
)

func TestFlowLog(t *testing.T) {
	r := newRig(t, articleTable(t), nil)
	var logBuf bytes.Buffer
	fl, err := NewFlowLog(FlowLogConfig{Engine: r.e, Store: r.store, Logger: slog.New(slog.NewJSONHandler(&logBuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	r.expectOne(r.send("app", syn(t, wire("app"), apiIP, 80)), "api")
	s, d := fromKernel()
	r.send("kernel", tcpFrame(t, s, d, vmIP, dbIP, 5555, 80, tcpOpt{syn: true}))
	fl.drain()

	recs := fl.Recent(FlowFilter{})
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2: %+v", len(recs), recs)
	}
	allow, deny := recs[0], recs[1]
	if allow.Verdict != "allow" || allow.Src.Pod != "apppod" || allow.Dst.Namespace != "frontend" || allow.Dst.Port != 80 ||
		strings.Join(allow.Policies, ";") != "frontend/apppod-policy egress[0];frontend/apipod-policy ingress[0]" {
		t.Errorf("allowed record %+v", allow)
	}
	if deny.Verdict != "deny" || deny.Direction != "ingress" || deny.Reason != "denied_ingress" || deny.Dst.Pod != "dbpod" ||
		deny.Src.Pod != "" || deny.Src.IP != vmIP || strings.Join(deny.Policies, ";") != "backend/dbpod-policy" {
		t.Errorf("denied record %+v", deny)
	}
	if got := fl.Recent(FlowFilter{Verdict: "deny", Namespace: "backend"}); len(got) != 1 {
		t.Errorf("filter deny/backend: %d records, want 1", len(got))
	}
	if got := fl.Recent(FlowFilter{Namespace: "kube-system"}); len(got) != 0 {
		t.Errorf("filter kube-system: %d records, want 0", len(got))
	}
	// One JSON log line, for the denied flow only.
	var line map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(logBuf.Bytes()), &line); err != nil {
		t.Fatalf("log is not one JSON line: %v\n%s", err, logBuf.String())
	}
	for k, v := range map[string]any{"msg": "flow denied", "direction": "ingress", "dstPod": "dbpod", "srcIP": "10.0.0.4", "dstPort": 80.0, "protocol": "TCP"} {
		if line[k] != v {
			t.Errorf("log %s = %v, want %v", k, line[k], v)
		}
	}

	// The HTTP endpoint: recent records, then followed ones.
	srv := httptest.NewServer(fl)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/flows?verdict=deny&follow=true", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || !strings.Contains(sc.Text(), `"dbpod"`) {
		t.Fatalf("first streamed line %q", sc.Text())
	}
	r.send("app", syn(t, wire("app"), dbIP, 80)) // a new denial while following
	go func() {
		for ctx.Err() == nil {
			fl.drain()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if !sc.Scan() || !strings.Contains(sc.Text(), `"direction":"egress"`) {
		t.Fatalf("followed line %q (%v)", sc.Text(), sc.Err())
	}
	if resp2, err := http.Get(srv.URL + "/flows?verdict=maybe"); err != nil || resp2.StatusCode != http.StatusBadRequest {
		t.Errorf("bad verdict: %v %v", resp2, err)
	}
	// Followers beyond the cap are refused (one is already following).
	for i := 1; i <= 16; i++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/flows?follow=true", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		want := http.StatusOK
		if i == 16 {
			want = http.StatusServiceUnavailable
		}
		if resp.StatusCode != want {
			t.Fatalf("follower %d: status %d, want %d", i+1, resp.StatusCode, want)
		}
	}
}

// A denial made by a cluster policy names its rule in the flow log, and is
// not counted against the NetworkPolicies that isolate the pod.
func TestFlowLogClusterPolicyDenial(t *testing.T) {
	m, err := policy.Load(article, article+"/cluster-network-policies")
	if err != nil {
		t.Fatal(err)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, tab, nil)
	fl, err := NewFlowLog(FlowLogConfig{Engine: r.e, Store: r.store})
	if err != nil {
		t.Fatal(err)
	}
	before := r.e.Stats()
	r.expectDrop(r.send("api", syn(t, wire("api"), netip.MustParseAddr("169.254.169.254"), 80)), DropDeniedEgress, before)
	fl.drain()
	recs := fl.Recent(FlowFilter{Verdict: "deny"})
	if len(recs) != 1 {
		t.Fatalf("%d denied records, want 1: %+v", len(recs), recs)
	}
	want := `ClusterNetworkPolicy deny-instance-metadata egress[0] "deny-imds" (Admin tier, priority 10)`
	if got := strings.Join(recs[0].Policies, ";"); got != want || recs[0].Direction != "egress" {
		t.Errorf("record names %q (%s), want %q (egress)", got, recs[0].Direction, want)
	}
	for name, c := range r.e.PolicyCounts() {
		if c.DeniedPackets != [2]uint64{} {
			t.Errorf("the cluster policy's denial was counted against NetworkPolicy %v", name)
		}
	}
}
