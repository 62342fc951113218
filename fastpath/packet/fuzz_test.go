package packet

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary frames to Parse and, for frames it accepts, to
// the rewrite helpers. The seed corpus is the valid and hostile test
// frames (testdata/fuzz/FuzzParse holds them too; see
// TestWriteFuzzCorpus).
func FuzzParse(f *testing.F) {
	for _, tc := range validFrames(f) {
		f.Add(tc.frame)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		orig := append([]byte(nil), frame...)
		var p Packet
		r := Parse(frame, &p)
		if r >= NumStatuses || r == TTLExceeded {
			t.Fatalf("Parse() = %d", r)
		}
		if string(frame) != string(orig) {
			t.Fatal("Parse modified the frame")
		}
		if r != OK {
			return
		}
		checkInvariants(t, frame, &p)
		_ = L4ChecksumValid(frame, &p)

		// Forwarding rewrite: the result still parses, one hop less.
		work := append([]byte(nil), frame...)
		q := p
		switch DecrementTTL(work, &q) {
		case OK:
			var again Packet
			r := Parse(work, &again)
			if r != OK && !(r == BadNDP && p.TTL == 255) {
				t.Fatalf("Parse after DecrementTTL = %v", r)
			}
			if r == OK && (again.TTL != p.TTL-1 || q.TTL != p.TTL-1) {
				t.Fatalf("TTL %d after DecrementTTL of %d", again.TTL, p.TTL)
			}
		case TTLExceeded:
			if p.TTL > 1 || string(work) != string(frame) {
				t.Fatalf("TTLExceeded for TTL %d, or frame changed", p.TTL)
			}
		default:
			if p.L3 != L3ARP {
				t.Fatalf("DecrementTTL of %v failed", p.L3)
			}
		}
		SetMACs(work, macGW, macB)

		// ARP and NDP answers parse and are what was asked for.
		if p.L3 == L3ARP && p.ARP.Op == ARPRequest {
			work = append(work[:0], frame...)
			if !ReplyARP(work, &p, macGW) {
				t.Fatal("ReplyARP() = false for a request")
			}
			var reply Packet
			if r := Parse(work, &reply); r != OK {
				t.Fatalf("Parse(ARP reply) = %v", r)
			}
			if reply.ARP.Op != ARPReply || reply.ARP.SenderIP != p.ARP.TargetIP || reply.ARP.SenderMAC != macGW ||
				reply.ARP.TargetIP != p.ARP.SenderIP || reply.ARP.TargetMAC != p.ARP.SenderMAC || reply.SrcMAC != macGW {
				t.Fatalf("ARP reply parsed as %+v", reply.ARP)
			}
		}
		if p.L3 == L3IPv6 && p.Proto == ProtoICMPv6 && p.ICMPType == ICMPv6NeighborSolicit {
			buf := make([]byte, MaxNeighborAdvertisementLen)
			n := BuildNeighborAdvertisement(buf, &p, macGW, NAOverride)
			if n == 0 {
				t.Fatal("BuildNeighborAdvertisement() = 0 for a solicitation")
			}
			var na Packet
			if r := Parse(buf[:n], &na); r != OK {
				t.Fatalf("Parse(advertisement) = %v for %+v", r, p)
			}
			if !L4ChecksumValid(buf[:n], &na) || na.NDP.Target != p.NDP.Target || na.NDP.LinkAddr != macGW ||
				na.Src != p.NDP.Target {
				t.Fatalf("advertisement parsed as %+v", na)
			}
		}
	})
}

// TestWriteFuzzCorpus writes the valid and hostile test frames into
// testdata/fuzz/FuzzParse when PODGATE_WRITE_FUZZ_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("PODGATE_WRITE_FUZZ_CORPUS") != "1" {
		t.Skip("set PODGATE_WRITE_FUZZ_CORPUS=1 to rewrite testdata/fuzz/FuzzParse")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(prefix, name string, frame []byte) {
		file := prefix + "-" + strings.NewReplacer("/", "-", ".", "-").Replace(name)
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", frame)
		if err := os.WriteFile(filepath.Join(dir, file), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range validFrames(t) {
		write("valid", tc.name, tc.frame)
	}
	for _, tc := range hostileCases() {
		write("hostile", tc.name, tc.frame(t))
	}
}
