package offload

import (
	"errors"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestMakeKey(t *testing.T) {
	v4 := func(s string) (b [16]byte) {
		a := mustAddr(s).As4()
		copy(b[:], a[:])
		return b
	}
	v6 := func(s string) [16]byte { return mustAddr(s).As16() }
	port := func(p uint16) [2]byte { return [2]byte{byte(p >> 8), byte(p)} }
	for _, tc := range []struct {
		name       string
		src, dst   string
		proto      uint8
		sport, dpt uint16
		want       Key
		wantDir    Dir
	}{
		{
			name: "v4 lower source", src: "10.0.0.1", dst: "10.0.0.2", proto: ProtoTCP, sport: 40000, dpt: 80,
			want:    Key{A: v4("10.0.0.1"), B: v4("10.0.0.2"), PortA: port(40000), PortB: port(80), Proto: ProtoTCP, Family: 4},
			wantDir: DirAB,
		},
		{
			name: "v4 higher source", src: "10.0.0.2", dst: "10.0.0.1", proto: ProtoTCP, sport: 80, dpt: 40000,
			want:    Key{A: v4("10.0.0.1"), B: v4("10.0.0.2"), PortA: port(40000), PortB: port(80), Proto: ProtoTCP, Family: 4},
			wantDir: DirBA,
		},
		{
			name: "v4 address order is bytewise, not by last octet", src: "10.0.1.0", dst: "10.0.0.255", proto: ProtoUDP, sport: 1, dpt: 2,
			want:    Key{A: v4("10.0.0.255"), B: v4("10.0.1.0"), PortA: port(2), PortB: port(1), Proto: ProtoUDP, Family: 4},
			wantDir: DirBA,
		},
		{
			// A comparison of the raw little-endian port fields would not swap.
			name: "same address, ports in host order", src: "10.0.0.1", dst: "10.0.0.1", proto: ProtoUDP, sport: 0x0100, dpt: 0x0001,
			want:    Key{A: v4("10.0.0.1"), B: v4("10.0.0.1"), PortA: port(0x0001), PortB: port(0x0100), Proto: ProtoUDP, Family: 4},
			wantDir: DirBA,
		},
		{
			name: "equal endpoints: source is A", src: "10.0.0.1", dst: "10.0.0.1", proto: ProtoSCTP, sport: 9, dpt: 9,
			want:    Key{A: v4("10.0.0.1"), B: v4("10.0.0.1"), PortA: port(9), PortB: port(9), Proto: ProtoSCTP, Family: 4},
			wantDir: DirAB,
		},
		{
			name: "mapped v4 is v4", src: "::ffff:10.0.0.9", dst: "10.0.0.3", proto: ProtoUDP, sport: 5, dpt: 6,
			want:    Key{A: v4("10.0.0.3"), B: v4("10.0.0.9"), PortA: port(6), PortB: port(5), Proto: ProtoUDP, Family: 4},
			wantDir: DirBA,
		},
		{
			name: "v6 differs in the low half", src: "fd00::2", dst: "fd00::1", proto: ProtoTCP, sport: 1, dpt: 2,
			want:    Key{A: v6("fd00::1"), B: v6("fd00::2"), PortA: port(2), PortB: port(1), Proto: ProtoTCP, Family: 6},
			wantDir: DirBA,
		},
		{
			name: "v6 differs in the high half", src: "fd00::ffff", dst: "fd01::", proto: ProtoTCP, sport: 1, dpt: 2,
			want:    Key{A: v6("fd00::ffff"), B: v6("fd01::"), PortA: port(1), PortB: port(2), Proto: ProtoTCP, Family: 6},
			wantDir: DirAB,
		},
		{
			name: "mixed families match nothing", src: "10.0.0.1", dst: "fd00::1", proto: ProtoTCP, sport: 1, dpt: 2,
			want: Key{Proto: ProtoTCP}, wantDir: DirAB,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, d := MakeKey(mustAddr(tc.src), mustAddr(tc.dst), tc.proto, tc.sport, tc.dpt)
			if diff := cmp.Diff(tc.want, k); diff != "" || d != tc.wantDir {
				t.Errorf("MakeKey dir = %d, want %d; key (-want +got):\n%s", d, tc.wantDir, diff)
			}
			if tc.want.Family == 0 {
				return
			}
			// The reverse packet has the same key and the other direction,
			// unless both endpoints are equal.
			rk, rd := MakeKey(mustAddr(tc.dst), mustAddr(tc.src), tc.proto, tc.dpt, tc.sport)
			if rk != k {
				t.Errorf("reverse key %v != %v", rk, k)
			}
			if tc.src != tc.dst || tc.sport != tc.dpt {
				if rd == d {
					t.Errorf("reverse dir = %d, same as forward", rd)
				}
			}
			if err := k.validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
		})
	}
}

func TestMakeKeyAllocs(t *testing.T) {
	a, b := mustAddr("fd00::2"), mustAddr("fd00::1")
	var sink Key
	if n := testing.AllocsPerRun(100, func() { sink, _ = MakeKey(a, b, ProtoTCP, 1, 2) }); n != 0 {
		t.Errorf("MakeKey allocates %v times", n)
	}
	_ = sink
}

func TestKeyAccessors(t *testing.T) {
	k, _ := MakeKey(mustAddr("10.1.2.3"), mustAddr("10.1.2.4"), ProtoUDP, 53, 40000)
	a, b := k.Addrs()
	pa, pb := k.Ports()
	if a != mustAddr("10.1.2.3") || b != mustAddr("10.1.2.4") || pa != 53 || pb != 40000 {
		t.Errorf("Addrs, Ports = %v %v %d %d", a, b, pa, pb)
	}
	if got, want := k.String(), "17 10.1.2.3:53 <-> 10.1.2.4:40000"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

func TestKeyValidate(t *testing.T) {
	good, _ := MakeKey(mustAddr("10.0.0.1"), mustAddr("10.0.0.2"), ProtoTCP, 1, 2)
	for _, tc := range []struct {
		name string
		mod  func(*Key)
		want string
	}{
		{"family", func(k *Key) { k.Family = 5 }, "family 5"},
		{"v4 junk", func(k *Key) { k.B[7] = 1 }, "beyond the IPv4 address"},
		{"proto", func(k *Key) { k.Proto = 1 }, "protocol 1"},
		{"order", func(k *Key) { k.A, k.B = k.B, k.A }, "canonical order"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := good
			tc.mod(&k)
			err := k.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestValueValidate(t *testing.T) {
	good := Value{Slot: 3, Dir: [2]FlowDir{
		{InIfindex: 5, OutIfindex: 6, Action: ActPeer},
		{InIfindex: 9, Action: ActKernel},
	}}
	if err := good.validate(4); err != nil {
		t.Fatalf("validate good: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Value)
		want string
	}{
		{"slot", func(v *Value) { v.Slot = 4 }, "slot 4 out of range"},
		{"action", func(v *Value) { v.Dir[1].Action = 9 }, "unknown action 9"},
		{"no out", func(v *Value) { v.Dir[0].OutIfindex = 0 }, "without out ifindex"},
		{"no in", func(v *Value) { v.Dir[1].InIfindex = 0 }, "without in ifindex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := good
			tc.mod(&v)
			err := v.validate(4)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestPuntMarker(t *testing.T) {
	for _, ifindex := range []int{1, 2, 0x1234, 0x01020304, 1<<31 - 1} {
		m := PuntMarker(ifindex)
		if m[0] != 0x06 || m[1] != 0x70 {
			t.Errorf("PuntMarker(%d) = % x, want prefix 06 70", ifindex, m)
		}
		got, ok := PuntedFrom(m)
		if !ok || got != ifindex {
			t.Errorf("PuntedFrom(PuntMarker(%d)) = %d, %v", ifindex, got, ok)
		}
	}
	if m := PuntMarker(0x01020304); m != [6]byte{0x06, 0x70, 1, 2, 3, 4} {
		t.Errorf("PuntMarker is not big-endian: % x", m)
	}
	for _, mac := range [][6]byte{
		{},
		{0x06, 0x70, 0, 0, 0, 0},
		{0x06, 0x71, 0, 0, 0, 5},
		{0x02, 0x70, 0, 0, 0, 5},
		{0x06, 0x70, 0xff, 0xff, 0xff, 0xff},
	} {
		if i, ok := PuntedFrom(mac); ok {
			t.Errorf("PuntedFrom(% x) = %d, true; want not a marker", mac, i)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"zero", Config{}, []string{"MaxFlows 0"}},
		{"negative", Config{MaxFlows: -1}, []string{"MaxFlows -1"}},
		{"too big", Config{MaxFlows: MaxFlowsLimit + 1}, []string{"MaxFlows 268435457"}},
		{"missing pin dir", Config{MaxFlows: 1, PinDir: dir + "/nope"}, []string{"PinDir " + dir + "/nope"}},
		{"pin dir not bpffs", Config{MaxFlows: 1, PinDir: dir}, []string{"not on a bpffs"}},
		{"both", Config{PinDir: dir}, []string{"MaxFlows 0", "not on a bpffs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %v, want it to mention %q", err, w)
				}
			}
			// Open checks the config before touching the kernel.
			if o, err := Open(tc.cfg); !errors.Is(err, ErrInvalidConfig) {
				if o != nil {
					o.Close()
				}
				t.Errorf("Open = %v, want ErrInvalidConfig", err)
			}
		})
	}
	if err := (Config{MaxFlows: 1}).Validate(); err != nil {
		t.Errorf("Validate(MaxFlows 1) = %v", err)
	}
}

func TestReasonString(t *testing.T) {
	seen := map[string]bool{}
	for r := Reason(0); r < NumReasons; r++ {
		s := r.String()
		if s == "" || seen[s] || strings.HasPrefix(s, "reason(") {
			t.Errorf("Reason(%d).String() = %q", r, s)
		}
		seen[s] = true
	}
	if s := NumReasons.String(); s != "reason(13)" {
		t.Errorf("NumReasons.String() = %q", s)
	}
}

// TestGenerateVersion checks that go:generate runs the bpf2go of the
// cilium/ebpf version the module builds with.
func TestGenerateVersion(t *testing.T) {
	gen, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	g := regexp.MustCompile(`cilium/ebpf/cmd/bpf2go@(v\S+)`).FindSubmatch(gen)
	m := regexp.MustCompile(`(?m)^\s*github\.com/cilium/ebpf (v\S+)`).FindSubmatch(mod)
	if g == nil || m == nil {
		t.Fatalf("version not found: gen.go %q, go.mod %q", g, m)
	}
	if string(g[1]) != string(m[1]) {
		t.Errorf("gen.go runs bpf2go %s, go.mod has cilium/ebpf %s", g[1], m[1])
	}
}

func TestPrepareBPFFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount)")
	}
	base := t.TempDir()
	dir := base + "/bpf/podgate"
	unmount, err := PrepareBPFFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if unmount == nil {
		t.Fatal("no bpffs was mounted on a temporary directory")
	}
	t.Cleanup(func() { _ = unmount() })
	if err := (Config{MaxFlows: 1, PinDir: dir}).Validate(); err != nil {
		t.Errorf("the prepared directory is not a pin directory: %v", err)
	}
	// A second time, the bpffs is there: nothing to unmount.
	again, err := PrepareBPFFS(dir)
	if err != nil || again != nil {
		t.Errorf("PrepareBPFFS on a bpffs = %v, %v; want nil, nil", again != nil, err)
	}
	if err := unmount(); err != nil {
		t.Error(err)
	}
}
