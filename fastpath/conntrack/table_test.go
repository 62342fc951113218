package conntrack

import (
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/fastpath/packet"
	"github.com/podgate/podgate/policy/table"
)

func TestEntryLayout(t *testing.T) {
	if got := unsafe.Sizeof(Entry{}); got != 128 {
		t.Errorf("sizeof(Entry) = %d, want 128", got)
	}
	if got := entrySize; got != 128 {
		t.Errorf("entrySize = %d", got)
	}
	if got := unsafe.Offsetof(Entry{}.Generation); got != 64 {
		t.Errorf("Entry.Generation at %d, want 64 (second cache line)", got)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[Entry](), reflect.TypeFor[link](), reflect.TypeFor[fragRec]()} {
		if hasPointers(typ) {
			t.Errorf("%v has pointers; the GC would scan the tables", typ)
		}
	}
	if got := unsafe.Sizeof(fragRec{}); got != 64 {
		t.Errorf("sizeof(fragRec) = %d, want 64", got)
	}
}

func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.String, reflect.Interface, reflect.Chan, reflect.Func, reflect.UnsafePointer:
		return true
	case reflect.Array:
		return hasPointers(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
	}
	return false
}

func TestMemory(t *testing.T) {
	for _, n := range []int{100_000, 1_000_000} {
		ct := newTable(t, n)
		perEntry := float64(ct.MemoryBytes()) / float64(n)
		t.Logf("capacity %d: %d bytes, %.1f bytes per flow", n, ct.MemoryBytes(), perEntry)
		if perEntry > 160 {
			t.Errorf("capacity %d: %.1f bytes per flow, want <= 160", n, perEntry)
		}
		// The large arrays may be mapped outside the heap: use them.
		for i := range 1000 {
			e, _ := ct.Insert(benchKey(uint32(i)), sec)
			ct.Update(e, Original, syn, 60, sec)
		}
		for i := range 1000 {
			if e, _ := ct.Lookup(benchKey(uint32(i)).Reverse(), sec); e == nil || e.Packets[Original] != 1 {
				t.Fatalf("capacity %d: flow %d lost", n, i)
			}
		}
		if n == 100_000 {
			checkInvariants(t, ct)
		}
	}
}

func TestConfig(t *testing.T) {
	var c Config
	c.SetDefaults()
	want := Config{
		Capacity:       DefaultCapacity,
		FragCapacity:   DefaultFragCapacity,
		FragTimeout:    30 * time.Second,
		LRUGranularity: time.Second,
		MaxOwners:      DefaultMaxOwners,
		Timeouts:       DefaultTimeouts(),
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("SetDefaults (-want +got):\n%s", diff)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(defaults) = %v", err)
	}
	c.Timeouts.UDP = 5 * time.Second
	c.SetDefaults()
	if c.Timeouts.UDP != 5*time.Second {
		t.Errorf("SetDefaults changed UDP timeout to %v", c.Timeouts.UDP)
	}

	bad := Config{Capacity: -1, FragCapacity: MaxFragCapacity + 1, FragTimeout: -1, LRUGranularity: -1}
	bad.Timeouts.TCPClose = -time.Second
	_, err := New(bad)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("New(bad) = %v, want ErrInvalidConfig", err)
	}
	for _, s := range []string{"capacity -1", "fragment capacity", "fragment timeout", "LRU granularity", "TCPClose"} {
		if !contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}

	// A zero seed is drawn at random: two tables hash differently.
	a, err := New(Config{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Capacity: 8})
	if err != nil {
		t.Fatal(err)
	}
	if a.seed == b.seed {
		t.Error("two tables with Seed 0 got the same seed")
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func TestKeys(t *testing.T) {
	tests := []struct {
		name string
		k    Key
	}{
		{"tcp4", tcpKey("10.0.0.1", 40000, "10.0.0.2", 80)},
		{"tcp4 reversed order", tcpKey("10.0.0.2", 80, "10.0.0.1", 40000)},
		{"same address", tcpKey("10.0.0.1", 80, "10.0.0.1", 40000)},
		{"same endpoint", tcpKey("10.0.0.1", 80, "10.0.0.1", 80)},
		{"udp6", MakeKey(mustAddr("fd00::2"), mustAddr("fd00::1"), table.UDP, 53, 5353)},
		{"icmp echo", key4("10.0.0.1", 7, "10.0.0.9", 7, table.ICMP)},
		{"sctp", key4("10.0.0.3", 1, "10.0.0.1", 2, table.SCTP)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c1 ckey
			s1 := canon(&tc.k, &c1)
			rk := tc.k.Reverse()
			var c2 ckey
			s2 := canon(&rk, &c2)
			if c1 != c2 {
				t.Errorf("canon differs by direction: %+v vs %+v", c1, c2)
			}
			if s1 == s2 && tc.k != rk {
				t.Errorf("both directions have swapped = %v", s1)
			}
			if got := c1.key(s1); got != tc.k {
				t.Errorf("round trip: %v, want %v", got, tc.k)
			}
			src, dst := tc.k.Addrs()
			if got := MakeKey(src, dst, tc.k.Proto, tc.k.SrcPort, tc.k.DstPort); got != tc.k {
				t.Errorf("MakeKey(Addrs()) = %v, want %v", got, tc.k)
			}
		})
	}

	// An IPv6 packet between IPv4-mapped addresses is not the IPv4 flow.
	k4 := tcpKey("10.0.0.1", 1, "10.0.0.2", 2)
	k6 := MakeKey(mustAddr("::ffff:10.0.0.1"), mustAddr("::ffff:10.0.0.2"), table.TCP, 1, 2)
	if k4.Src != k6.Src || k4.IPv6 == k6.IPv6 {
		t.Fatalf("keys: %+v %+v", k4, k6)
	}
	ct := newTable(t, 8)
	mustInsert(t, ct, k4, 0)
	if e, _ := ct.Lookup(k6, 0); e != nil {
		t.Error("IPv6 key with mapped addresses found the IPv4 flow")
	}
	// Neither do other protocols or ports.
	for _, k := range []Key{
		key4("10.0.0.1", 1, "10.0.0.2", 2, table.UDP),
		tcpKey("10.0.0.1", 2, "10.0.0.2", 1),
		tcpKey("10.0.0.1", 1, "10.0.0.3", 2),
	} {
		if e, _ := ct.Lookup(k, 0); e != nil {
			t.Errorf("Lookup(%v) found %v", k, e.Key())
		}
	}
}

func TestBothDirectionsOneEntry(t *testing.T) {
	for _, k := range []Key{
		tcpKey("10.0.0.1", 40000, "10.0.0.2", 80), // src < dst
		tcpKey("10.0.0.2", 80, "10.0.0.1", 40000), // src > dst
		tcpKey("10.0.0.1", 80, "10.0.0.1", 81),    // same address
		MakeKey(mustAddr("fd00::9"), mustAddr("fd00::1"), table.UDP, 1, 1),
		key4("10.0.0.1", 7, "10.0.0.9", 7, table.ICMP),
	} {
		t.Run(k.String(), func(t *testing.T) {
			ct := newTable(t, 8)
			e := mustInsert(t, ct, k, 0)
			if got := e.Key(); got != k {
				t.Errorf("Key() = %v, want %v", got, k)
			}
			eo, do := ct.Lookup(k, 0)
			er, dr := ct.Lookup(k.Reverse(), 0)
			if eo != e || er != e || do != Original || dr != Reply {
				t.Errorf("Lookup: original %p %v, reply %p %v; want %p original, reply", eo, do, er, dr, e)
			}
			ct.Update(e, do, syn, 100, 1)
			ct.Update(e, dr, synAck, 60, 2)
			if e.Packets != [2]uint64{1, 1} || e.Bytes != [2]uint64{100, 60} {
				t.Errorf("packets %v bytes %v", e.Packets, e.Bytes)
			}
		})
	}
}

func TestUDPReplyUpgrade(t *testing.T) {
	ct := newTable(t, 8)
	k := udpKey("10.0.0.1", 5353, "10.0.0.53", 53)
	e := mustInsert(t, ct, k, 0)
	want := []time.Duration{30 * time.Second, 30 * time.Second, 120 * time.Second, 120 * time.Second}
	var got []time.Duration
	got = append(got, time.Duration(e.Expires()))
	now := 10 * sec
	for _, d := range []Dir{Original, Reply, Original} {
		if res := ct.Update(e, d, 0, 80, now); res != Accepted {
			t.Fatalf("Update: %v", res)
		}
		got = append(got, time.Duration(e.Expires()-now))
		now += sec
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("timeouts (-want +got):\n%s", diff)
	}
	if !e.Replied() || e.State() != TCPNone {
		t.Errorf("replied %v state %v", e.Replied(), e.State())
	}
	checkInvariants(t, ct)
}

func TestTimeouts(t *testing.T) {
	def := DefaultTimeouts()
	tests := []struct {
		name  string
		k     Key
		pick  bool
		setup func(ct *Table, e *Entry, now int64)
		want  time.Duration
	}{
		{name: "udp unreplied", k: udpKey("10.0.0.1", 1, "10.0.0.2", 2), want: def.UDP},
		{name: "udp stream", k: udpKey("10.0.0.1", 1, "10.0.0.2", 2), want: def.UDPStream,
			setup: func(ct *Table, e *Entry, now int64) { ct.Update(e, Reply, 0, 1, now) }},
		{name: "icmp echo", k: key4("10.0.0.1", 9, "10.0.0.2", 9, table.ICMP), want: def.ICMP},
		{name: "icmpv6 echo", k: MakeKey(mustAddr("fd00::1"), mustAddr("fd00::2"), table.ICMPv6, 9, 9), want: def.ICMP},
		{name: "sctp is generic", k: key4("10.0.0.1", 1, "10.0.0.2", 2, table.SCTP), want: def.Generic},
		{name: "gre is generic", k: key4("10.0.0.1", 0, "10.0.0.2", 0, 47), want: def.Generic},
		{name: "tcp syn", k: tcpKey("10.0.0.1", 1, "10.0.0.2", 2), want: def.TCPSynSent},
		{name: "tcp pickup", k: tcpKey("10.0.0.1", 1, "10.0.0.2", 2), pick: true, want: def.TCPEstablished},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct := newTable(t, 8)
			start := 1000 * sec
			var e *Entry
			if tc.pick {
				e, _ = ct.InsertEstablished(tc.k, start)
			} else {
				e = mustInsert(t, ct, tc.k, start)
			}
			if tc.setup != nil {
				tc.setup(ct, e, start)
			}
			end := start + int64(tc.want)
			if got, _ := ct.Lookup(tc.k, end-1); got != e {
				t.Fatalf("Lookup just before the timeout = %p, want %p", got, e)
			}
			if got := ct.Expire(end-1, 10); got != 0 {
				t.Fatalf("Expire just before the timeout = %d", got)
			}
			if got, _ := ct.Lookup(tc.k.Reverse(), end); got != nil {
				t.Fatalf("Lookup at the timeout found the entry")
			}
			if got := ct.Expire(end, 10); got != 1 || ct.Len() != 0 {
				t.Fatalf("Expire = %d, Len %d; want 1, 0", got, ct.Len())
			}
			checkInvariants(t, ct)
		})
	}
}

func TestCustomTimeouts(t *testing.T) {
	ct, err := New(Config{Capacity: 4, Timeouts: Timeouts{UDP: time.Second}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := mustInsert(t, ct, udpKey("10.0.0.1", 1, "10.0.0.2", 2), 0)
	if e.Expires() != sec {
		t.Errorf("UDP expires at %d, want %d", e.Expires(), sec)
	}
	ct.Update(e, Reply, 0, 1, 0)
	if e.Expires() != 120*sec {
		t.Errorf("UDP stream expires at %d, want default %d", e.Expires(), 120*sec)
	}
}

func TestClockNeverGoesBack(t *testing.T) {
	ct := newTable(t, 4)
	k := udpKey("10.0.0.1", 1, "10.0.0.2", 2)
	e := mustInsert(t, ct, k, 100*sec)
	ct.Update(e, Original, 0, 1, 5*sec) // an earlier now counts as 100 s
	if e.LastSeen() != 100*sec {
		t.Errorf("LastSeen = %d, want %d", e.LastSeen(), 100*sec)
	}
	if got, _ := ct.Lookup(k, 0); got != e {
		t.Error("Lookup with an earlier now missed")
	}
	// Saturation instead of overflow.
	ct.Update(e, Original, 0, 1, 1<<63-1)
	if e.Expires() != 1<<63-1 {
		t.Errorf("Expires = %d, want max", e.Expires())
	}
	checkInvariants(t, ct)
}

func TestLRUEviction(t *testing.T) {
	ct := newTable(t, 3)
	a := tcpKey("10.0.0.1", 1, "10.0.0.2", 80)
	b := udpKey("10.0.0.1", 2, "10.0.0.2", 53)
	c := key4("10.0.0.1", 3, "10.0.0.2", 3, table.ICMP)
	d := tcpKey("10.0.0.1", 4, "10.0.0.2", 80)
	x := tcpKey("10.0.0.1", 5, "10.0.0.2", 80)
	ea := mustInsert(t, ct, a, 1*sec)
	mustInsert(t, ct, b, 2*sec)
	ec := mustInsert(t, ct, c, 3*sec)
	ct.Update(ea, Original, syn, 1, 4*sec) // a is now the most recent

	present := func() []string {
		var out []string
		for _, k := range []Key{a, b, c, d, x} {
			if e, _ := ct.Lookup(k, 0); e != nil {
				out = append(out, k.String())
			}
		}
		return out
	}
	// Evicts b (seen at 2 s), the least recently seen, across classes.
	if _, evicted := ct.Insert(d, 5*sec); !evicted {
		t.Error("Insert into a full table did not report an eviction")
	}
	if diff := cmp.Diff([]string{a.String(), c.String(), d.String()}, present()); diff != "" {
		t.Errorf("after first eviction (-want +got):\n%s", diff)
	}
	// An ignored packet does not refresh a: a goes next.
	ct.Update(ec, Original, 0, 1, 6*sec) // ICMP: accepted, refreshes
	ct.Update(ea, Reply, ack, 1, 7*sec)  // SYN_SENT + reply ACK: ignored
	ct.Insert(x, 8*sec)
	if diff := cmp.Diff([]string{c.String(), d.String(), x.String()}, present()); diff != "" {
		t.Errorf("after second eviction (-want +got):\n%s", diff)
	}
	st := ct.Stats()
	if st.Evictions != 2 || st.Inserts != 5 || st.Entries != 3 || st.Expirations != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariants(t, ct)
}

func TestFullTableReusesExpiredFirst(t *testing.T) {
	ct := newTable(t, 3)
	tcp := tcpKey("10.0.0.1", 1, "10.0.0.2", 80)
	udp1 := udpKey("10.0.0.1", 2, "10.0.0.2", 53)
	udp2 := udpKey("10.0.0.1", 3, "10.0.0.2", 53)
	n1 := udpKey("10.0.0.1", 4, "10.0.0.2", 53)
	mustInsert(t, ct, tcp, 0)       // SYN_SENT: 120 s, the least recently seen
	mustInsert(t, ct, udp1, 10*sec) // expires at 40 s
	mustInsert(t, ct, udp2, 20*sec) // expires at 50 s
	if _, evicted := ct.Insert(n1, 45*sec); evicted {
		t.Error("reusing an expired entry reported an eviction")
	}
	if e, _ := ct.Lookup(udp2, 45*sec); e == nil {
		t.Error("udp2 (not expired) was removed")
	}
	if e, _ := ct.Lookup(tcp, 45*sec); e == nil {
		t.Error("the LRU TCP flow was evicted although an expired flow existed")
	}
	if st := ct.Stats(); st.Expirations != 1 || st.Evictions != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariants(t, ct)
}

func TestInsertExisting(t *testing.T) {
	ct := newTable(t, 4)
	k := tcpKey("10.0.0.1", 1, "10.0.0.2", 80)
	e := mustInsert(t, ct, k, 0)
	e.Flags = FlagAllowed
	e.Generation = 7
	ct.Update(e, Original, syn, 60, 0)
	// Re-inserting from the other side resets the entry and its direction.
	e2 := mustInsert(t, ct, k.Reverse(), sec)
	if e2 != e || ct.Len() != 1 {
		t.Fatalf("re-insert: %p vs %p, Len %d", e2, e, ct.Len())
	}
	if e.Key() != k.Reverse() || e.Flags != 0 || e.Generation != 0 || e.Packets != [2]uint64{} ||
		e.Egress != (table.RuleRef{Policy: -1, Index: -1}) {
		t.Errorf("re-inserted entry not reset: %+v", e)
	}
	if _, d := ct.Lookup(k, sec); d != Reply {
		t.Errorf("old direction is now %v, want reply", d)
	}
	// Re-inserting an expired flow counts an expiration.
	ct.Insert(k, 1000*sec)
	if st := ct.Stats(); st.Expirations != 1 || st.Inserts != 3 {
		t.Errorf("stats %+v", st)
	}
	checkInvariants(t, ct)
}

func TestExpireBudget(t *testing.T) {
	ct := newTable(t, 100)
	for i := range 30 {
		k := udpKey("10.0.0.1", uint16(i), "10.0.0.2", 53)
		if i%3 == 0 {
			k = tcpKey("10.0.0.1", uint16(i), "10.0.0.2", 80) // 120 s
		}
		mustInsert(t, ct, k, int64(i)*sec)
	}
	// At 39 s the UDP flows inserted before 10 s have expired: 1, 2, 4, 5,
	// 7, 8 (6 flows).
	if got := ct.Expire(39*sec, 4); got != 4 {
		t.Errorf("Expire(budget 4) = %d", got)
	}
	if got := ct.Expire(39*sec, 4); got != 2 {
		t.Errorf("second Expire = %d, want 2", got)
	}
	if got := ct.Expire(39*sec, 100); got != 0 {
		t.Errorf("third Expire = %d, want 0", got)
	}
	if got := ct.Expire(1000*sec, 0); got != 0 {
		t.Errorf("Expire(budget 0) = %d", got)
	}
	if got := ct.Expire(1000*sec, 1000); got != 24 || ct.Len() != 0 {
		t.Errorf("Expire(all) = %d, Len %d", got, ct.Len())
	}
	if st := ct.Stats(); st.Expirations != 30 || st.Entries != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariants(t, ct)
}

func TestDeleteAndForeignEntries(t *testing.T) {
	ct := newTable(t, 4)
	other := newTable(t, 4)
	k := tcpKey("10.0.0.1", 1, "10.0.0.2", 80)
	e := mustInsert(t, ct, k, 0)
	oe := mustInsert(t, other, k, 0)
	var stray Entry
	stray.class = classTCPEstablished
	for name, p := range map[string]*Entry{"nil": nil, "other table": oe, "stray": &stray} {
		if ct.Update(p, Original, ack, 1, 0) != Invalid {
			t.Errorf("Update(%s) not Invalid", name)
		}
		if ct.Delete(p) {
			t.Errorf("Delete(%s) = true", name)
		}
	}
	if !ct.Delete(e) || ct.Delete(e) || ct.Len() != 0 {
		t.Errorf("Delete twice: Len %d", ct.Len())
	}
	if ct.Update(e, Original, ack, 1, 0) != Invalid {
		t.Error("Update of a deleted entry not Invalid")
	}
	if got, _ := ct.Lookup(k, 0); got != nil {
		t.Error("deleted flow found")
	}
	if st := ct.Stats(); st.Deletes != 1 || st.Entries != 0 {
		t.Errorf("stats %+v", st)
	}
	checkInvariants(t, ct)
}

func TestLookupRelated(t *testing.T) {
	ct := newTable(t, 8)
	client, server, router := "10.0.0.1", "10.0.0.2", "192.0.2.1"
	flow := udpKey(client, 5000, server, 53)
	e := mustInsert(t, ct, flow, 0)
	echo := key4(client, 77, server, 77, table.ICMP)
	ee := mustInsert(t, ct, echo, 0)
	_ = router // the error's outer source does not matter

	tests := []struct {
		name  string
		inner Key // the quoted packet, as quoted
		want  *Entry
		dir   Dir // direction of the error message
	}{
		// A router on the way to the server cannot deliver the client's
		// datagram: the error goes to the client, in the reply direction.
		{"error about an original packet", flow, e, Reply},
		// The server's reply cannot be delivered: the error goes to the
		// server, in the original direction.
		{"error about a reply packet", flow.Reverse(), e, Original},
		{"error about an echo request", echo, ee, Reply},
		{"error about an echo reply", echo.Reverse(), ee, Original},
		{"unrelated", udpKey(client, 5001, server, 53), nil, Original},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, dir := ct.LookupRelated(tc.inner, sec)
			if got != tc.want || dir != tc.dir {
				t.Errorf("LookupRelated = %p, %v; want %p, %v", got, dir, tc.want, tc.dir)
			}
		})
	}
	if e.LastSeen() != 0 {
		t.Error("LookupRelated refreshed the flow")
	}
	if got, _ := ct.LookupRelated(flow, 31*sec); got != nil {
		t.Error("LookupRelated found an expired flow")
	}
}

func TestFragments(t *testing.T) {
	ct, err := New(Config{Capacity: 8, FragCapacity: 2, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	src, dst := mustAddr("10.0.0.1"), mustAddr("10.0.0.2")
	flow := udpKey("10.0.0.1", 5000, "10.0.0.2", 53)
	e := mustInsert(t, ct, flow, 0)
	fk := MakeFragKey(src, dst, table.UDP, 0x1234)
	ct.InsertFragment(fk, e, Original, true, 0)

	type result struct {
		Found, Allowed, HasEntry bool
		Dir                      Dir
	}
	look := func(k FragKey, now int64) result {
		v, ok := ct.LookupFragment(k, now)
		return result{ok, v.Allowed, v.Entry != nil, v.Dir}
	}
	if v, _ := ct.LookupFragment(fk, 0); v.Entry != e {
		t.Fatalf("LookupFragment entry %p, want %p", v.Entry, e)
	}
	ct.Count(e, Original, 1480)
	ct.Count(nil, Original, 1480)
	if e.Packets != [2]uint64{1, 0} || e.Bytes != [2]uint64{1480, 0} || e.LastSeen() != 0 {
		t.Errorf("after Count: packets %v bytes %v last seen %d", e.Packets, e.Bytes, e.LastSeen())
	}
	v6 := MakeFragKey(mustAddr("fd00::1"), mustAddr("fd00::2"), table.UDP, 0x1234)
	if v6.Proto != 0 {
		t.Errorf("IPv6 fragment key keeps protocol %v", v6.Proto)
	}
	// A denied first fragment of a reply packet without a flow.
	denied := MakeFragKey(dst, src, table.UDP, 0x1234)
	ct.InsertFragment(denied, nil, Reply, false, 0)

	got := []result{
		look(fk, 29*sec),
		look(MakeFragKey(src, dst, table.TCP, 0x1234), 0), // other protocol
		look(MakeFragKey(src, dst, table.UDP, 0x1235), 0), // other ID
		look(v6, 0),
		look(denied, 0),
		look(fk, 30*sec), // expired
	}
	want := []result{
		{true, true, true, Original},
		{},
		{},
		{},
		{true, false, false, Reply},
		{},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lookups (-want +got):\n%s", diff)
	}

	// The flow goes away: fragments keep the verdict but lose the entry,
	// even once the entry is reused by another flow.
	ct2 := newTable(t, 1)
	e1 := mustInsert(t, ct2, flow, 0)
	ct2.InsertFragment(fk, e1, Reply, true, 0)
	ct2.Insert(udpKey("10.0.0.9", 1, "10.0.0.2", 53), 0) // evicts flow, reuses its entry
	if v, ok := ct2.LookupFragment(fk, 0); !ok || !v.Allowed || v.Entry != nil || v.Dir != Reply {
		t.Errorf("after eviction: %+v, %v", v, ok)
	}

	// Full fragment table: the oldest record is replaced, counted as an
	// eviction if it had not expired.
	ct.InsertFragment(MakeFragKey(src, dst, table.UDP, 1), e, Original, true, 31*sec) // replaces fk (expired)
	ct.InsertFragment(MakeFragKey(src, dst, table.UDP, 2), e, Original, true, 32*sec) // replaces denied (expired)
	ct.InsertFragment(MakeFragKey(src, dst, table.UDP, 3), e, Original, true, 33*sec) // replaces 1 (live)
	if look(MakeFragKey(src, dst, table.UDP, 1), 33*sec).Found || !look(MakeFragKey(src, dst, table.UDP, 3), 33*sec).Found {
		t.Error("the oldest fragment record was not the one replaced")
	}
	// A duplicate first fragment updates the verdict in place.
	ct.InsertFragment(MakeFragKey(src, dst, table.UDP, 3), nil, Original, false, 34*sec)
	if r := look(MakeFragKey(src, dst, table.UDP, 3), 34*sec); !r.Found || r.Allowed || r.HasEntry {
		t.Errorf("duplicate first fragment: %+v", r)
	}
	if st := ct.Stats(); st.FragInserts != 5 || st.FragEvictions != 1 {
		t.Errorf("stats %+v", st)
	}
	checkIndex(t, &ct.frags.index, 2)
}

func TestRange(t *testing.T) {
	ct := newTable(t, 16)
	var keys []Key
	for i := range 10 {
		k := udpKey("10.0.0.1", uint16(1000+i), "10.0.0.2", 53)
		keys = append(keys, k)
		mustInsert(t, ct, k, int64(i)*sec)
	}
	ct.Delete(func() *Entry { e, _ := ct.Lookup(keys[5], 0); return e }())
	var got []Key
	ct.Range(32*sec, func(e *Entry) bool { // flows inserted up to 2 s expired
		got = append(got, e.Key())
		return true
	})
	want := append(append([]Key{}, keys[3:5]...), keys[6:]...)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Range (-want +got):\n%s", diff)
	}
	n := 0
	ct.Range(0, func(e *Entry) bool { n++; return n < 3 })
	if n != 3 {
		t.Errorf("Range did not stop: %d calls", n)
	}
	// fn may delete the entry it is given. The 3 expired flows remain
	// until Expire.
	ct.Range(0, func(e *Entry) bool { return ct.Delete(e) })
	if ct.Len() != 3 {
		t.Errorf("Len after deleting in Range = %d, want 3", ct.Len())
	}
	checkInvariants(t, ct)
}

// TestStatsConcurrent reads the counters while the owner works; run with
// -race.
func TestStatsConcurrent(t *testing.T) {
	ct := newTable(t, 64)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = ct.Stats()
			}
		}
	})
	for i := range 10_000 {
		e, _ := ct.Insert(udpKey("10.0.0.1", uint16(i), "10.0.0.2", 53), int64(i)*sec/100)
		ct.Update(e, Reply, 0, 1, int64(i)*sec/100)
		ct.Expire(int64(i)*sec/100, 2)
	}
	close(stop)
	wg.Wait()
	if st := ct.Stats(); st.Inserts != 10_000 || st.Entries != uint64(ct.Len()) {
		t.Errorf("stats %+v", st)
	}
}

func TestTombstone(t *testing.T) {
	const sec = int64(time.Second)
	ct := newTable(t, 8)
	k := tcpKey("10.0.0.1", 40000, "10.0.0.2", 80)
	now := 10 * sec
	e := mustInsert(t, ct, k, now)
	e.Flags = FlagAllowed | 1<<4
	ct.Update(e, Original, packet.TCPFlagSYN, 60, now)
	ct.Update(e, Reply, packet.TCPFlagSYN|packet.TCPFlagACK, 60, now)
	ct.Update(e, Original, packet.TCPFlagACK, 52, now)
	if e.State() != TCPEstablished {
		t.Fatalf("state %v", e.State())
	}
	if ct.Tombstone(nil, now) || ct.Tombstone(&Entry{}, now) {
		t.Error("Tombstone of an entry not in the table reported true")
	}
	now += sec
	if !ct.Tombstone(e, now) || !e.Tombstoned() {
		t.Fatal("Tombstone() = false")
	}
	if e.Flags != 1<<4 {
		t.Errorf("flags %#x: want FlagAllowed cleared and the caller's bits kept", e.Flags)
	}
	timeout := int64(DefaultTimeouts().Tombstone)
	if e.Expires() != now+timeout {
		t.Errorf("expires %d, want %d", e.Expires(), now+timeout)
	}
	checkInvariants(t, ct)
	// Both directions find it; packets keep it alive without touching the
	// TCP state, whatever their flags.
	for i, pk := range []struct {
		k     Key
		dir   Dir
		flags uint8
	}{{k, Original, packet.TCPFlagACK}, {k.Reverse(), Reply, packet.TCPFlagACK | packet.TCPFlagPSH}, {k.Reverse(), Reply, packet.TCPFlagFIN}, {k, Original, packet.TCPFlagSYN | packet.TCPFlagACK}} {
		now += 100 * sec
		got, dir := ct.Lookup(pk.k, now)
		if got != e || dir != pk.dir {
			t.Fatalf("packet %d: lookup %p %v, want the tombstone %p %v", i, got, dir, e, pk.dir)
		}
		if r := ct.Update(e, dir, pk.flags, 40, now); r != Accepted {
			t.Errorf("packet %d: Update = %v, want accepted", i, r)
		}
		if e.Expires() != now+timeout || e.State() != TCPEstablished || !e.Tombstoned() {
			t.Errorf("packet %d: expires %d state %v tombstoned %v", i, e.Expires(), e.State(), e.Tombstoned())
		}
	}
	// The handshake (2 + 1) and the 2 + 2 packets on the tombstone.
	if e.Packets != [2]uint64{4, 3} {
		t.Errorf("packets %v, want [4 3]", e.Packets)
	}
	// Silence for the timeout: gone, and Expire reclaims it.
	now += timeout
	if got, _ := ct.Lookup(k, now); got != nil {
		t.Error("the tombstone outlived its timeout")
	}
	if n := ct.Expire(now, 8); n != 1 {
		t.Errorf("Expire reclaimed %d, want 1", n)
	}
	// An insert of a tombstone's key replaces it.
	e = mustInsert(t, ct, k, now)
	ct.Tombstone(e, now)
	e2 := mustInsert(t, ct, k.Reverse(), now)
	if e2.Tombstoned() || ct.Len() != 1 || e2.Key() != k.Reverse() {
		t.Errorf("insert over a tombstone: tombstoned %v, len %d, key %v", e2.Tombstoned(), ct.Len(), e2.Key())
	}
	if st := ct.Stats(); st.Tombstones != 2 {
		t.Errorf("stats: %d tombstones, want 2", st.Tombstones)
	}
	checkInvariants(t, ct)
}

// The release hook sees every offloaded flow that stops being live, once,
// with its key; other flows never.
func TestReleaseHook(t *testing.T) {
	const sec = int64(time.Second)
	ct := newTable(t, 4)
	var got []Key
	ct.SetReleaseHook(func(e *Entry) { got = append(got, e.Key()) })
	now := sec
	mk := func(port uint16, off bool) (*Entry, Key) {
		k := udpKey("10.0.0.1", port, "10.0.0.2", 53)
		e, _ := ct.Insert(k, now)
		if off {
			e.Flags |= FlagOffloaded
		}
		return e, k
	}
	expect := func(what string, want ...Key) {
		t.Helper()
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: released (-want +got):\n%s", what, diff)
		}
		got = nil
	}
	e1, k1 := mk(1, true)
	_, _ = mk(2, false)
	e3, k3 := mk(3, true)
	e4, k4 := mk(4, true)
	if i, ok := ct.Index(e3); !ok || &ct.entries[i] != e3 {
		t.Errorf("Index(e3) = %d, %v", i, ok)
	}
	ct.Delete(e1)
	expect("delete", k1)
	ct.Tombstone(e3, now)
	expect("tombstone", k3)
	if e3.Flags&FlagOffloaded != 0 {
		t.Error("FlagOffloaded survived the tombstone")
	}
	ct.Delete(e3)
	expect("delete of the tombstone")
	// Insert of the same key replaces the flow.
	_, _ = mk(4, false)
	expect("insert over the flow", k4)
	_ = e4
	// Eviction in a full table (capacity 4: ports 2, 4 and two new ones).
	now += sec
	e5, k5 := mk(5, true)
	now += sec
	_, _ = mk(6, false)
	now += sec
	_, _ = mk(7, false) // evicts the least recently seen: port 2 (not offloaded)
	expect("eviction of a plain flow")
	_, _ = mk(8, false) // then port 4, then 5
	_, _ = mk(9, false)
	expect("eviction", k5)
	_ = e5
	// Expiry.
	e10, k10 := mk(10, true)
	_ = e10
	now += int64(DefaultTimeouts().UDP) + sec
	for ct.Expire(now, 8) > 0 {
	}
	expect("expiry", k10)
	checkInvariants(t, ct)
}

func TestTouchAndScan(t *testing.T) {
	const sec = int64(time.Second)
	ct := newTable(t, 16)
	now := 10 * sec
	k := udpKey("10.0.0.1", 1000, "10.0.0.2", 53)
	e := mustInsert(t, ct, k, now)
	ct.Update(e, Original, 0, 100, now)
	// The kernel forwarded packets both ways until 20 s later; touched then.
	now += 25 * sec
	if !ct.Touch(e, now-5*sec, [2]uint64{3, 2}, [2]uint64{300, 200}, now) {
		t.Fatal("Touch() = false")
	}
	if e.LastSeen() != now || e.Expires() != now+int64(DefaultTimeouts().UDPStream) || !e.Replied() {
		t.Errorf("after Touch: last seen %d, expires %d, replied %v", e.LastSeen(), e.Expires(), e.Replied())
	}
	if e.Packets != [2]uint64{4, 2} || e.Bytes != [2]uint64{400, 200} {
		t.Errorf("counters %v %v", e.Packets, e.Bytes)
	}
	// Nothing new: no refresh.
	later := now + 10*sec
	ct.Touch(e, now-5*sec, [2]uint64{}, [2]uint64{}, later)
	if e.LastSeen() != now {
		t.Errorf("a touch without newer packets refreshed the flow: %d", e.LastSeen())
	}
	if ct.Touch(&Entry{}, now, [2]uint64{}, [2]uint64{}, now) {
		t.Error("Touch of a foreign entry = true")
	}
	checkInvariants(t, ct)
	// Scan visits every entry in use once per lap, in chunks.
	for i := range 9 {
		mustInsert(t, ct, udpKey("10.0.1.1", uint16(i), "10.0.0.2", 53), now)
	}
	ct.Delete(e)
	seen := map[Key]int{}
	pos := uint32(0)
	for range 4 {
		pos = ct.Scan(pos, 3, func(e *Entry) { seen[e.Key()]++ })
	}
	if len(seen) != 9 {
		t.Errorf("scan saw %d flows, want 9", len(seen))
	}
	for k, n := range seen {
		if n > 2 {
			t.Errorf("%v seen %d times in 12 steps over 10 slots", k, n)
		}
	}
	if p := newTable(t, 4).Scan(3, 10, func(*Entry) { t.Error("empty table scanned an entry") }); p != 0 {
		t.Errorf("Scan of an empty table = %d", p)
	}
}

// establish runs the handshake on a fresh TCP flow.
func establish(ct *Table, e *Entry, now int64) {
	ct.Update(e, Original, packet.TCPFlagSYN, 60, now)
	ct.Update(e, Reply, packet.TCPFlagSYN|packet.TCPFlagACK, 60, now)
	ct.Update(e, Original, packet.TCPFlagACK, 52, now)
}

// A full table evicts flows that are not assured (half-open, unreplied)
// before established ones, however old those are.
func TestEvictionTiers(t *testing.T) {
	const sec = int64(time.Second)
	ct, err := New(Config{Capacity: 4, LRUGranularity: 1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	var evicted []Key
	ct.SetEvictHook(func(e *Entry, _ Owner) { evicted = append(evicted, e.Key()) })
	now := sec
	old := tcpKey("10.0.0.1", 1000, "10.0.0.2", 80)
	e, _ := ct.InsertFor(old, 1, false, now)
	establish(ct, e, now)
	now += sec
	syn := tcpKey("10.0.0.1", 1001, "10.0.0.2", 80)
	e, _ = ct.InsertFor(syn, 1, false, now)
	ct.Update(e, Original, packet.TCPFlagSYN, 60, now)
	now += sec
	udp := udpKey("10.0.0.1", 1002, "10.0.0.2", 53)
	e, _ = ct.InsertFor(udp, 1, false, now)
	ct.Update(e, Original, 0, 60, now)
	now += sec
	stream := udpKey("10.0.0.1", 1003, "10.0.0.2", 53)
	e, _ = ct.InsertFor(stream, 1, false, now)
	ct.Update(e, Original, 0, 60, now)
	ct.Update(e, Reply, 0, 60, now)
	// Full: the half-open TCP flow goes first (older than the unreplied
	// UDP one), then the UDP one; the established and the replied flows
	// stay although the established one is the oldest of all.
	for i, want := range []Key{syn, udp} {
		now += sec
		k := tcpKey("10.0.0.3", uint16(2000+i), "10.0.0.2", 80)
		e, r := ct.InsertFor(k, 2, false, now)
		if r != InsertEvicted {
			t.Fatalf("insert %d: %v", i, r)
		}
		establish(ct, e, now)
		if evicted[i] != want {
			t.Errorf("insert %d evicted %v, want %v", i, evicted[i], want)
		}
	}
	// Only assured flows left: the least recently seen of them goes.
	now += sec
	if _, r := ct.InsertFor(tcpKey("10.0.0.3", 3000, "10.0.0.2", 80), 3, false, now); r != InsertEvicted || evicted[2] != old {
		t.Errorf("with only assured flows, evicted %v (%v), want the oldest %v", evicted[2:], r, old)
	}
	st := ct.Stats()
	want := map[string]uint64{"syn_sent": 1, "udp": 1, "established": 1}
	for c, name := range ClassNames {
		if st.EvictionsByClass[c] != want[name] {
			t.Errorf("evictions of %s: %d, want %d", name, st.EvictionsByClass[c], want[name])
		}
	}
	checkInvariants(t, ct)
}

// An owner that holds its fair share of a full table makes room only at the
// expense of its own flows, or is refused; the others keep theirs.
func TestFairShare(t *testing.T) {
	const sec = int64(time.Second)
	ct, err := New(Config{Capacity: 8, LRUGranularity: 1, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	owners := map[Key]Owner{}
	var evictedOwners []Owner
	ct.SetEvictHook(func(e *Entry, o Owner) {
		evictedOwners = append(evictedOwners, o)
		if owners[e.Key()] != o {
			t.Errorf("hook: %v owned by %d, told %d", e.Key(), owners[e.Key()], o)
		}
	})
	now := sec
	// A quiet pod (owner 2) holds two idle established flows, the oldest
	// of the table.
	var quiet []Key
	for i := range 2 {
		k := tcpKey("10.0.0.2", uint16(5000+i), "10.0.0.9", 80)
		e, _ := ct.InsertFor(k, 2, false, now)
		establish(ct, e, now)
		owners[k], quiet = 2, append(quiet, k)
	}
	// A pod (owner 1) floods SYNs: it fills the table, then replaces its
	// own flows.
	for i := range 100 {
		now += sec
		k := tcpKey("10.0.0.1", uint16(1000+i), "10.0.0.9", 80)
		e, r := ct.InsertFor(k, 1, false, now)
		if r == InsertRefused {
			t.Fatalf("flood insert %d refused: the flooder still has flows of its own at the tails", i)
		}
		owners[k] = 1
		ct.Update(e, Original, packet.TCPFlagSYN, 60, now)
	}
	for _, k := range quiet {
		if e, _ := ct.Lookup(k, now); e == nil {
			t.Errorf("the quiet pod's flow %v was evicted by the flood", k)
		}
	}
	for _, o := range evictedOwners {
		if o != 1 {
			t.Errorf("an eviction hit owner %d", o)
		}
	}
	if n := ct.OwnerFlows(1); n != 6 {
		t.Errorf("the flooder holds %d flows, want 6 (the table less the quiet pod's)", n)
	}
	// A third pod gets room: from the flooder, who is over its share.
	now += sec
	k := tcpKey("10.0.0.3", 7000, "10.0.0.9", 80)
	if _, r := ct.InsertFor(k, 3, false, now); r != InsertEvicted || evictedOwners[len(evictedOwners)-1] != 1 {
		t.Errorf("a new pod's insert: %v, evicted owner %d; want the flooder's flow", r, evictedOwners[len(evictedOwners)-1])
	}
	checkInvariants(t, ct)

	// Refusal: an owner over its share whose flows are at no class tail.
	ct2, err := New(Config{Capacity: 4, LRUGranularity: 1, Seed: 6})
	if err != nil {
		t.Fatal(err)
	}
	now = sec
	// Owner 9 has the oldest flows of both classes in use; owner 1 holds
	// the other two, newer, which sit behind them in their lists.
	for i, o := range []Owner{9, 9, 1, 1} {
		now += sec
		k := udpKey("10.0.1.1", uint16(100+i), "10.0.0.9", 53)
		e, _ := ct2.InsertFor(k, o, false, now)
		ct2.Update(e, Original, 0, 60, now)
		if i%2 == 1 {
			ct2.Update(e, Reply, 0, 60, now)
		}
	}
	if _, r := ct2.InsertFor(udpKey("10.0.1.1", 200, "10.0.0.9", 53), 1, false, now); r != InsertRefused {
		t.Errorf("an owner at its share with no flow at a tail: %v, want refused", r)
	}
	if ct2.Stats().Refusals != 1 {
		t.Errorf("refusals %d", ct2.Stats().Refusals)
	}
	checkInvariants(t, ct2)
}
