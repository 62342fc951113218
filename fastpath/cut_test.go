package fastpath

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Tests of issue 15: a connection that a new policy table denies stays
// cut, on the node that denies it, whatever the other end's node does and
// whichever end speaks.

// articleWith compiles the article's manifests after edit changes its
// policies (by name).
func articleWith(t testing.TB, edit func(name string, spec *networkingv1.NetworkPolicySpec)) *table.Table {
	t.Helper()
	m, err := policy.Load(article)
	if err != nil {
		t.Fatal(err)
	}
	for _, np := range m.Policies {
		edit(np.Name, &np.Spec)
	}
	tab, err := policy.Compile(&m.Cluster)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// apiIngressCut is the article after issue 15's change: apipod-policy
// becomes policyTypes [Ingress], ingress [] (no ingress; egress open).
func apiIngressCut(t testing.TB) *table.Table {
	return articleWith(t, func(name string, s *networkingv1.NetworkPolicySpec) {
		if name == "apipod-policy" {
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			s.Ingress, s.Egress = nil, nil
		}
	})
}

// appEgressCut is the article with apppod's egress allowing nothing.
func appEgressCut(t testing.TB) *table.Table {
	return articleWith(t, func(name string, s *networkingv1.NetworkPolicySpec) {
		if name == "apppod-policy" {
			s.Egress = nil
		}
	})
}

// withUDP80 lets apipod's ingress rule admit UDP 80 too.
func withUDP80(name string, s *networkingv1.NetworkPolicySpec) {
	if name == "apipod-policy" {
		udp, p := corev1.ProtocolUDP, intstr.FromInt32(80)
		s.Ingress[0].Ports = append(s.Ingress[0].Ports, networkingv1.NetworkPolicyPort{Protocol: &udp, Port: &p})
	}
}

// end is one end of a connection as a node sees it: a local pod (frames
// on its port) or a remote address (frames on the kernel leg).
type end struct {
	port string
	ip   netip.Addr
}

func (x end) macs() ([6]byte, [6]byte) {
	if x.port == "kernel" {
		return fromKernel()
	}
	return fromPod(wire(x.port))
}

// conn is a TCP connection from client to server through a rig.
type conn struct {
	r              *rig
	client, server end
	cport, sport   uint16
	cseq, sseq     uint32 // next sequence numbers of each end
}

func (c *conn) frame(fromClient bool, o tcpOpt) (string, []byte) {
	from, to, fp, tp := c.client, c.server, c.cport, c.sport
	if !fromClient {
		from, to, fp, tp = c.server, c.client, c.sport, c.cport
	}
	s, d := from.macs()
	return from.port, tcpFrame(c.r.t, s, d, from.ip, to.ip, fp, tp, o)
}

// open runs the handshake and checks that each segment arrives.
func (c *conn) open() {
	c.r.t.Helper()
	c.cseq, c.sseq = 1000, 5000
	p, f := c.frame(true, tcpOpt{syn: true, seq: c.cseq - 1})
	c.r.expectOne(c.r.send(p, f), c.server.port)
	p, f = c.frame(false, tcpOpt{syn: true, ack: true, seq: c.sseq - 1, ackNo: c.cseq})
	c.r.expectOne(c.r.send(p, f), c.client.port)
	p, f = c.frame(true, tcpOpt{ack: true, seq: c.cseq, ackNo: c.sseq})
	c.r.expectOne(c.r.send(p, f), c.server.port)
}

// push sends a data segment (a retransmission when again) from the
// server (or the client) and returns what left the rig.
func (c *conn) push(fromServer, again bool) map[string][][]byte {
	seq := &c.cseq
	ack := c.sseq
	if fromServer {
		seq, ack = &c.sseq, c.cseq
	}
	if again {
		*seq -= 5
	}
	p, f := c.frame(!fromServer, tcpOpt{ack: true, seq: *seq, ackNo: ack, payload: []byte("line\n")})
	*seq += 5
	return c.r.send(p, f)
}

// view builds the rig of one node: the pods named in remote have no port
// there (their frames come and go on the kernel leg).
func view(t *testing.T, newRig rigMaker, tab *table.Table, remote []string, tweak func(*Config)) *rig {
	t.Helper()
	r := newRig(t, tab, tweak)
	for _, n := range remote {
		if err := r.e.removePort(n); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func endOf(r *rig, pod string) end {
	ip := wire(pod).ip
	if r.e.local(ip) == nil {
		return end{"kernel", ip}
	}
	return end{pod, ip}
}

// TestCutHoldsWhicheverEndSpeaks is issue 15's reproduction: apppod
// (client) holds a connection to apipod:80 (server) on which one end
// alone speaks; the policy that allowed it changes; no segment may pass
// after the change, retransmissions included, in either direction, on
// the node whose table denies the connection, until the connection is
// silent for the tombstone timeout; and after that, a late segment does
// not start a new flow.
func TestCutHoldsWhicheverEndSpeaks(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		cases := []struct {
			name    string
			remote  []string // pods on another node
			cut     func(testing.TB) *table.Table
			want    Drop
			pusher  string // "server" or "client"
			pickups time.Duration
		}{
			// The node-2: apipod local, apppod on another node.
			{"server's node, ingress cut, server pushes", []string{"app"}, apiIngressCut, DropDeniedIngress, "server", 0},
			{"server's node, ingress cut, client pushes", []string{"app"}, apiIngressCut, DropDeniedIngress, "client", 0},
			// The other end's node, with the cut on its side.
			{"client's node, egress cut, server pushes", []string{"api"}, appEgressCut, DropDeniedEgress, "server", 0},
			{"client's node, egress cut, client pushes", []string{"api"}, appEgressCut, DropDeniedEgress, "client", 0},
			// Both pods on one node.
			{"one node, ingress cut, server pushes", nil, apiIngressCut, DropDeniedIngress, "server", 0},
			{"one node, egress cut, server pushes", nil, appEgressCut, DropDeniedEgress, "server", 0},
			// The server's node with a pick-up window that outlasts the
			// tombstone: the late segment is picked up, but judged as the
			// connection (apppod -> apipod:80), which the table denies.
			{"server's node, ingress cut, long pick-up window", []string{"app"}, apiIngressCut, DropDeniedIngress, "server", time.Hour},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := view(t, newRig, articleTable(t), tc.remote, func(c *Config) {
					if tc.pickups != 0 {
						c.ReversePickup = tc.pickups
					}
				})
				c := &conn{r: r, client: endOf(r, "app"), server: endOf(r, "api"), cport: 48342, sport: 80}
				c.open()
				fromServer := tc.pusher == "server"
				receiver := c.client.port
				if !fromServer {
					receiver = c.server.port
				}
				r.expectOne(c.push(fromServer, false), receiver)
				r.store.Publish(tc.cut(t))

				before := r.e.Stats()
				r.expectDrop(c.push(fromServer, false), tc.want, before)
				if st := r.e.Stats(); st.FlowsCut-before.FlowsCut != 1 {
					t.Fatalf("flows cut %d, want 1", st.FlowsCut-before.FlowsCut)
				}
				// The retransmission, the next segments and the other end's
				// answers all meet the tombstone.
				for i, step := range []struct {
					fromServer, again bool
					after             time.Duration
				}{
					{fromServer, true, 200 * time.Millisecond},
					{fromServer, false, 500 * time.Millisecond},
					{!fromServer, false, 0},
					{fromServer, true, 30 * time.Second},
					{fromServer, true, 100 * time.Second}, // less than the tombstone timeout
				} {
					r.clock += int64(step.after)
					before := r.e.Stats()
					r.expectDrop(c.push(step.fromServer, step.again), tc.want, before)
					if got := r.e.Stats().CutDrops - before.CutDrops; got != 1 {
						t.Errorf("step %d: %d drops on the tombstone, want 1", i, got)
					}
				}
				// Silent for longer than the tombstone lasts: the connection
				// is forgotten, and its late segments start nothing.
				r.clock += int64(conntrack.DefaultTimeouts().Tombstone + time.Second)
				want := DropTCPNoFlow
				if tc.pickups != 0 {
					want = tc.want
				}
				before = r.e.Stats()
				r.expectDrop(c.push(fromServer, true), want, before)
				if r.e.Stats().FlowsNew != before.FlowsNew {
					t.Error("a late segment of the cut connection started a flow")
				}
			})
		}
	})
}

// TestCutUDPStaysCutWhileRepliesCome: a UDP flow that the new table denies
// stays cut in both directions while its replies keep coming.
func TestCutUDPStaysCutWhileRepliesCome(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		base := articleWith(t, withUDP80)
		r := view(t, newRig, base, []string{"app"}, nil)
		as, ad := fromKernel()
		ps, pd := fromPod(wire("api"))
		req := udpFrame(t, as, ad, appIP, apiIP, 5000, 80, []byte("req"))
		rep := udpFrame(t, ps, pd, apiIP, appIP, 80, 5000, []byte("rep"))
		r.expectOne(r.send("kernel", req), "api")
		r.expectOne(r.send("api", rep), "kernel")
		r.store.Publish(articleWith(t, func(name string, s *networkingv1.NetworkPolicySpec) {
			if name == "apipod-policy" {
				s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
				s.Ingress, s.Egress = nil, nil
			}
		}))
		// Five minutes of replies, one every 10 s, and a request now and then.
		for i := range 30 {
			before := r.e.Stats()
			r.expectDrop(r.send("api", rep), DropDeniedIngress, before)
			if i%10 == 9 {
				before = r.e.Stats()
				r.expectDrop(r.send("kernel", req), DropDeniedIngress, before)
			}
			r.clock += int64(10 * time.Second)
		}
		// The first drop is the cut, unless the flow was offloaded: then
		// the table change itself cut it, and every drop is on the
		// tombstone.
		if st := r.e.Stats(); st.FlowsCut != 1 || st.Drops[DropDeniedIngress] != 33 || st.CutDrops < 32 {
			t.Errorf("flows cut %d, denied %d, drops on the tombstone %d; want 1, 33, 32 or 33", st.FlowsCut, st.Drops[DropDeniedIngress], st.CutDrops)
		}
	})
}

// TestCutResetsTheSenders: with CutReset, a segment of a cut connection is
// answered with a reset that its sender accepts (its sequence number is
// the segment's acknowledgment number), out of the port it came in on;
// denied new connections are not answered.
func TestCutResetsTheSenders(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		{
			r := view(t, newRig, articleTable(t), []string{"app"}, func(c *Config) { c.CutReset = true })
			c := &conn{r: r, client: endOf(r, "app"), server: endOf(r, "api"), cport: 48342, sport: 80}
			c.open()
			r.expectOne(c.push(true, false), "kernel")
			r.store.Publish(apiIngressCut(t))
			check := func(out map[string][][]byte, port string, from, to end, fromPort, toPort uint16, seq uint32) {
				t.Helper()
				p, f := r.expectOne(out, port)
				if p.Proto != packet.ProtoTCP || p.TCPFlags != packet.TCPFlagRST || p.Src != from.ip || p.Dst != to.ip ||
					p.SrcPort != fromPort || p.DstPort != toPort {
					t.Fatalf("got %v:%d -> %v:%d flags %#x, want a RST %v:%d -> %v:%d", p.Src, p.SrcPort, p.Dst, p.DstPort, p.TCPFlags, from.ip, fromPort, to.ip, toPort)
				}
				if got := binary.BigEndian.Uint32(f[p.L4Off+4:]); got != seq {
					t.Errorf("RST seq %d, want %d", got, seq)
				}
				if !packet.L4ChecksumValid(f, &p) {
					t.Error("RST has a bad TCP checksum")
				}
			}
			before := r.e.Stats()
			// The server's push that meets the cut: the server (local) is reset
			// as if by the client, at the sequence number it expects.
			check(c.push(true, false), "api", c.client, c.server, c.cport, c.sport, c.cseq)
			// The client's segment (from the kernel leg) is answered too.
			check(c.push(false, false), "kernel", c.server, c.client, c.sport, c.cport, c.sseq)
			st := r.e.Stats()
			if st.Resets-before.Resets != 2 || st.Drops[DropDeniedIngress]-before.Drops[DropDeniedIngress] != 2 {
				t.Errorf("resets %d, denied_ingress drops %d; want 2, 2", st.Resets-before.Resets, st.Drops[DropDeniedIngress]-before.Drops[DropDeniedIngress])
			}
			// A RST from an end is dropped and not answered.
			p, f := c.frame(true, tcpOpt{rst: true, seq: c.cseq})
			before = r.e.Stats()
			r.expectDrop(r.send(p, f), DropDeniedIngress, before)
			// A new connection that the table denies is dropped silently.
			p, f = c.frame(true, tcpOpt{syn: true, seq: 1})
			before = r.e.Stats()
			r.expectDrop(r.send(p, f), DropDeniedIngress, before)
			if r.e.Stats().Resets != st.Resets {
				t.Error("a denied new connection or a RST was answered with a reset")
			}
		}
	})
}

// TestSYNOnATombstoneIsANewConnection: a SYN with the addresses and ports
// of a cut connection is judged afresh by the current table.
func TestSYNOnATombstoneIsANewConnection(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := view(t, newRig, articleTable(t), nil, nil)
		c := &conn{r: r, client: endOf(r, "app"), server: endOf(r, "api"), cport: 48342, sport: 80}
		c.open()
		r.store.Publish(apiIngressCut(t))
		before := r.e.Stats()
		r.expectDrop(c.push(true, false), DropDeniedIngress, before)
		// Denied by the table as a new connection, not by the tombstone.
		p, f := c.frame(true, tcpOpt{syn: true, seq: 1})
		before = r.e.Stats()
		r.expectDrop(r.send(p, f), DropDeniedIngress, before)
		if r.e.Stats().CutDrops != before.CutDrops {
			t.Error("the SYN was dropped by the tombstone, not judged")
		}
		// Allowed again once the table allows it.
		r.store.Publish(articleTable(t))
		c.open()
	})
}

// TestPickupJudgesTheConnection: in the pick-up window, a segment of an
// unknown connection is judged as the connection it belongs to (client to
// server), not in its own direction.
func TestPickupJudgesTheConnection(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		t.Run("server's segment of a connection the server's ingress denies", func(t *testing.T) {
			// apipod's egress is open, its ingress closed: apipod:80 ->
			// apppod:48342 looks allowed in its own direction, but it is the
			// server's half of apppod -> apipod:80, which is denied.
			r := view(t, newRig, apiIngressCut(t), []string{"app"}, nil)
			c := &conn{r: r, client: endOf(r, "app"), server: endOf(r, "api"), cport: 48342, sport: 80, cseq: 10, sseq: 20}
			before := r.e.Stats()
			r.expectDrop(c.push(true, false), DropDeniedIngress, before)
		})
		t.Run("both ports ephemeral: both ways must be allowed", func(t *testing.T) {
			r := view(t, newRig, apiIngressCut(t), []string{"app"}, nil)
			c := &conn{r: r, client: endOf(r, "app"), server: endOf(r, "api"), cport: 48342, sport: 50000, cseq: 10, sseq: 20}
			before := r.e.Stats()
			r.expectDrop(c.push(true, false), DropDeniedIngress, before)
		})
		t.Run("an allowed connection is tracked client to server", func(t *testing.T) {
			r := view(t, newRig, articleTable(t), nil, nil)
			c := &conn{r: r, client: endOf(r, "app"), server: endOf(r, "api"), cport: 48342, sport: 80, cseq: 10, sseq: 20}
			r.expectOne(c.push(true, false), "app")
			ent, dir := r.e.ct.Lookup(conntrack.MakeKey(appIP, apiIP, table.TCP, 48342, 80), r.clock)
			if ent == nil || dir != conntrack.Original || ent.State() != conntrack.TCPEstablished {
				t.Fatalf("flow %v dir %v, want the client's direction original and established", ent, dir)
			}
			r.expectOne(c.push(false, false), "api")
		})
	})
}

// Issue 11, F2: a pod that floods new allowed flows into a full flow table
// does not evict another pod's idle established connection; it replaces
// its own flows, and the evictions are counted on it and reported.
func TestFloodKeepsOthersEstablishedFlows(t *testing.T) {
	bothModes(t, func(t *testing.T, newRig rigMaker) {
		r := newRig(t, articleTable(t), func(c *Config) { c.Conntrack.Capacity = 1024 })
		// apipod's connection to dbpod:80, on which db pushes and api never
		// speaks again.
		c := &conn{r: r, client: endOf(r, "api"), server: endOf(r, "db"), cport: 40000, sport: 80}
		c.open()
		r.expectOne(c.push(true, false), "api")
		// apppod floods SYNs to apipod:80 (allowed) from 5,000 ports, far
		// more than the table holds.
		s, d := fromPod(wire("app"))
		for i := range 5000 {
			r.clock += int64(100 * time.Microsecond)
			r.send("app", tcpFrame(t, s, d, appIP, apiIP, uint16(10000+i), 80, tcpOpt{syn: true}))
		}
		// Much later (but well within ESTABLISHED's timeout) db pushes again.
		r.clock += int64(10 * time.Minute)
		r.expectOne(c.push(true, false), "api")
		st := r.e.ConntrackStats()
		if st.Evictions == 0 {
			t.Fatal("the flood evicted nothing: the table was not full")
		}
		var app, api PortStats
		for _, ps := range r.e.PortStats() {
			switch ps.Name {
			case "app":
				app = ps
			case "api":
				api = ps
			}
		}
		if app.Evicted == 0 || api.Evicted != 0 {
			t.Errorf("evictions counted on app %d, on api %d; want the flooder's only", app.Evicted, api.Evicted)
		}
		est := st.EvictionsByClass[slices.Index(conntrack.ClassNames[:], "established")]
		if est != 0 {
			t.Errorf("%d established flows evicted", est)
		}
		var ev FlowEvent
		found := false
		for r.e.NextEvent(&ev) {
			found = found || ev.Evicted
		}
		if !found {
			t.Error("no eviction was reported as a flow event")
		}
	})
}
