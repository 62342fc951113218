package fastpath

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/policy/table"
)

// Collector exports the engine's counters to Prometheus. It reads the
// per-batch published atomics at scrape time, so the packet path pays
// nothing for metrics. Label cardinality is bounded: reasons and paths are
// fixed sets, per-pod series exist only for the node's own pods (one per
// port), and per-policy series only for policies that allowed a flow on
// this node.
type Collector struct {
	e     *Engine
	store *table.Store
	flows *FlowLog // may be nil

	rxPackets, rxBytes, fwdPackets, fwdBytes, drops    *prometheus.Desc
	denied, allowedFlows, flowsNew, flowsCut, rechecks *prometheus.Desc
	cutDrops, resets, ctTombstones                     *prometheus.Desc
	offloaded, offloadInstalls, offloadRemoves         *prometheus.Desc
	offloadErrors, ctEvictedByClass, ctRefusals        *prometheus.Desc
	evictedByPod                                       *prometheus.Desc
	deniedByPolicy                                     *prometheus.Desc
	portPackets, portBytes, batches                    *prometheus.Desc
	ctEntries, ctCapacity, ctInserts, ctEvictions      *prometheus.Desc
	ctExpirations, ctDeletes, ctFragInserts, ctFragEv  *prometheus.Desc
	eventsLost, logLines, logSuppressed                *prometheus.Desc
	tableGen, tablePolicies, tableEndpoints            *prometheus.Desc
	tableRules, tableCompile                           *prometheus.Desc
	puntLimit                                          *prometheus.Desc
}

// NewCollector returns a collector for e, whose table comes from store;
// flows may be nil.
func NewCollector(e *Engine, store *table.Store, flows *FlowLog) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("podgate_"+name, help, labels, nil)
	}
	return &Collector{
		e: e, store: store, flows: flows,
		rxPackets:        d("received_packets_total", "Frames the fastpath received from all ports."),
		rxBytes:          d("received_bytes_total", "Bytes of the frames the fastpath received."),
		fwdPackets:       d("forwarded_packets_total", "Frames the fastpath sent, by path.", "path"),
		fwdBytes:         d("forwarded_bytes_total", "Bytes of the frames the fastpath sent, by path.", "path"),
		drops:            d("dropped_packets_total", "Frames the fastpath dropped, by reason.", "reason"),
		denied:           d("policy_denied_packets_total", "Packets a policy of a local pod denied, by direction and by the pod that is isolated.", "direction", "namespace", "pod"),
		allowedFlows:     d("policy_allowed_flows_total", "New flows a policy's rules allowed on this node, by direction.", "direction", "policy_namespace", "policy"),
		deniedByPolicy:   d("policy_isolation_denied_packets_total", "Packets denied on this node while this policy isolated the denying pod, by direction; a denial counts for every policy that isolates the pod.", "direction", "policy_namespace", "policy"),
		flowsNew:         d("flows_new_total", "Flows judged allowed and tracked."),
		flowsCut:         d("flows_cut_total", "Established flows that a new policy table denied and that were cut."),
		rechecks:         d("flows_rechecked_total", "Established flows judged again after a policy table change."),
		cutDrops:         d("flows_cut_packets_dropped_total", "Packets of flows that policy cut, dropped by their tombstone (also counted in dropped_packets_total under the reason of the cut)."),
		resets:           d("flows_cut_resets_total", "TCP resets sent to the senders of segments of cut connections (--cut-reset)."),
		ctTombstones:     d("conntrack_tombstones_total", "Flows that policy cut and that the connection-tracking table keeps as tombstones."),
		offloaded:        d("offloaded_flows", "Flows in the kernel's table of offloaded flows (forwarded by the kernel, decided by the fastpath)."),
		offloadInstalls:  d("offload_installs_total", "Flows installed in the kernel's table."),
		offloadRemoves:   d("offload_removes_total", "Flows removed from the kernel's table (ended, cut, expired, evicted, or their pod port changed)."),
		offloadErrors:    d("offload_errors_total", "Failed calls of the kernel's flow table (its flows stay with the fastpath)."),
		puntLimit:        d("punt_limit_frames_per_second", "The per-pod punt budget in force: how many frames per second each pod's TC program may send to the fastpath, set while the kernel leg's socket is congested; 0: unlimited."),
		portPackets:      d("port_packets_total", "Frames per port and direction (rx from the interface, tx to it).", "interface", "direction"),
		portBytes:        d("port_bytes_total", "Bytes per port and direction.", "interface", "direction"),
		batches:          d("batches_total", "Receive batches that had frames."),
		ctEntries:        d("conntrack_entries", "Flows held in the connection-tracking table, expired ones not yet reclaimed included."),
		ctCapacity:       d("conntrack_capacity", "Maximum number of flows the connection-tracking table holds."),
		ctInserts:        d("conntrack_inserts_total", "Flows inserted into the connection-tracking table (inserting never fails: a full table evicts)."),
		ctEvictions:      d("conntrack_evictions_total", "Flows evicted before they expired because the table was full."),
		ctEvictedByClass: d("conntrack_evictions_by_state_total", "Flows evicted to make room in the full table, by their state (half-open, unreplied and closed flows go before established ones).", "state"),
		ctRefusals:       d("conntrack_refusals_total", "New flows refused because the table was full and their pod held its fair share of it (also dropped_packets_total{reason=\"conntrack_full\"})."),
		evictedByPod:     d("conntrack_evicted_flows_total", "Flows of a local pod (started by it, or coming to it from the kernel leg) evicted to make room in the full table.", "namespace", "pod"),
		ctExpirations:    d("conntrack_expirations_total", "Expired flows reclaimed."),
		ctDeletes:        d("conntrack_deletes_total", "Flows deleted (restarted on the same addresses and ports, or a new connection on a tombstone)."),
		ctFragInserts:    d("conntrack_fragment_inserts_total", "Fragmented packets whose first fragment's verdict was recorded."),
		ctFragEv:         d("conntrack_fragment_evictions_total", "Fragment verdicts replaced before their timeout because the fragment table was full."),
		eventsLost:       d("flow_events_lost_total", "Flow events dropped because the flow log fell behind."),
		logLines:         d("flow_log_lines_total", "Denied-flow log lines written."),
		logSuppressed:    d("flow_log_suppressed_total", "Denied-flow log lines held back by the rate limit."),
		tableGen:         d("table_generation", "Generation of the policy table the fastpath uses."),
		tablePolicies:    d("table_policies", "NetworkPolicies in the current table."),
		tableEndpoints:   d("table_endpoints", "Pods with an address in the current table, cluster-wide."),
		tableRules:       d("table_rules", "Compiled rules in the current table."),
		tableCompile:     d("table_compile_duration_seconds", "How long compiling the current table took."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	s := c.e.Stats()
	counter(c.rxPackets, s.RxPackets)
	counter(c.rxBytes, s.RxBytes)
	for p := range NumPaths {
		counter(c.fwdPackets, s.FwdPackets[p], Path(p).String())
		counter(c.fwdBytes, s.FwdBytes[p], Path(p).String())
	}
	for d := range NumDrops {
		if Drop(d) == 0 { // packet.OK is not a drop
			continue
		}
		counter(c.drops, s.Drops[d], Drop(d).String())
	}
	counter(c.flowsNew, s.FlowsNew)
	counter(c.flowsCut, s.FlowsCut)
	counter(c.rechecks, s.Rechecks)
	counter(c.cutDrops, s.CutDrops)
	gauge(c.offloaded, float64(s.Offloaded))
	counter(c.offloadInstalls, s.OffloadInstalls)
	counter(c.offloadRemoves, s.OffloadRemoves)
	counter(c.offloadErrors, s.OffloadErrors)
	gauge(c.puntLimit, float64(c.e.PuntLimit()))
	counter(c.resets, s.Resets)
	counter(c.batches, s.Batches)

	t := c.store.Load()
	ports := c.e.PortStats()
	for _, ps := range ports {
		counter(c.portPackets, ps.RxPackets, ps.Name, "rx")
		counter(c.portPackets, ps.TxPackets, ps.Name, "tx")
		counter(c.portBytes, ps.RxBytes, ps.Name, "rx")
		counter(c.portBytes, ps.TxBytes, ps.Name, "tx")
		if ps.Kind != PodPort {
			continue
		}
		// A pod the table does not know: its interface, in a namespace
		// label that cannot be a namespace's name (not empty, which
		// Prometheus would fill from the scrape target).
		ns, pod := "(unknown)", ps.Name
		if t != nil && len(ps.PodIPs) > 0 {
			if i, ok := t.EndpointByAddr(ps.PodIPs[0]); ok {
				ep := t.Endpoint(i)
				ns, pod = ep.Namespace, ep.Name
			}
		}
		counter(c.denied, ps.DeniedIngress, "ingress", ns, pod)
		counter(c.denied, ps.DeniedEgress, "egress", ns, pod)
		counter(c.evictedByPod, ps.Evicted, ns, pod)
	}
	counts := c.e.PolicyCounts()
	// Policies that isolate a local pod have a denial series from the
	// start (0 until something is denied); others only once they count.
	isolating := map[PolicyName][2]bool{}
	if t != nil {
		for _, ps := range ports {
			if ps.Kind != PodPort || len(ps.PodIPs) == 0 {
				continue
			}
			ep, ok := t.EndpointByAddr(ps.PodIPs[0])
			if !ok {
				continue
			}
			for _, dir := range []table.Direction{table.Ingress, table.Egress} {
				for _, pi := range t.Selecting(ep, dir) {
					info := t.Policy(pi)
					k := PolicyName{info.Namespace, info.Name}
					v := isolating[k]
					v[dir] = true
					isolating[k] = v
					if _, ok := counts[k]; !ok {
						counts[k] = PolicyCounts{}
					}
				}
			}
		}
	}
	for name, v := range counts {
		for _, dir := range []table.Direction{table.Ingress, table.Egress} {
			if v.AllowedFlows[dir] > 0 {
				counter(c.allowedFlows, v.AllowedFlows[dir], dir.String(), name.Namespace, name.Name)
			}
			if v.DeniedPackets[dir] > 0 || isolating[name][dir] {
				counter(c.deniedByPolicy, v.DeniedPackets[dir], dir.String(), name.Namespace, name.Name)
			}
		}
	}

	ct := c.e.ConntrackStats()
	gauge(c.ctEntries, float64(ct.Entries))
	gauge(c.ctCapacity, float64(ct.Capacity))
	counter(c.ctInserts, ct.Inserts)
	counter(c.ctEvictions, ct.Evictions)
	for i, name := range conntrack.ClassNames {
		counter(c.ctEvictedByClass, ct.EvictionsByClass[i], name)
	}
	counter(c.ctRefusals, ct.Refusals)
	counter(c.ctExpirations, ct.Expirations)
	counter(c.ctDeletes, ct.Deletes)
	counter(c.ctTombstones, ct.Tombstones)
	counter(c.ctFragInserts, ct.FragInserts)
	counter(c.ctFragEv, ct.FragEvictions)

	counter(c.eventsLost, c.e.EventsLost())
	if c.flows != nil {
		counter(c.logLines, c.flows.Logged())
		counter(c.logSuppressed, c.flows.Suppressed())
	}
	if t != nil {
		st := t.Stats()
		gauge(c.tableGen, float64(t.Generation()))
		gauge(c.tablePolicies, float64(st.Policies))
		gauge(c.tableEndpoints, float64(st.Endpoints))
		gauge(c.tableRules, float64(st.Rules))
		gauge(c.tableCompile, st.Duration.Seconds())
	}
}
