package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podgate/podgate/fastpath"
)

// Collector exports the AF_XDP sockets' statistics (the user-space
// counters of package xsk and the kernel's XDP_STATISTICS) per interface,
// and the number of ports. Series exist per port: the node's pods and the
// kernel leg.
type Collector struct {
	n                                                   *Node
	ready, ports                                        *prometheus.Desc
	rxDropped, rxInvalid, txInvalid, rxRingFull         *prometheus.Desc
	fillEmpty, txEmpty, allocFail, txFull, kicks, kErrs *prometheus.Desc
}

// NewCollector returns a collector for n.
func NewCollector(n *Node) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("podgate_"+name, help, labels, nil)
	}
	return &Collector{
		n:          n,
		ready:      d("node_ready", "1 when the kernel leg is up and the node's pods were plumbed once."),
		ports:      d("ports", "AF_XDP ports by kind (pod, kernel).", "kind"),
		rxDropped:  d("xsk_rx_dropped_total", "Frames the kernel could not deliver to the socket (no fill frame, or too big).", "interface"),
		rxInvalid:  d("xsk_rx_invalid_descs_total", "Invalid descriptors in the fill ring.", "interface"),
		txInvalid:  d("xsk_tx_invalid_descs_total", "Invalid descriptors in the TX ring.", "interface"),
		rxRingFull: d("xsk_rx_ring_full_total", "Times the RX ring was full when the kernel delivered.", "interface"),
		fillEmpty:  d("xsk_fill_ring_empty_total", "Times the fill ring was empty when the kernel needed a frame.", "interface"),
		txEmpty:    d("xsk_tx_ring_empty_total", "Times the kernel found the TX ring empty.", "interface"),
		allocFail:  d("xsk_alloc_failures_total", "Times the fastpath found no free frame on the port.", "interface"),
		txFull:     d("xsk_tx_ring_full_total", "Transmits refused because the TX ring was full.", "interface"),
		kicks:      d("xsk_kicks_total", "sendto wakeups of the kernel's transmit path.", "interface"),
		kErrs:      d("xsk_kick_errors_total", "Wakeups that failed or left frames behind.", "interface"),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ready := 0.0
	if c.n.Ready() {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, ready)
	counts := map[string]float64{"pod": 0, "kernel": 0}
	for _, p := range c.n.Ports() {
		kind := "pod"
		if p.Kind == fastpath.KernelPort {
			kind = "kernel"
		}
		counts[kind]++
		s := p.Stats
		for _, m := range []struct {
			d *prometheus.Desc
			v uint64
		}{
			{c.rxDropped, s.RxDropped}, {c.rxInvalid, s.RxInvalidDescs}, {c.txInvalid, s.TxInvalidDescs},
			{c.rxRingFull, s.RxRingFull}, {c.fillEmpty, s.RxFillRingEmptyDescs}, {c.txEmpty, s.TxRingEmptyDescs},
			{c.allocFail, s.AllocFailures}, {c.txFull, s.TxRingFull}, {c.kicks, s.Kicks}, {c.kErrs, s.KickErrors},
		} {
			ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v), p.Name)
		}
	}
	for kind, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.ports, prometheus.GaugeValue, n, kind)
	}
}
