//lint:file-ignore SA1019 the classic dashboard JSON model (package dashboard) imports into every Grafana version; the SDK deprecates it for dashboardv2, which needs Grafana 12 and its v2 API

package grafana

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/grafana/grafana-foundation-sdk/go/bargauge"
	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/text"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Names of the template variables, as they appear in queries ($node, ...).
const (
	VarDatasource = "datasource"
	VarNode       = "node"
	VarNamespace  = "namespace"
)

// Job is the Prometheus job name the dashboards and alerts expect for the
// agents' scrape target (the job_name in deploy/prometheus/prometheus.yml,
// the Service name that a ServiceMonitor turns into the job label).
const Job = "podgate"

// File is a generated dashboard and the file name it is committed under.
type File struct {
	// Name is the file name in deploy/grafana, e.g. "podgate-drops.json".
	Name      string
	Dashboard dashboard.Dashboard
}

// Dashboards builds podgate's dashboards.
func Dashboards() ([]File, error) {
	drops, err := dropsDashboard().Build()
	if err != nil {
		return nil, fmt.Errorf("build drops dashboard: %w", err)
	}
	overview, err := overviewDashboard().Build()
	if err != nil {
		return nil, fmt.Errorf("build overview dashboard: %w", err)
	}
	return []File{
		{Name: "podgate-drops.json", Dashboard: drops},
		{Name: "podgate-overview.json", Dashboard: overview},
	}, nil
}

// Render returns the JSON of every dashboard by file name, exactly as it is
// committed: indented by two spaces, ending in a newline.
func Render() (map[string][]byte, error) {
	files, err := Dashboards()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(files))
	for _, f := range files {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		// PromQL has < and > and legends have &: keep them readable.
		enc.SetEscapeHTML(false)
		if err := enc.Encode(f.Dashboard); err != nil {
			return nil, fmt.Errorf("encode %s: %w", f.Name, err)
		}
		out[f.Name] = buf.Bytes()
	}
	return out, nil
}

// Write renders the dashboards into dir, replacing files of the same name.
func Write(dir string) error {
	files, err := Render()
	if err != nil {
		return err
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("write dashboard: %w", err)
		}
	}
	return nil
}

// sel is the label matcher every query starts with.
const sel = `node=~"$node"`

// selNS also restricts to the chosen namespaces (of the isolated pod).
const selNS = `node=~"$node", namespace=~"$namespace"`

// denied matches the drop reasons of policy verdicts.
const denied = `reason=~"denied_egress|denied_ingress"`

// Queries of the drops dashboard's main panels. (The tests read queries
// from the committed JSON, by panel title.)
const (
	queryDropsByReason     = `sum by (reason) (rate(podgate_dropped_packets_total{` + sel + `}[$__rate_interval])) > 0`
	queryDeniedByPod       = `topk(10, sum by (namespace, pod, direction) (rate(podgate_policy_denied_packets_total{` + selNS + `}[$__rate_interval])) > 0)`
	queryDeniedByNamespace = `sum by (namespace, direction) (rate(podgate_policy_denied_packets_total{` + selNS + `}[$__rate_interval])) > 0`
	queryTopDeniedRange    = `topk(10, sum by (namespace, pod, direction) (increase(podgate_policy_denied_packets_total{` + selNS + `}[$__range])) > 0)`
	queryOtherDrops        = `sum by (node, reason) (rate(podgate_dropped_packets_total{` + sel + `, reason!~"denied_egress|denied_ingress"}[$__rate_interval])) > 0`
	queryAllowedByPolicy   = `topk(10, sum by (policy_namespace, policy, direction) (rate(podgate_policy_allowed_flows_total{` + sel + `, policy_namespace=~"$namespace"}[$__rate_interval])) > 0)`
	queryDeniedByPolicy    = `topk(10, sum by (policy_namespace, policy, direction) (rate(podgate_policy_isolation_denied_packets_total{` + sel + `, policy_namespace=~"$namespace"}[$__rate_interval])) > 0)`
	queryForwardedPackets  = `sum by (path) (rate(podgate_forwarded_packets_total{` + sel + `}[$__rate_interval]))`
	queryForwardedBits     = `8 * sum by (path) (rate(podgate_forwarded_bytes_total{` + sel + `}[$__rate_interval]))`
	queryConntrackUsage    = `max by (node) (podgate_conntrack_entries{` + sel + `} / podgate_conntrack_capacity{` + sel + `})`
)

// Text of the panel that points from per-pod counters to per-flow detail.
const flowsText = `#### Which flows were denied?

The counters here are per pod and direction: they say *who* is isolated and
losing traffic, not which peer, port or policy. The agent keeps the
per-flow detail:

* ` + "`podgate flows --addr NODE_IP:9402 --verdict deny`" + ` lists the recent
  verdicts on one node (source and destination pod, IP and port, protocol,
  the policies that isolate the pod); add ` + "`--follow`" + ` to watch new ones,
  ` + "`--namespace NS`" + ` to filter. The agent serves them on ` + "`/flows`" + ` of its
  metrics port (hostNetwork: the node's IP).
* The agent's log has one ` + "`flow denied`" + ` line per denied flow, rate-limited
  (` + "`podgate_flow_log_suppressed_total`" + ` counts the lines held back).

A denied flow is counted at the node of the pod whose policy denied it:
egress at the source's node, ingress at the destination's.`

// builder collects panels with increasing ids.
type builder struct {
	d  *dashboard.DashboardBuilder
	id uint32
}

func newBuilder(uid, title, description string, tags ...string) *builder {
	d := dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Description(description).
		Tags(append([]string{"podgate"}, tags...)).
		Editable().
		Refresh("30s").
		Time("now-1h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder(VarDatasource).
			Label("Data source").
			Type("prometheus")).
		WithVariable(queryVariable(VarNode, "Node", `label_values(podgate_node_ready, node)`)).
		Link(dashboard.NewDashboardLinkBuilder("podgate dashboards").
			Type(dashboard.DashboardLinkTypeDashboards).
			Tags([]string{"podgate"}).
			AsDropdown(true).
			Icon("external link").
			Tooltip("The other podgate dashboards, same time range and variables").
			IncludeVars(true).
			KeepTime(true))
	return &builder{d: d}
}

// queryVariable is a multi-value variable with "All" (matching .*) whose
// options come from a label_values query.
func queryVariable(name, label, query string) *dashboard.QueryVariableBuilder {
	return dashboard.NewQueryVariableBuilder(name).
		Label(label).
		Datasource(datasource()).
		Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).
		Definition(query).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortAlphabeticalAsc).
		Multi(true).
		IncludeAll(true).
		AllValue(".*").
		Current(dashboard.VariableOption{
			Selected: cog.ToPtr(true),
			Text:     dashboard.StringOrArrayOfString{ArrayOfString: []string{"All"}},
			Value:    dashboard.StringOrArrayOfString{ArrayOfString: []string{"$__all"}},
		})
}

func datasource() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${" + VarDatasource + "}")}
}

// panel is what every panel builder of the SDK is.
type panel interface {
	cog.Builder[dashboard.Panel]
}

func (b *builder) row(title string) {
	b.id++
	b.d.WithRow(dashboard.NewRowBuilder(title).Id(b.id))
}

func (b *builder) add(p panel) {
	b.d.WithPanel(p)
}

func (b *builder) nextID() uint32 {
	b.id++
	return b.id
}

// query is a range query; legend may be empty (Grafana's automatic legend).
func query(ref, expr, legend string) *prometheus.DataqueryBuilder {
	q := prometheus.NewDataqueryBuilder().
		Datasource(datasource()).
		RefId(ref).
		Expr(expr).
		Range()
	if legend != "" {
		q.LegendFormat(legend)
	}
	return q
}

// instant is an instant query (bar gauges, stats of "now").
func instant(ref, expr, legend string) *prometheus.DataqueryBuilder {
	q := prometheus.NewDataqueryBuilder().
		Datasource(datasource()).
		RefId(ref).
		Expr(expr).
		Instant()
	if legend != "" {
		q.LegendFormat(legend)
	}
	return q
}

func legendTable() *common.VizLegendOptionsBuilder {
	return common.NewVizLegendOptionsBuilder().
		DisplayMode(common.LegendDisplayModeTable).
		Placement(common.LegendPlacementRight).
		ShowLegend(true).
		Calcs([]string{"mean", "max", "lastNotNull"}).
		SortBy("Max").
		SortDesc(true)
}

func legendList() *common.VizLegendOptionsBuilder {
	return common.NewVizLegendOptionsBuilder().
		DisplayMode(common.LegendDisplayModeList).
		Placement(common.LegendPlacementBottom).
		ShowLegend(true)
}

// graph is a time series panel of rates.
func (b *builder) graph(title, description, unit string, span, height uint32, targets ...cog.Builder[variants.Dataquery]) *timeseries.PanelBuilder {
	p := timeseries.NewPanelBuilder().
		Id(b.nextID()).
		Title(title).
		Description(description).
		Datasource(datasource()).
		Unit(unit).
		Min(0).
		Span(span).
		Height(height).
		FillOpacity(10).
		LineWidth(1).
		ShowPoints(common.VisibilityModeNever).
		Legend(legendList()).
		Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending))
	for _, t := range targets {
		p.WithTarget(t)
	}
	return p
}

func thresholds(steps ...dashboard.Threshold) *dashboard.ThresholdsConfigBuilder {
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(steps)
}

func step(value *float64, color string) dashboard.Threshold {
	return dashboard.Threshold{Value: value, Color: color}
}

// countStat is a stat panel of a count that should be zero: green at 0,
// red from 1.
func (b *builder) countStat(title, description, expr string) *stat.PanelBuilder {
	return stat.NewPanelBuilder().
		Id(b.nextID()).
		Title(title).
		Description(description).
		Datasource(datasource()).
		Span(4).
		Height(4).
		Orientation(common.VizOrientationAuto).
		ColorMode(common.BigValueColorModeBackground).
		GraphMode(common.BigValueGraphModeNone).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		Thresholds(thresholds(step(nil, "green"), step(cog.ToPtr(1.0), "red"))).
		WithTarget(instant("A", expr, ""))
}

// rateStat is a stat panel of a rate with a sparkline.
func (b *builder) rateStat(title, description, unit, expr string) *stat.PanelBuilder {
	return stat.NewPanelBuilder().
		Id(b.nextID()).
		Title(title).
		Description(description).
		Datasource(datasource()).
		Span(4).
		Height(4).
		Unit(unit).
		Orientation(common.VizOrientationAuto).
		ColorMode(common.BigValueColorModeValue).
		GraphMode(common.BigValueGraphModeArea).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		Thresholds(thresholds(step(nil, "blue"))).
		WithTarget(query("A", expr, ""))
}

// healthRow adds the stats every dashboard starts with.
func (b *builder) healthRow() {
	b.row("Health")
	b.add(b.countStat("Agents down",
		"Scrape targets of job "+Job+" that did not answer the last scrape (up == 0).",
		`count(up{job="`+Job+`", `+sel+`} == 0) or vector(0)`))
	b.add(b.countStat("Nodes not ready",
		"Agents whose kernel leg is not up or whose pods were not plumbed yet (podgate_node_ready == 0): those nodes do not enforce.",
		`count(podgate_node_ready{`+sel+`} == 0) or vector(0)`))
	b.add(b.countStat("Policy sources not ready",
		"Agents that have not published a policy table, or whose last rebuild failed (podgate_source_ready == 0).",
		`count(podgate_source_ready{`+sel+`} == 0) or vector(0)`))
	b.add(b.countStat("Stale policy sources",
		"Agents whose view of the API may be out of date (podgate_source_stale == 1); they keep enforcing their last table.",
		`count(podgate_source_stale{`+sel+`} == 1) or vector(0)`))
	b.add(b.rateStat("Denied packets/s",
		"Frames dropped because a NetworkPolicy denied them, all selected nodes.",
		"pps",
		`sum(rate(podgate_dropped_packets_total{`+sel+`, `+denied+`}[$__rate_interval]))`))
	b.add(b.rateStat("Forwarded packets/s",
		"Frames the fastpaths sent, all paths, all selected nodes.",
		"pps",
		`sum(rate(podgate_forwarded_packets_total{`+sel+`}[$__rate_interval]))`))
}

func dropsDashboard() *dashboard.DashboardBuilder {
	b := newBuilder("podgate-drops", "podgate / drops",
		"Why the podgate fastpath drops packets: policy denials by pod and namespace, other drop reasons, AF_XDP ring drops, next to what it forwards, conntrack usage, policy update latency and agent health.",
		"networkpolicy", "drops")
	b.d.WithVariable(queryVariable(VarNamespace, "Namespace", `label_values(podgate_policy_denied_packets_total{node=~"$node"}, namespace)`))

	b.healthRow()

	b.row("Drops")
	b.add(b.graph("Drops by reason",
		"Frames dropped per second by reason (podgate_dropped_packets_total): denied_ingress/denied_egress are policy verdicts; the parser's reasons (truncated, bad_*) are malformed frames; spoofed_*, unknown_endpoint, tx_ring_full, too_big and the others are described in fastpath/counters.go.",
		"pps", 12, 9,
		query("A", queryDropsByReason, "{{reason}}")).
		Legend(legendTable()))
	b.add(b.graph("Denied packets by pod (top 10)",
		"Packets denied by a policy of a local pod, per isolated pod and direction (podgate_policy_denied_packets_total): ingress is counted for the destination pod, egress for the source pod.",
		"pps", 12, 9,
		query("A", queryDeniedByPod, "{{namespace}}/{{pod}} {{direction}}")).
		Legend(legendTable()))
	b.add(bargauge.NewPanelBuilder().
		Id(b.nextID()).
		Title("Top denied pods over the time range").
		Description("Packets denied per isolated pod and direction over the dashboard's time range.").
		Datasource(datasource()).
		Span(8).
		Height(9).
		Unit("short").
		Min(0).
		Orientation(common.VizOrientationHorizontal).
		DisplayMode(common.BarGaugeDisplayModeGradient).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
		Thresholds(thresholds(step(nil, "orange"))).
		WithTarget(instant("A", queryTopDeniedRange, "{{namespace}}/{{pod}} {{direction}}")))
	b.add(b.graph("Denied packets by namespace",
		"Packets denied per namespace of the isolated pod and direction.",
		"pps", 8, 9,
		query("A", queryDeniedByNamespace, "{{namespace}} {{direction}}")))
	b.add(text.NewPanelBuilder().
		Id(b.nextID()).
		Title("Per-flow detail: podgate flows").
		Span(8).
		Height(9).
		Mode(text.TextModeMarkdown).
		Content(flowsText))
	b.add(b.graph("Drops other than policy, by node and reason",
		"Malformed frames (the parser's reasons), spoofing, frames for unknown endpoints, full TX rings, oversized frames and the rest, per node: these should be rare.",
		"pps", 12, 8,
		query("A", queryOtherDrops, "{{node}} {{reason}}")))
	b.add(b.graph("Allowed new flows by policy (top 10)",
		"New flows per second that a policy's rules allowed on the selected nodes (podgate_policy_allowed_flows_total), by policy and direction.",
		"ops", 12, 8,
		query("A", queryAllowedByPolicy, "{{policy_namespace}}/{{policy}} {{direction}}")))
	b.add(b.graph("Denied packets by isolating policy (top 10)",
		"Packets denied per second while a policy isolated the denying pod (podgate_policy_isolation_denied_packets_total), by policy and direction. A denial counts for every policy that isolates the pod: no single policy denies, the union of their rules did not allow.",
		"pps", 12, 8,
		query("A", queryDeniedByPolicy, "{{policy_namespace}}/{{policy}} {{direction}}")))

	b.row("Forwarding")
	b.add(b.graph("Forwarded packets/s by path",
		"Frames the fastpath sent, by path: pod_to_pod (switched between two local pods), pod_to_kernel (out of the kernel leg), kernel_to_pod, reply (ARP/NDP answers).",
		"pps", 12, 8,
		query("A", queryForwardedPackets, "{{path}}")))
	b.add(b.graph("Forwarded throughput by path",
		"Bits per second of the frames the fastpath sent, by path.",
		"bps", 12, 8,
		query("A", queryForwardedBits, "{{path}}")))
	b.add(b.graph("Forwarded by the kernel on offloaded flows",
		"Packets per second the kernel forwarded on flows the fastpath allowed and offloaded (podgate_offload_forwarded_packets_total), by action: peer (into a local pod), kernel (left to the kernel's routing), redirect (from the kernel leg to a local pod); a GSO super-frame counts once. And the flows in the kernel's table (podgate_offloaded_flows).",
		"pps", 12, 8,
		query("A", `sum by (action) (rate(podgate_offload_forwarded_packets_total{`+sel+`}[$__rate_interval]))`, "{{action}}"),
		query("B", `sum by (node) (podgate_offloaded_flows{`+sel+`})`, "{{node}} offloaded flows")))
	b.add(b.graph("Punted to the fastpath by reason",
		"Frames of pods that the TC program sent to the fastpath instead of forwarding them (podgate_offload_punted_packets_total), by reason: miss (no offloaded flow: first packets), tcp_flags (SYN, FIN, RST), icmp, fragment, not_ip (ARP, NDP), lease (the agent's lease expired), spoof (a flow of another pod), and frames the TC program dropped (podgate_offload_dropped_packets_total: VLAN tags).",
		"pps", 12, 8,
		query("A", `sum by (reason) (rate(podgate_offload_punted_packets_total{`+sel+`}[$__rate_interval])) > 0`, "{{reason}}"),
		query("B", `sum by (reason) (rate(podgate_offload_dropped_packets_total{`+sel+`}[$__rate_interval])) > 0`, "dropped: {{reason}}")).
		NoValue("nothing punted"))

	b.row("Conntrack and AF_XDP")
	b.add(b.graph("Conntrack usage",
		"Connection-tracking entries over capacity per node (expired entries not yet reclaimed included). A full table evicts flows (podgate_conntrack_evictions_total), the ones that are not assured first, and refuses a pod's new flows once it holds its fair share; raise --conntrack-max.",
		"percentunit", 8, 8,
		query("A", queryConntrackUsage, "{{node}}")).
		Max(1).
		Thresholds(thresholds(step(nil, "green"), step(cog.ToPtr(0.9), "red"))).
		ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().Mode(common.GraphThresholdsStyleModeLine)))
	b.add(b.graph("Conntrack entries and evictions",
		"Entries and capacity per node; evictions per second by the evicted flows' state (podgate_conntrack_evictions_by_state_total: half-open, unreplied and closed flows go before established ones), and new flows refused because their pod held its fair share of a full table (podgate_conntrack_refusals_total).",
		"short", 8, 8,
		query("A", `sum by (node) (podgate_conntrack_entries{`+sel+`})`, "{{node}} entries"),
		query("B", `sum by (node) (podgate_conntrack_capacity{`+sel+`})`, "{{node}} capacity"),
		query("C", `sum by (node, state) (rate(podgate_conntrack_evictions_by_state_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} evicted {{state}}/s"),
		query("D", `sum by (node) (rate(podgate_conntrack_refusals_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} refused/s")))
	b.add(b.graph("AF_XDP ring drops",
		"Per port: frames the kernel could not deliver to the AF_XDP socket (podgate_xsk_rx_dropped_total: no fill frame, or too big), times the fill ring was empty when the kernel needed a frame, and transmits refused because the TX ring was full. Sustained values mean the fastpath does not keep up.",
		"pps", 8, 8,
		query("A", `sum by (node, interface) (rate(podgate_xsk_rx_dropped_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} {{interface}} rx dropped"),
		query("B", `sum by (node, interface) (rate(podgate_xsk_fill_ring_empty_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} {{interface}} fill ring empty"),
		query("C", `sum by (node, interface) (rate(podgate_xsk_tx_ring_full_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} {{interface}} tx ring full")).
		NoValue("no ring drops"))

	b.row("Policy updates")
	b.add(b.graph("Policy table rebuild latency",
		"Time from reading the policy inputs after a change to publishing the compiled table (podgate_table_rebuild_duration_seconds), quantiles over the rebuilds of the last 10 minutes on the selected nodes. No value: no rebuild in that window.",
		"s", 8, 8,
		query("A", `histogram_quantile(0.5, sum by (le) (rate(podgate_table_rebuild_duration_seconds_bucket{`+sel+`}[10m])))`, "p50"),
		query("B", `histogram_quantile(0.99, sum by (le) (rate(podgate_table_rebuild_duration_seconds_bucket{`+sel+`}[10m])))`, "p99"),
		query("C", `max(podgate_source_last_rebuild_duration_seconds{`+sel+`})`, "last rebuild (max over nodes)")))
	b.add(b.graph("Time since last table publish",
		"Seconds since each agent last published a policy table. Growing is normal when nothing changes; it matters when the source is stale or not ready.",
		"s", 8, 8,
		query("A", `time() - max by (node) (podgate_source_last_publish_timestamp_seconds{`+sel+`} > 0)`, "{{node}}")))
	b.add(b.graph("Policy table generation and rebuild failures",
		"Generation of the table each fastpath uses, and failed rebuilds (invalid input: the last table stays).",
		"short", 8, 8,
		query("A", `max by (node) (podgate_table_generation{`+sel+`})`, "{{node}} generation"),
		query("B", `sum by (node) (increase(podgate_source_rebuild_failures_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} failed rebuilds")))

	b.row("Agent health")
	b.add(healthTimeline(b))
	return b.d
}

// healthTimeline shows up, node_ready, source_ready and source freshness
// per node as coloured states.
func healthTimeline(b *builder) *statetimeline.PanelBuilder {
	ok := dashboard.ValueMap{
		Type: dashboard.MappingTypeValueToText,
		Options: map[string]dashboard.ValueMappingResult{
			"0": {Text: cog.ToPtr("not ok"), Color: cog.ToPtr("red"), Index: cog.ToPtr[int32](0)},
			"1": {Text: cog.ToPtr("ok"), Color: cog.ToPtr("green"), Index: cog.ToPtr[int32](1)},
		},
	}
	return statetimeline.NewPanelBuilder().
		Id(b.nextID()).
		Title("Agent health by node").
		Description("up (scraped), node ready (kernel leg up, pods plumbed), source ready (a table was published and the last rebuild succeeded) and source fresh (not stale: the API view is current).").
		Datasource(datasource()).
		Span(24).
		Height(8).
		ShowValue(common.VisibilityModeNever).
		MergeValues(true).
		Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeSingle).Sort(common.SortOrderNone)).
		Mappings([]dashboard.ValueMapping{{ValueMap: &ok}}).
		Thresholds(thresholds(step(nil, "red"), step(cog.ToPtr(1.0), "green"))).
		WithTarget(query("A", `max by (node) (up{job="`+Job+`", `+sel+`})`, "{{node}} up")).
		WithTarget(query("B", `max by (node) (podgate_node_ready{`+sel+`})`, "{{node}} node ready")).
		WithTarget(query("C", `max by (node) (podgate_source_ready{`+sel+`})`, "{{node}} source ready")).
		WithTarget(query("D", `1 - max by (node) (podgate_source_stale{`+sel+`})`, "{{node}} source fresh"))
}

func overviewDashboard() *dashboard.DashboardBuilder {
	b := newBuilder("podgate-overview", "podgate / overview",
		"One line per node: traffic, drops, conntrack, AF_XDP health and policy table size. The drops dashboard (podgate-drops) has the detail.",
		"networkpolicy")
	b.healthRow()

	b.row("Per node")
	b.add(b.graph("Received packets/s by node",
		"Frames the fastpath received from all ports (pods and kernel leg).",
		"pps", 8, 8,
		query("A", `sum by (node) (rate(podgate_received_packets_total{`+sel+`}[$__rate_interval]))`, "{{node}}")))
	b.add(b.graph("Dropped packets/s by node",
		"All drop reasons, per node.",
		"pps", 8, 8,
		query("A", `sum by (node) (rate(podgate_dropped_packets_total{`+sel+`}[$__rate_interval]))`, "{{node}}")))
	b.add(b.graph("New flows/s by node",
		"Flows judged allowed and tracked, and established flows cut because a new policy table denies them.",
		"ops", 8, 8,
		query("A", `sum by (node) (rate(podgate_flows_new_total{`+sel+`}[$__rate_interval]))`, "{{node}} new"),
		query("B", `sum by (node) (rate(podgate_flows_cut_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} cut")))
	b.add(b.graph("Port throughput by node and direction",
		"Bits per second over all AF_XDP ports of a node: rx from the interfaces, tx to them.",
		"bps", 12, 8,
		query("A", `8 * sum by (node, direction) (rate(podgate_port_bytes_total{`+sel+`}[$__rate_interval]))`, "{{node}} {{direction}}")))
	b.add(b.graph("AF_XDP alloc failures and kick errors",
		"Times the fastpath found no free frame on a port, and TX wakeups that failed or left frames behind.",
		"ops", 12, 8,
		query("A", `sum by (node) (rate(podgate_xsk_alloc_failures_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} alloc failures"),
		query("B", `sum by (node) (rate(podgate_xsk_kick_errors_total{`+sel+`}[$__rate_interval])) > 0`, "{{node}} kick errors")).
		NoValue("none"))
	b.add(b.graph("Policy table size",
		"NetworkPolicies, endpoints (pods with an address, cluster-wide) and compiled rules in each node's table.",
		"short", 12, 8,
		query("A", `max by (node) (podgate_table_policies{`+sel+`})`, "{{node}} policies"),
		query("B", `max by (node) (podgate_table_endpoints{`+sel+`})`, "{{node}} endpoints"),
		query("C", `max by (node) (podgate_table_rules{`+sel+`})`, "{{node}} rules")))
	b.add(b.graph("AF_XDP ports by node",
		"Ports the fastpath serves: one per local pod, and the kernel leg.",
		"short", 12, 8,
		query("A", `sum by (node, kind) (podgate_ports{`+sel+`})`, "{{node}} {{kind}}")))
	b.add(b.graph("Agent memory",
		"Resident memory of the agent process and the Go heap in use (UMEM frames are part of RSS).",
		"bytes", 24, 8,
		query("A", `max by (node) (process_resident_memory_bytes{job="`+Job+`", `+sel+`})`, "{{node}} RSS"),
		query("B", `max by (node) (go_memstats_heap_inuse_bytes{job="`+Job+`", `+sel+`})`, "{{node}} Go heap in use")))
	return b.d
}
