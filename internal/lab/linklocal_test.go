package lab

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckOutsideAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want string // "" for accepted
	}{
		{"10.0.0.4", ""},
		{"169.254.169.254", ""}, // cloud instance metadata
		{"169.254.170.2", ""},   // ECS task metadata
		{"2001:db8::4", ""},
		{"169.254.1.1", "gateway"},
		{"169.254.0.2", "gateway"},
		{"fe80::1", "IPv6 link-local"},
		{"fe80::a9fe:a9fe", "IPv6 link-local"},
		{"127.0.0.1", "unicast"},
		{"::1", "unicast"},
		{"224.0.0.1", "unicast"},
		{"0.0.0.0", "unicast"},
		{"255.255.255.255", "unicast"},
	} {
		err := checkOutsideAddr(netip.MustParseAddr(tc.addr))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", tc.addr, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err = %v, want one containing %q", tc.addr, err, tc.want)
		}
	}
}
