package k8swatch

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports a [Source]'s health: ready, stale, rebuild counts and
// times. Its series have no labels.
type Collector struct {
	src                                          Source
	ready, stale, rebuilds, failures, events     *prometheus.Desc
	incremental                                  *prometheus.Desc
	lastPublish, lastSync, lastRebuild, errSince *prometheus.Desc
}

// NewCollector returns a collector for src.
func NewCollector(src Source) *Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("podgate_source_"+name, help, nil, nil)
	}
	return &Collector{
		src:         src,
		ready:       d("ready", "1 when the policy source published a table and its last rebuild succeeded."),
		stale:       d("stale", "1 when the source's view may be out of date (API server unreachable, watch errors); enforcement continues on the last table."),
		rebuilds:    d("rebuilds_total", "Rebuild attempts (successful or not: see rebuild_failures_total)."),
		failures:    d("rebuild_failures_total", "Rebuilds that failed (invalid input); the last table stays."),
		incremental: d("incremental_rebuilds_total", "Rebuilds that updated the last table for pod changes instead of compiling everything (included in rebuilds_total)."),
		events:      d("events_total", "Changes seen (informer events or file changes)."),
		lastPublish: d("last_publish_timestamp_seconds", "When the last table was published."),
		lastSync:    d("last_sync_timestamp_seconds", "When the source last published a table from a view known to be current."),
		lastRebuild: d("last_rebuild_duration_seconds", "How long the last rebuild took, from reading the inputs to publishing."),
		errSince:    d("error_since_timestamp_seconds", "Since when rebuilds fail, or 0."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	ts := func(t interface{ Unix() int64 }, zero bool) float64 {
		if zero {
			return 0
		}
		return float64(t.Unix())
	}
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	k := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	g(c.ready, b(st.Ready()))
	g(c.stale, b(st.Stale))
	k(c.rebuilds, float64(st.Rebuilds))
	k(c.failures, float64(st.Failures))
	k(c.incremental, float64(st.Incremental))
	k(c.events, float64(st.Events))
	g(c.lastPublish, ts(st.LastPublish, st.LastPublish.IsZero()))
	g(c.lastSync, ts(st.LastSync, st.LastSync.IsZero()))
	g(c.lastRebuild, st.LastRebuild.Seconds())
	g(c.errSince, ts(st.ErrorSince, st.ErrorSince.IsZero()))
}
