package offload

import "github.com/prometheus/client_golang/prometheus"

// Collector exports the programs' global counters ([Offload.Stats]) to
// Prometheus, read at scrape time (one system call per scrape).
type Collector struct {
	o                                       *Offload
	hits, punts, passes, drops, redirectErr *prometheus.Desc
}

// NewCollector returns a collector for o.
func NewCollector(o *Offload) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("podgate_offload_"+name, help, labels, nil)
	}
	return &Collector{
		o:           o,
		hits:        d("forwarded_packets_total", "Packets the kernel forwarded on offloaded flows, by action (kernel: left to the kernel's routing; peer: into a local pod; redirect: from the kernel leg to a local pod).", "action"),
		punts:       d("punted_packets_total", "Frames of pods that the TC program sent to the fastpath instead of forwarding, by reason.", "reason"),
		passes:      d("passed_packets_total", "Frames on the kernel leg that the TC program left to the fastpath, by reason.", "reason"),
		drops:       d("dropped_packets_total", "Frames of pods that the TC program dropped, by reason (vlan: VLAN-tagged; punt_limited: over the pod's punt budget while the fastpath was congested; both also in punted_packets_total).", "reason"),
		redirectErr: d("redirect_errors_total", "Frames dropped because a redirect failed."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

// Collect implements prometheus.Collector. A closed Offload reports
// nothing.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.o.Stats()
	if err != nil {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, a := range []Action{ActKernel, ActPeer, ActRedirect} {
		counter(c.hits, s.Hit[a], a.String())
	}
	for r := Reason(0); r < NumReasons; r++ {
		counter(c.punts, s.Punt[r], r.String())
		counter(c.passes, s.Pass[r], r.String())
	}
	counter(c.drops, s.VLANDropped, ReasonVLAN.String())
	counter(c.drops, s.PuntLimited, "punt_limited")
	counter(c.redirectErr, s.RedirectErrors)
}
