package offload

import (
	"reflect"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// TestLayout checks the Go types that mirror the maps' C structs against
// the BTF of the compiled object: same size, and every C member at the
// offset and with the size of its Go field. (The enums are not in the BTF,
// since no declaration has their type: the program tests check the values
// of actions and reasons by what the programs do and count.)
func TestLayout(t *testing.T) {
	spec, err := loadOffload()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		c      string
		goType reflect.Type
		// fields maps C members to Go fields; "" for C padding, which
		// must be a blank Go field.
		fields map[string]string
	}{
		{"flow_key", reflect.TypeFor[Key](), map[string]string{
			"a": "A", "b": "B", "port_a": "PortA", "port_b": "PortB", "proto": "Proto", "family": "Family", "pad": "",
		}},
		{"flow_dir", reflect.TypeFor[FlowDir](), map[string]string{
			"in_ifindex": "InIfindex", "out_ifindex": "OutIfindex", "src_mac": "SrcMAC", "dst_mac": "DstMAC",
			"gw_mac": "GwMAC", "action": "Action", "pad": "",
		}},
		{"flow_val", reflect.TypeFor[Value](), map[string]string{"dir": "Dir", "slot": "Slot", "flags": "Flags"}},
		{"counter", reflect.TypeFor[Counter](), map[string]string{
			"packets": "Packets", "bytes": "Bytes", "last_seen_ns": "LastSeenNS",
		}},
		{"config", reflect.TypeFor[config](), map[string]string{
			"punt_ifindex": "PuntIfindex", "flags": "Flags", "lease_until_ns": "LeaseUntilNS",
			"punt_interval_ns": "PuntIntervalNS", "punt_tolerance_ns": "PuntToleranceNS",
		}},
		{"stats", reflect.TypeFor[Stats](), map[string]string{
			"hit": "Hit", "punt": "Punt", "pass": "Pass", "punt_unset": "PuntUnset", "egress_marked": "EgressMarked",
			"redirect_err": "RedirectErrors", "short_frame": "ShortFrames", "vlan_dropped": "VLANDropped",
			"punt_limited": "PuntLimited",
		}},
	} {
		t.Run(tc.c, func(t *testing.T) {
			var s *btf.Struct
			if err := spec.Types.TypeByName(tc.c, &s); err != nil {
				t.Fatalf("BTF struct %s: %v", tc.c, err)
			}
			if s.Size != uint32(tc.goType.Size()) {
				t.Errorf("size: C %d, Go %s %d", s.Size, tc.goType, tc.goType.Size())
			}
			blank := map[uintptr]uintptr{} // offset → size of Go blank fields
			named := map[string]reflect.StructField{}
			for i := range tc.goType.NumField() {
				f := tc.goType.Field(i)
				if f.Name == "_" {
					blank[f.Offset] = f.Type.Size()
					continue
				}
				named[f.Name] = f
			}
			for _, m := range s.Members {
				goName, ok := tc.fields[m.Name]
				if !ok {
					t.Errorf("C member %s.%s has no Go counterpart", tc.c, m.Name)
					continue
				}
				size, err := btf.Sizeof(m.Type)
				if err != nil {
					t.Fatalf("size of %s.%s: %v", tc.c, m.Name, err)
				}
				off := uintptr(m.Offset.Bytes())
				if goName == "" {
					if blank[off] != uintptr(size) {
						t.Errorf("C padding %s.%s at %d (%d bytes) is not a blank Go field", tc.c, m.Name, off, size)
					}
					continue
				}
				f, ok := named[goName]
				if !ok {
					t.Errorf("Go field %s.%s missing", tc.goType, goName)
					continue
				}
				delete(named, goName)
				if f.Offset != off || f.Type.Size() != uintptr(size) {
					t.Errorf("%s.%s at %d (%d bytes), Go %s at %d (%d bytes)",
						tc.c, m.Name, off, size, goName, f.Offset, f.Type.Size())
				}
			}
			for name := range named {
				t.Errorf("Go field %s.%s has no C counterpart", tc.goType, name)
			}
		})
	}
}
