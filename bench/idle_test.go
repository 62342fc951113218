package bench

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseStatusKB(t *testing.T) {
	status := "Name:\tpodgate\nVmPeak:\t 2000 kB\nVmLck:\t       0 kB\nVmPin:\t       8 kB\nVmRSS:\t   75824 kB\nThreads:\t9\n"
	got, err := parseStatusKB(strings.NewReader(status), "VmRSS", "VmPin", "VmLck")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]float64{"VmRSS": 75824, "VmPin": 8, "VmLck": 0}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := parseStatusKB(strings.NewReader(status), "VmSwap"); err == nil {
		t.Error("missing field: no error")
	}
	if _, err := parseStatusKB(strings.NewReader("VmRSS:\tlots\n"), "VmRSS"); err == nil {
		t.Error("malformed field: no error")
	}
}

func TestParsePinnedPages(t *testing.T) {
	got, err := parsePinnedPages("nr_free_pages 1\nnr_foll_pin_acquired 950329\nnr_foll_pin_released 935993\npgfault 3\n")
	if err != nil || got != 14336 {
		t.Errorf("parsePinnedPages: %d, %v; want 14336", got, err)
	}
	for _, bad := range []string{"", "nr_foll_pin_acquired 1\n", "nr_foll_pin_acquired x\nnr_foll_pin_released 1\n"} {
		if _, err := parsePinnedPages(bad); err == nil {
			t.Errorf("parsePinnedPages(%q): no error", bad)
		}
	}
	// This kernel has the counters.
	if _, err := pinnedPages(); err != nil {
		t.Error(err)
	}
}

func TestSocketMappings(t *testing.T) {
	maps := `00400000-00c00000 r-xp 00000000 08:01 123 /usr/bin/podgate
7f728c353000-7f728c358000 rw-s 80000000 00:09 62302                      socket:[62302]
7f728c358000-7f728c35d000 rw-s 00000000 00:09 62302                      socket:[62302]
7f728c35d000-7f728c360000 rw-s 180000000 00:09 62302                     socket:[62302]
7f728c360000-7f728c363000 rw-s 100000000 00:09 62302                     socket:[62302]
7f728c363000-7f728c368000 rw-s 80000000 00:09 62293                      socket:[62293]
7f728c400000-7f728c800000 rw-p 00000000 00:00 0
`
	n, b, err := socketMappings(maps)
	if err != nil || n != 2 || b != 0x5000+0x5000+0x3000+0x3000+0x5000 {
		t.Errorf("socketMappings: %d sockets, %v bytes, %v", n, b, err)
	}
	if _, _, err := socketMappings("zz-7f rw-s 0 00:09 1 socket:[1]\n"); err == nil {
		t.Error("malformed range: no error")
	}
}

func TestParseFDInfo(t *testing.T) {
	got := parseFDInfo("pos:\t0\nflags:\t02000002\nmap_type:\t17\nmemlock:\t344\nmap_id:\t1883\n")
	if got["memlock"] != "344" || got["map_id"] != "1883" || got["map_type"] != "17" {
		t.Errorf("parseFDInfo: %v", got)
	}
}

func TestCountPorts(t *testing.T) {
	m := Metrics{
		`podgate_port_packets_total{direction="rx",interface="veth0-client"}`: 1,
		`podgate_port_packets_total{direction="tx",interface="veth0-client"}`: 1,
		`podgate_port_packets_total{direction="rx",interface="pgk0"}`:         1,
		`podgate_port_bytes_total{direction="rx",interface="veth1-server"}`:   1,
	}
	if n := countPorts(m, []string{"veth0-client", "veth1-server"}); n != 1 {
		t.Errorf("countPorts: %d, want 1", n)
	}
}
