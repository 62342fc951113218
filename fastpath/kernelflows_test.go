package fastpath

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/policy/table"
)

// memFlowTable is a FlowTable in memory.
type memFlowTable struct {
	flows    map[conntrack.Key]KernelFlow // by original-direction key
	counters map[uint32]KernelCounters
	calls    int
	fail     error // the next Install installs nothing and returns it
	lease    int64
}

func newMemFlowTable() *memFlowTable {
	return &memFlowTable{flows: map[conntrack.Key]KernelFlow{}, counters: map[uint32]KernelCounters{}}
}

func kfKey(kf KernelFlow) conntrack.Key {
	return conntrack.MakeKey(kf.Src, kf.Dst, table.Protocol(kf.Proto), kf.SrcPort, kf.DstPort)
}

func (m *memFlowTable) Install(flows []KernelFlow) (int, error) {
	m.calls++
	if err := m.fail; err != nil {
		m.fail = nil
		return 0, err
	}
	for _, kf := range flows {
		delete(m.flows, kfKey(kf).Reverse())
		m.flows[kfKey(kf)] = kf
	}
	return len(flows), nil
}

func (m *memFlowTable) Remove(flows []KernelFlow) error {
	m.calls++
	for _, kf := range flows {
		delete(m.flows, kfKey(kf))
		delete(m.flows, kfKey(kf).Reverse())
	}
	return nil
}

func (m *memFlowTable) Lease(until int64) error {
	m.lease = until
	return nil
}

func (m *memFlowTable) Take(slot uint32) KernelCounters {
	c := m.counters[slot]
	delete(m.counters, slot)
	return c
}

// get returns the installed flow with key k in either direction, and
// whether k is its original direction.
func (m *memFlowTable) get(k conntrack.Key) (KernelFlow, bool, bool) {
	if kf, ok := m.flows[k]; ok {
		return kf, true, true
	}
	kf, ok := m.flows[k.Reverse()]
	return kf, false, ok
}

func offloadRig(t *testing.T, tweak func(*Config)) (*rig, *memFlowTable) {
	t.Helper()
	ft := newMemFlowTable()
	r := newPuntRig(t, articleTable(t), func(c *Config) {
		c.Offload = ft
		if tweak != nil {
			tweak(c)
		}
	})
	return r, ft
}

func portIfindex(r *rig, name string) int {
	for _, p := range r.e.ports {
		if p.Name == name {
			return p.Ifindex
		}
	}
	return 0
}

func TestOffloadPodToPodTCP(t *testing.T) {
	r, ft := offloadRig(t, nil)
	api, db := wire("api"), wire("db")
	k := conntrack.MakeKey(apiIP, dbIP, table.TCP, 40000, 80)
	as, ad := fromPod(api)
	ds, dd := fromPod(db)
	r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, dbIP, 40000, 80, tcpOpt{syn: true})), "db")
	r.expectOne(r.send("db", tcpFrame(t, ds, dd, dbIP, apiIP, 80, 40000, tcpOpt{syn: true, ack: true})), "api")
	if len(ft.flows) != 0 {
		t.Fatal("a flow was offloaded before the handshake completed")
	}
	r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, dbIP, 40000, 80, tcpOpt{ack: true})), "db")
	kf, orig, ok := ft.get(k)
	if !ok || !orig {
		t.Fatalf("established flow not offloaded (in its original direction): %v", ft.flows)
	}
	ent, _ := r.e.ct.Lookup(k, r.clock)
	slot, _ := r.e.ct.Index(ent)
	want := KernelFlow{Src: apiIP, Dst: dbIP, Proto: 6, SrcPort: 40000, DstPort: 80, Slot: slot, Path: [2]KernelPath{
		{Action: KernelPeer, InIfindex: portIfindex(r, "api"), SrcMAC: api.podMAC, OutIfindex: portIfindex(r, "db"), DstMAC: db.podMAC, GwMAC: db.gwMAC},
		{Action: KernelPeer, InIfindex: portIfindex(r, "db"), SrcMAC: db.podMAC, OutIfindex: portIfindex(r, "api"), DstMAC: api.podMAC, GwMAC: api.gwMAC},
	}}
	if diff := cmp.Diff(want, kf, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("offloaded flow (-want +got):\n%s", diff)
	}
	if st := r.e.Stats(); st.Offloaded != 1 || st.OffloadInstalls != 1 {
		t.Errorf("offloaded %d, installs %d; want 1, 1", st.Offloaded, st.OffloadInstalls)
	}
	// Data keeps flowing through the engine when punted; nothing new is
	// installed.
	calls := ft.calls
	r.expectOne(r.send("db", tcpFrame(t, ds, dd, dbIP, apiIP, 80, 40000, tcpOpt{ack: true, payload: []byte("x")})), "api")
	if ft.calls != calls {
		t.Error("an offloaded flow was installed again")
	}
	// The FIN comes through the engine: the rest is the engine's.
	r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, dbIP, 40000, 80, tcpOpt{fin: true, ack: true})), "db")
	if _, _, ok := ft.get(k); ok {
		t.Error("the flow stayed offloaded after its FIN")
	}
	if st := r.e.Stats(); st.Offloaded != 0 || st.OffloadRemoves != 1 {
		t.Errorf("offloaded %d, removes %d; want 0, 1", st.Offloaded, st.OffloadRemoves)
	}
}

func TestOffloadKernelPaths(t *testing.T) {
	// apipod -> outside (its egress allows the backend namespace, here a
	// Service address the kernel routes) and the test VM -> apipod:80.
	r, ft := offloadRig(t, nil)
	api := wire("api")
	as, ad := fromPod(api)
	ks, kd := fromKernel()
	// UDP from the VM is not allowed by the article; TCP 80 is.
	k := conntrack.MakeKey(vmIP, apiIP, table.TCP, 50000, 80)
	r.expectOne(r.send("kernel", tcpFrame(t, ks, kd, vmIP, apiIP, 50000, 80, tcpOpt{syn: true})), "api")
	r.expectOne(r.send("api", tcpFrame(t, as, ad, apiIP, vmIP, 80, 50000, tcpOpt{syn: true, ack: true})), "kernel")
	r.expectOne(r.send("kernel", tcpFrame(t, ks, kd, vmIP, apiIP, 50000, 80, tcpOpt{ack: true})), "api")
	kf, _, ok := ft.get(k)
	if !ok {
		t.Fatal("not offloaded")
	}
	want := [2]KernelPath{
		{Action: KernelRedirect, InIfindex: kernelIfindex, OutIfindex: portIfindex(r, "api"), DstMAC: api.podMAC, GwMAC: api.gwMAC},
		{Action: KernelPass, InIfindex: portIfindex(r, "api"), SrcMAC: api.podMAC},
	}
	if diff := cmp.Diff(want, kf.Path); diff != "" {
		t.Errorf("paths (-want +got):\n%s", diff)
	}
	// UDP is offloaded at its first packet (apppod -> apipod:80/UDP, once
	// apipod admits UDP 80).
	r.store.Publish(articleWith(t, withUDP80))
	ps, pd := fromPod(wire("app"))
	r.expectOne(r.send("app", udpFrame(t, ps, pd, appIP, apiIP, 5000, 80, []byte("q"))), "api")
	if _, _, ok := ft.get(conntrack.MakeKey(appIP, apiIP, table.UDP, 5000, 80)); !ok {
		t.Error("an allowed UDP flow was not offloaded at its first packet")
	}
	// A UDP flow that policy denies is not.
	before := r.e.Stats()
	r.expectDrop(r.send("api", udpFrame(t, as, ad, apiIP, dbIP, 5000, 53, []byte("q"))), DropDeniedIngress, before)
	if _, _, ok := ft.get(conntrack.MakeKey(apiIP, dbIP, table.UDP, 5000, 53)); ok {
		t.Error("a denied UDP flow was offloaded")
	}
}

// A new table is applied to offloaded flows at once: those it denies are
// removed from the kernel and cut before the engine forwards anything
// else; the others stay.
func TestOffloadStrictRecheck(t *testing.T) {
	r, ft := offloadRig(t, nil)
	handshake(t, r, "api", "db", dbIP, 40000, 80)   // cut by the new table
	handshake(t, r, "app", "api", apiIP, 40001, 80) // kept
	if len(ft.flows) != 2 {
		t.Fatalf("%d flows offloaded, want 2", len(ft.flows))
	}
	r.store.Publish(articleWith(t, func(name string, s *networkingv1.NetworkPolicySpec) {
		if name == "dbpod-policy" {
			s.Ingress = nil
		}
	}))
	r.e.runOnce() // no frames: the table change alone
	cutKey := conntrack.MakeKey(apiIP, dbIP, table.TCP, 40000, 80)
	if _, _, ok := ft.get(cutKey); ok {
		t.Error("a flow the new table denies is still in the kernel")
	}
	if _, _, ok := ft.get(conntrack.MakeKey(appIP, apiIP, table.TCP, 40001, 80)); !ok {
		t.Error("a flow the new table allows was taken out of the kernel")
	}
	if ent, _ := r.e.ct.Lookup(cutKey, r.clock); ent == nil || !ent.Tombstoned() {
		t.Error("the cut flow is not a tombstone")
	}
	st := r.e.Stats()
	if st.FlowsCut != 1 || st.Rechecks != 2 || st.Offloaded != 1 {
		t.Errorf("cut %d, rechecks %d, offloaded %d; want 1, 2, 1", st.FlowsCut, st.Rechecks, st.Offloaded)
	}
	// Its packets, punted now, meet the tombstone.
	s, d := fromPod(wire("api"))
	before := r.e.Stats()
	r.expectDrop(r.send("api", tcpFrame(t, s, d, apiIP, dbIP, 40000, 80, tcpOpt{ack: true, payload: []byte("x")})), DropDeniedIngress, before)
}

// The kernel's counters keep an offloaded flow alive and counted; an idle
// one expires and leaves the kernel.
func TestOffloadSweep(t *testing.T) {
	r, ft := offloadRig(t, nil)
	k := conntrack.MakeKey(apiIP, dbIP, table.TCP, 40000, 80)
	handshake(t, r, "api", "db", dbIP, 40000, 80)
	ent, _ := r.e.ct.Lookup(k, r.clock)
	slot, _ := r.e.ct.Index(ent)
	// Ten minutes in which the kernel forwards the flow; the sweep runs.
	for range 600 {
		r.clock += int64(time.Second)
		ft.counters[slot] = KernelCounters{LastSeen: r.clock - int64(time.Millisecond), Packets: [2]uint64{10, 5}, Bytes: [2]uint64{1000, 500}}
		r.e.runOnce()
	}
	ent, _ = r.e.ct.Lookup(k, r.clock)
	if ent == nil || ent.LastSeen() < r.clock-int64(2*time.Second) {
		t.Fatalf("flow %v: the kernel's packets did not keep it fresh", ent)
	}
	if ent.Packets[0] < 6000 || ent.Bytes[1] < 300000 {
		t.Errorf("counters %v %v: the kernel's counts were not folded in", ent.Packets, ent.Bytes)
	}
	// A UDP flow offloaded and then idle in the kernel too expires after
	// 30 s and leaves the kernel.
	r.store.Publish(articleWith(t, withUDP80))
	ps, pd := fromPod(wire("app"))
	r.expectOne(r.send("app", udpFrame(t, ps, pd, appIP, apiIP, 5000, 80, []byte("q"))), "api")
	uk := conntrack.MakeKey(appIP, apiIP, table.UDP, 5000, 80)
	if _, _, ok := ft.get(uk); !ok {
		t.Fatal("UDP flow not offloaded")
	}
	for range 40 {
		r.clock += int64(time.Second)
		r.e.runOnce()
	}
	if _, _, ok := ft.get(uk); ok {
		t.Error("an idle UDP flow stayed in the kernel after it expired")
	}
	// The TCP flow that the kernel kept busy is still there.
	if _, _, ok := ft.get(k); !ok {
		t.Error("the busy TCP flow left the kernel")
	}
}

func TestOffloadPortsAndErrors(t *testing.T) {
	r, ft := offloadRig(t, nil)
	handshake(t, r, "api", "db", dbIP, 40000, 80)
	k := conntrack.MakeKey(apiIP, dbIP, table.TCP, 40000, 80)
	// db's veth goes: its flows leave the kernel (and stay tracked).
	if err := r.e.removePort("db"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := ft.get(k); ok {
		t.Error("a flow of a removed port stayed in the kernel")
	}
	if ent, _ := r.e.ct.Lookup(k, r.clock); ent == nil || ent.Flags&conntrack.FlagOffloaded != 0 {
		t.Error("the flow was forgotten, or still marked offloaded")
	}
	// An install that fails leaves the flow with the engine.
	ft.fail = errors.New("no memory")
	handshake(t, r, "app", "api", apiIP, 40001, 80)
	k2 := conntrack.MakeKey(appIP, apiIP, table.TCP, 40001, 80)
	ent, _ := r.e.ct.Lookup(k2, r.clock)
	if _, _, ok := ft.get(k2); ok || ent == nil || ent.Flags&conntrack.FlagOffloaded != 0 {
		t.Error("a failed install left the flow marked offloaded")
	}
	if st := r.e.Stats(); st.OffloadErrors != 1 || st.Offloaded != 0 || r.e.OffloadError() == "" {
		t.Errorf("errors %d, offloaded %d, last error %q", st.OffloadErrors, st.Offloaded, r.e.OffloadError())
	}
	// The next packet of the flow offers it again.
	s, d := fromPod(wire("app"))
	r.expectOne(r.send("app", tcpFrame(t, s, d, appIP, apiIP, 40001, 80, tcpOpt{ack: true, payload: []byte("x")})), "api")
	if _, _, ok := ft.get(k2); !ok {
		t.Error("the flow was not offloaded after the failure")
	}
}

// The engine keeps the kernel's lease ahead of its clock while it runs.
func TestOffloadLease(t *testing.T) {
	r, ft := offloadRig(t, nil)
	for range 10 {
		r.clock += int64(700 * time.Millisecond)
		r.e.runOnce()
		if ft.lease <= r.clock+int64(time.Second) {
			t.Fatalf("lease until %d at %d: not renewed ahead", ft.lease, r.clock)
		}
	}
}
