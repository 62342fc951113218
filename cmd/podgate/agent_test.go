package main

import (
	"strings"
	"testing"
)

// TestAgentFlagErrors: bad agent flags are rejected before anything on the
// node changes, each naming its flag.
func TestAgentFlagErrors(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--manifests", article}, "--node-name"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--kubeconfig", "k"}, "give one source"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--busy-poll", "-1s"}, "--busy-poll"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--xsk-ring-size", "1000"}, "--xsk-ring-size 1000"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--xsk-ring-size", "32"}, "--xsk-ring-size 32"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--conntrack-max", "10"}, "--conntrack-max"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--metrics-addr", "9402"}, "--metrics-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--metrics-max-conns", "1"}, "--metrics-max-conns"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--metrics-max-conns-per-client", "0"}, "--metrics-max-conns-per-client"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--health-addr", "9403"}, "--health-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--health-addr", "127.0.0.1:9402"}, "must differ from --metrics-addr"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--manifest-file-limit", "-1"}, "--manifest-file-limit"},
		{[]string{"agent", "--node-name", "n", "--manifests", article, "--log-level", "loud"}, "--log-level"},
	} {
		_, _, err := podgate(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("podgate %s: err = %v, want it to mention %s", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
