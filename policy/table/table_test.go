package table_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/internal/addrmap"
	"github.com/podgate/podgate/policy/table"
)

var (
	client = netip.MustParseAddr("10.0.0.1")
	server = netip.MustParseAddr("10.0.0.2")
	other  = netip.MustParseAddr("192.0.2.7")
)

// twoPods is a spec made by hand, without package policy: pod a/client
// (identity 0) and pod a/server (identity 1), and one policy that
// isolates the server for ingress and allows TCP 80 from the client's
// identity.
func twoPods() *table.Spec {
	byAddr := addrmap.New[int32](2, 0)
	byAddr.Insert(client, 0)
	byAddr.Insert(server, 1)
	peers := table.NewBitset(2)
	peers.Set(0)
	return &table.Spec{
		ByAddr: byAddr,
		Endpoints: []table.Endpoint{
			{Namespace: "a", Name: "client", IPs: []netip.Addr{client}, Identity: 0},
			{Namespace: "a", Name: "server", IPs: []netip.Addr{server}, Identity: 1},
		},
		Identities: []table.Identity{{Groups: [2]int32{-1, -1}}, {Groups: [2]int32{0, -1}}},
		Groups: []table.Group{{Policies: []int32{0}, Rules: []table.Rule{{
			Ref:   table.RuleRef{Policy: 0, Index: 0},
			Peers: peers,
			Ports: table.PortMatch{Entries: []table.PortEntry{{Proto: table.TCP, Lo: 80, Hi: 80, Name: -1}}},
		}}}},
		Policies: []table.PolicyInfo{{Namespace: "a", Name: "web", Ingress: true, NumIngress: 1}},
	}
}

func TestLookupSpecByHand(t *testing.T) {
	tab := table.New(twoPods())
	noRule := table.RuleRef{Policy: -1, Index: -1}
	tests := []struct {
		name     string
		src, dst netip.Addr
		proto    table.Protocol
		port     uint16
		want     table.Verdict
	}{
		{"allowed by the rule", client, server, table.TCP, 80, table.Verdict{
			Egress:  table.Decision{Reason: table.NotIsolated, Endpoint: 0, Rule: noRule},
			Ingress: table.Decision{Reason: table.AllowedByRule, Endpoint: 1, Rule: table.RuleRef{Policy: 0, Index: 0}},
		}},
		{"another port", client, server, table.TCP, 81, table.Verdict{
			Egress:  table.Decision{Reason: table.NotIsolated, Endpoint: 0, Rule: noRule},
			Ingress: table.Decision{Reason: table.Denied, Endpoint: 1, Rule: noRule},
		}},
		{"another protocol", client, server, table.UDP, 80, table.Verdict{
			Egress:  table.Decision{Reason: table.NotIsolated, Endpoint: 0, Rule: noRule},
			Ingress: table.Decision{Reason: table.Denied, Endpoint: 1, Rule: noRule},
		}},
		{"from outside the cluster", other, server, table.TCP, 80, table.Verdict{
			Egress:  table.Decision{Reason: table.NotPod, Endpoint: -1, Rule: noRule},
			Ingress: table.Decision{Reason: table.Denied, Endpoint: 1, Rule: noRule},
		}},
		{"the other way", server, client, table.TCP, 80, table.Verdict{
			Egress:  table.Decision{Reason: table.NotIsolated, Endpoint: 1, Rule: noRule},
			Ingress: table.Decision{Reason: table.NotIsolated, Endpoint: 0, Rule: noRule},
		}},
		{"to itself", server, server, table.TCP, 81, table.Verdict{
			Egress:  table.Decision{Reason: table.Loopback, Endpoint: 1, Rule: noRule},
			Ingress: table.Decision{Reason: table.Loopback, Endpoint: 1, Rule: noRule},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tab.Lookup(tt.src, tt.dst, tt.proto, tt.port)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Lookup (-want +got):\n%s", diff)
			}
			if in := tab.Ingress(tt.src, tt.dst, tt.proto, tt.port); in != got.Ingress {
				t.Errorf("Ingress = %+v, Lookup's ingress side %+v", in, got.Ingress)
			}
		})
	}
	if got := tab.Rule(table.Ingress, table.RuleRef{Policy: 0, Index: 0}).String(); got != "a/web ingress[0]" {
		t.Errorf("Rule = %q", got)
	}
}

func TestLookupAllocatesNothing(t *testing.T) {
	tab := table.New(twoPods())
	allocs := testing.AllocsPerRun(1000, func() {
		tab.Lookup(client, server, table.TCP, 80)
		tab.Lookup(other, server, table.TCP, 81)
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %v times per run", allocs)
	}
}

func TestEmpty(t *testing.T) {
	v := table.Empty().Lookup(client, server, table.TCP, 80)
	if !v.Allowed() || v.Egress.Reason != table.NotPod || v.Ingress.Reason != table.NotPod {
		t.Errorf("empty table: %+v, want both sides NotPod and allowed", v)
	}
}

func TestStore(t *testing.T) {
	var s table.Store
	if s.Load() != nil {
		t.Fatal("zero Store holds a table")
	}
	a, b := table.Empty(), table.Empty()
	if g := s.Publish(a); g != 1 || a.Generation() != 1 || s.Load() != a {
		t.Errorf("first Publish: generation %d/%d, current is it: %v", g, a.Generation(), s.Load() == a)
	}
	if g := s.Publish(b); g != 2 || s.Load() != b || a.Generation() != 1 {
		t.Errorf("second Publish: generation %d, current is it: %v, first kept %d", g, s.Load() == b, a.Generation())
	}
}

func TestParsePortSpecs(t *testing.T) {
	tests := []struct {
		in      string
		want    []table.PortSpec
		wantErr bool
	}{
		{in: "80", want: []table.PortSpec{{Port: 80, Protocol: table.TCP}}},
		{in: "80/TCP, 53/udp,132/SCTP,ICMP,icmpv6", want: []table.PortSpec{
			{Port: 80, Protocol: table.TCP}, {Port: 53, Protocol: table.UDP}, {Port: 132, Protocol: table.SCTP},
			{Protocol: table.ICMP}, {Protocol: table.ICMPv6}}},
		{in: "", wantErr: true},
		{in: "0", wantErr: true},
		{in: "65536/TCP", wantErr: true},
		{in: "8/ICMP", wantErr: true},
		{in: "80/GRE", wantErr: true},
	}
	for _, tt := range tests {
		got, err := table.ParsePortSpecs(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParsePortSpecs(%q) error %v, want error: %v", tt.in, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParsePortSpecs(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestBitset(t *testing.T) {
	a, b := table.NewBitset(130), table.NewBitset(130)
	a.Set(0)
	a.Set(129)
	b.Set(129)
	for _, i := range []int32{-1, 1, 128, 130, 1 << 20} {
		if a.Has(i) {
			t.Errorf("Has(%d) for a number not in the set", i)
		}
	}
	if !a.Has(0) || !a.Has(129) {
		t.Error("Has misses a member")
	}
	if !b.SubsetOf(a) || a.SubsetOf(b) {
		t.Errorf("SubsetOf: b in a %v, a in b %v", b.SubsetOf(a), a.SubsetOf(b))
	}
	b.Or(a)
	if !b.Has(0) || !a.SubsetOf(b) {
		t.Error("Or did not add the members")
	}
}
