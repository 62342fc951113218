package fastpath

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/policy/table"
)

func TestAccounting(t *testing.T) {
	r := newRig(t, articleTable(t), nil)
	// Allowed: apppod -> apipod:80 (apppod-policy egress[0], apipod-policy ingress[0]).
	r.expectOne(r.send("app", syn(t, wire("app"), apiIP, 80)), "api")
	// Denied egress of apppod (apppod -> dbpod), three times: one event.
	for range 3 {
		r.send("app", syn(t, wire("app"), dbIP, 80))
	}
	// Denied ingress of dbpod from the test VM.
	s, d := fromKernel()
	r.send("kernel", tcpFrame(t, s, d, vmIP, dbIP, 5555, 80, tcpOpt{syn: true}))

	stats := map[string]PortStats{}
	for _, ps := range r.e.PortStats() {
		stats[ps.Name] = ps
	}
	if got := stats["app"].DeniedEgress; got != 3 {
		t.Errorf("apppod denied egress = %d, want 3", got)
	}
	if got := stats["db"].DeniedIngress; got != 1 {
		t.Errorf("dbpod denied ingress = %d, want 1", got)
	}
	if got := stats["api"].TxPackets; got != 1 {
		t.Errorf("apipod port transmitted %d, want 1", got)
	}

	want := map[PolicyName]PolicyCounts{
		{"frontend", "apipod-policy"}: {AllowedFlows: [2]uint64{table.Ingress: 1}},
		// apppod's three denied SYNs to dbpod: apppod-policy isolates its egress.
		{"frontend", "apppod-policy"}: {AllowedFlows: [2]uint64{table.Egress: 1}, DeniedPackets: [2]uint64{table.Egress: 3}},
		// The test VM's SYN: dbpod-policy isolates dbpod's ingress.
		{"backend", "dbpod-policy"}: {DeniedPackets: [2]uint64{table.Ingress: 1}},
	}
	if diff := cmp.Diff(want, r.e.PolicyCounts()); diff != "" {
		t.Errorf("policy counts (-want +got):\n%s", diff)
	}
	// A new table keeps the totals.
	r.store.Publish(articleTable(t))
	r.e.runOnce()
	if diff := cmp.Diff(want, r.e.PolicyCounts()); diff != "" {
		t.Errorf("policy counts after a table change (-want +got):\n%s", diff)
	}

	var evs []FlowEvent
	var ev FlowEvent
	for r.e.NextEvent(&ev) {
		evs = append(evs, ev)
	}
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3 (one allowed, two denied flows): %+v", len(evs), evs)
	}
	if !evs[0].Allowed || evs[0].Src != appIP || evs[0].DstPort != 80 || evs[0].Ingress.Policy < 0 || evs[0].Egress.Policy < 0 {
		t.Errorf("allowed event %+v", evs[0])
	}
	if evs[1].Allowed || evs[1].Drop != DropDeniedEgress || evs[1].Dst != dbIP {
		t.Errorf("denied event %+v", evs[1])
	}
	if evs[2].Allowed || evs[2].Drop != DropDeniedIngress || evs[2].Src != vmIP {
		t.Errorf("denied event %+v", evs[2])
	}
}

func TestEventRingLosesWhenFull(t *testing.T) {
	var r eventRing
	ev := FlowEvent{Allowed: true}
	for range eventRingSize {
		if !r.push(&ev) {
			t.Fatal("push into a ring with room failed")
		}
	}
	if r.push(&ev) || r.lost.Load() != 1 {
		t.Errorf("push into a full ring: lost = %d, want 1", r.lost.Load())
	}
	var out FlowEvent
	if !r.pop(&out) || !r.push(&ev) {
		t.Error("a pop did not make room")
	}
}
