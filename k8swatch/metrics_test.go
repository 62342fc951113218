package k8swatch

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// statusSource is a Source that only reports a fixed status.
type statusSource struct{ st Status }

func (f statusSource) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (f statusSource) Ready() bool                   { return f.st.Ready() }
func (f statusSource) Status() Status                { return f.st }
func (f statusSource) NodeAddrs() []netip.Addr       { return nil }

func TestCollector(t *testing.T) {
	st := Status{Synced: true, Generation: 3, Rebuilds: 4, Failures: 1, Events: 9, Stale: true,
		LastPublish: time.Unix(1700000000, 0), LastRebuild: 20 * time.Millisecond}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(statusSource{st}))
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	want := `
# HELP podgate_source_stale 1 when the source's view may be out of date (API server unreachable, watch errors); enforcement continues on the last table.
# TYPE podgate_source_stale gauge
podgate_source_stale 1
# HELP podgate_source_rebuild_failures_total Rebuilds that failed (invalid input); the last table stays.
# TYPE podgate_source_rebuild_failures_total counter
podgate_source_rebuild_failures_total 1
# HELP podgate_source_last_publish_timestamp_seconds When the last table was published.
# TYPE podgate_source_last_publish_timestamp_seconds gauge
podgate_source_last_publish_timestamp_seconds 1.7e+09
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podgate_source_stale", "podgate_source_rebuild_failures_total", "podgate_source_last_publish_timestamp_seconds"); err != nil {
		t.Error(err)
	}
}
