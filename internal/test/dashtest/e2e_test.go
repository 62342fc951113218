//lint:file-ignore SA1019 the classic dashboard JSON model (package dashboard) imports into every Grafana version; the SDK deprecates it for dashboardv2, which needs Grafana 12 and its v2 API

package dashtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/podgate/podgate/deploy/grafana"
)

// Traffic of the end-to-end run: rounds of one second; allowed connections
// a→b:8080 in every round, denied SYNs a→b:9090 (ingress at b) from
// spikeFrom on and a→c:8080 (egress at a) from egressFrom on; the extra
// policy is added in round policyAt.
const (
	rounds         = 20
	allowedPerRnd  = 15
	deniedIngress  = 150
	deniedEgress   = 20
	spikeFrom      = 6
	egressFrom     = 3
	policyAt       = 10
	rateWindow     = "10s" // $__rate_interval for a 1 s scrape interval
	plotRateWindow = "4s"
)

// TestEndToEnd runs the agent in a netns lab and a real Prometheus beside
// it, sends traffic, and checks the metrics, the dashboards' queries and
// the alerts against what was sent. See the package documentation.
func TestEndToEnd(t *testing.T) {
	requireRoot(t)
	l := newLab(t)
	defs := loadQueries(t)

	t.Run("agent metrics", func(t *testing.T) {
		// Some series only exist once they counted something (allowed
		// flows per policy): send a little traffic first.
		if n := l.connect(l.b, allowedPort, 3); n != 3 {
			t.Fatalf("%d of 3 allowed connections a→b:%d succeeded", n, allowedPort)
		}
		b, err := l.get("http://" + agentAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		checkMetricNames(t, b, defs)
	})

	promBin := lookTool(t, "prometheus")
	start := l.startPrometheus(t, promBin)
	t.Logf("prometheus scrapes the agent %.1fs after it started", time.Since(start).Seconds())

	trafficStart := time.Now()
	sentIngress, sentEgress, okAllowed := 0, 0, 0
	for r := range rounds {
		next := time.Now().Add(time.Second)
		okAllowed += l.connect(l.b, allowedPort, allowedPerRnd)
		if r >= spikeFrom {
			if err := l.syns(l.b, deniedPort, deniedIngress); err != nil {
				t.Fatal(err)
			}
			sentIngress += deniedIngress
		}
		if r >= egressFrom {
			if err := l.syns(l.c, allowedPort, deniedEgress); err != nil {
				t.Fatal(err)
			}
			sentEgress += deniedEgress
		}
		if r == policyAt {
			if err := l.addPolicy(); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.agentAlive(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(next))
	}
	if okAllowed != rounds*allowedPerRnd {
		t.Errorf("%d of %d allowed connections succeeded", okAllowed, rounds*allowedPerRnd)
	}
	// Two more scrapes and rule evaluations.
	time.Sleep(2500 * time.Millisecond)
	now := time.Now()
	t.Logf("traffic: %d allowed connections, %d SYNs denied at b's ingress, %d at a's egress, %.1fs",
		okAllowed, sentIngress, sentEgress, now.Sub(trafficStart).Seconds())

	vars := map[string]string{
		"node":            nodeName,
		"namespace":       "(x|z)",
		"datasource":      "prometheus",
		"__rate_interval": rateWindow,
		"__interval":      "1s",
		"__range":         fmt.Sprintf("%ds", int(now.Sub(trafficStart).Seconds())+5),
	}

	t.Run("every query runs", func(t *testing.T) {
		for _, q := range defs.all() {
			expr, err := substitute(q.Expr, vars)
			if err != nil {
				t.Errorf("%s: %v", q.Where, err)
				continue
			}
			if _, err := l.query(expr, now); err != nil {
				t.Errorf("%s: %v", q.Where, err)
			}
		}
	})

	t.Run("drops dashboard", func(t *testing.T) {
		d := dropsPanels{t: t, l: l, defs: defs, vars: vars, at: now}
		d.expect("Drops by reason", "A", map[string]string{"reason": "denied_ingress"}, positive)
		d.expect("Drops by reason", "A", map[string]string{"reason": "denied_egress"}, positive)
		// 150 SYNs a second at b's ingress, 20 at a's egress.
		d.expect("Denied packets by pod (top 10)", "A", map[string]string{"namespace": "x", "pod": "b", "direction": "ingress"}, between(20, 400))
		d.expect("Denied packets by pod (top 10)", "A", map[string]string{"namespace": "x", "pod": "a", "direction": "egress"}, between(2, 60))
		d.expectNone("Denied packets by pod (top 10)", "A", map[string]string{"pod": "c"})
		d.expect("Denied packets by namespace", "A", map[string]string{"namespace": "x", "direction": "ingress"}, positive)
		d.expectNone("Denied packets by namespace", "A", map[string]string{"namespace": "z"})
		d.expect("Top denied pods over the time range", "A", map[string]string{"namespace": "x", "pod": "b", "direction": "ingress"},
			between(0.8*float64(sentIngress), 1.3*float64(sentIngress)))
		d.expect("Allowed new flows by policy (top 10)", "A", map[string]string{"policy_namespace": "x", "policy": "b-from-a-8080", "direction": "ingress"}, positive)
		d.expect("Allowed new flows by policy (top 10)", "A", map[string]string{"policy_namespace": "x", "policy": "a-egress-own-namespace", "direction": "egress"}, positive)
		d.expect("Forwarded packets/s by path", "A", map[string]string{"path": "pod_to_pod"}, positive)
		d.expect("Forwarded throughput by path", "A", map[string]string{"path": "pod_to_pod"}, positive)
		d.expect("Conntrack usage", "A", map[string]string{"node": nodeName}, between(0.001, 1))
		d.expect("Conntrack entries and evictions", "B", map[string]string{"node": nodeName}, between(1024, 1024))
		d.expect("Policy table rebuild latency", "B", nil, between(1e-6, 2.5))
		d.expect("Time since last table publish", "A", map[string]string{"node": nodeName}, between(0, 30))
		d.expect("Policy table generation and rebuild failures", "A", map[string]string{"node": nodeName}, between(2, 100))
		for _, title := range []string{"Agents down", "Nodes not ready", "Policy sources not ready", "Stale policy sources"} {
			d.expect(title, "A", nil, between(0, 0))
		}
		d.expect("Denied packets/s", "A", nil, positive)
		for _, ref := range []string{"A", "B", "C", "D"} {
			d.expect("Agent health by node", ref, map[string]string{"node": nodeName}, between(1, 1))
		}
		d.log("Drops other than policy, by node and reason", "A")
		d.log("AF_XDP ring drops", "A")
		d.log("AF_XDP ring drops", "B")

		// The $namespace variable's options.
		sel, label, err := splitLabelValues(templateQueries(defs.drops)["namespace"])
		if err != nil {
			t.Fatal(err)
		}
		sel, err = substitute(sel, vars)
		if err != nil {
			t.Fatal(err)
		}
		data, err := l.promAPI("/api/v1/label/"+label+"/values", url.Values{"match[]": {sel}})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte(`"x"`)) || !bytes.Contains(data, []byte(`"z"`)) {
			t.Errorf("$namespace options %s, want x and z", data)
		}
	})

	t.Run("alerts", func(t *testing.T) {
		spike := map[string]string{"alertname": "PodgatePolicyDenialSpike", "namespace": "x", "pod": "b", "direction": "ingress"}
		for _, q := range defs.rules {
			if q.Name != "PodgatePolicyDenialSpike" {
				continue
			}
			rs, err := l.query(q.Expr, now)
			if err != nil {
				t.Fatal(err)
			}
			if !hasSeries(rs, map[string]string{"namespace": "x", "pod": "b", "direction": "ingress"}) {
				t.Errorf("%s evaluates to %v, want x/b ingress", q.Name, rs)
			}
		}
		data, err := l.promAPI("/api/v1/alerts", nil)
		if err != nil {
			t.Fatal(err)
		}
		var alerts struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
				Value  string            `json:"value"`
			} `json:"alerts"`
		}
		if err := json.Unmarshal(data, &alerts); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range alerts.Alerts {
			t.Logf("alert %s %v (%s) = %s", a.State, a.Labels, a.Labels["alertname"], a.Value)
			if matches(a.Labels, spike) && (a.State == "pending" || a.State == "firing") {
				found = true
			}
			switch a.Labels["alertname"] {
			case "PodgateAgentDown", "PodgateNodeNotReady", "PodgatePolicyTableNotPublished",
				"PodgatePolicyRebuildsFailing", "PodgatePolicyTableStale", "PodgateAgentsAbsent":
				t.Errorf("%s is %s on a healthy agent", a.Labels["alertname"], a.State)
			}
		}
		if !found {
			t.Errorf("no pending or firing %v", spike)
		}
	})

	if path := os.Getenv("PODGATE_WRITE_PNG"); path != "" {
		t.Run("png", func(t *testing.T) {
			if !filepath.IsAbs(path) {
				t.Fatalf("PODGATE_WRITE_PNG=%s: want an absolute path", path)
			}
			plotVars := maps.Clone(vars)
			plotVars["__rate_interval"] = plotRateWindow
			if err := l.writePNG(path, defs, plotVars, trafficStart, now); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", path)
		})
	}
}

// startPrometheus runs Prometheus in the node namespace with the podgate
// job of deploy/prometheus/prometheus.yml, its Kubernetes discovery
// replaced by a static target that carries the labels Kubernetes discovery
// would give the agent's pod (so the job's relabeling runs as in a
// cluster), a 1 s scrape and evaluation interval, and the alert rules. It
// returns when the agent's target is up.
func (l *lab) startPrometheus(t *testing.T, bin string) time.Time {
	t.Helper()
	dir := filepath.Join(l.tmp, "prometheus")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := prometheusConfig(t)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "podgate-rules.yml"), rulesFile(t), 0o644); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	alive := l.start(t, "prometheus", filepath.Join(dir, "prometheus.log"), bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--storage.tsdb.retention.time=1h",
	)
	if err := l.waitHTTP("http://"+promAddr+"/-/ready", 60*time.Second, alive); err != nil {
		t.Fatalf("prometheus not ready: %v\n%s", err, tail(filepath.Join(dir, "prometheus.log")))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rs, err := l.query(`up{job="`+grafana.Job+`", node="`+nodeName+`"} == 1`, time.Now())
		if err == nil && len(rs) == 1 {
			return begin
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus does not scrape the agent: %v %v\n%s", rs, err, tail(filepath.Join(dir, "prometheus.log")))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// prometheusConfig derives the test's configuration from
// deploy/prometheus/prometheus.yml.
func prometheusConfig(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(prometheusDir, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["global"] = map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
	jobs, _ := cfg["scrape_configs"].([]any)
	var job map[string]any
	for _, j := range jobs {
		if m, ok := j.(map[string]any); ok && m["job_name"] == grafana.Job {
			job = m
		}
	}
	if job == nil {
		t.Fatalf("prometheus.yml has no job %s", grafana.Job)
	}
	delete(job, "kubernetes_sd_configs")
	// What Kubernetes discovery (role pod) reports for the agent's pod
	// with the DaemonSet's template, hostNetwork: pod IP = node IP.
	targets := podTargets(loadDaemonSet(t), "podgate-"+nodeName, nodeName, netip.MustParseAddr("127.0.0.1"))
	var static []any
	for _, tg := range targets {
		lbls := map[string]any{}
		for k, v := range tg {
			if k != model.AddressLabel {
				lbls[k] = v
			}
		}
		static = append(static, map[string]any{"targets": []any{tg[model.AddressLabel]}, "labels": lbls})
	}
	job["static_configs"] = static
	cfg["scrape_configs"] = []any{job}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// queryDef is a query of a dashboard panel, a template variable or a rule.
type queryDef struct {
	Where string // for messages
	Name  string // panel title or rule name
	RefID string
	Expr  string
}

// queryDefs are all the queries of the committed dashboards and the rules.
type queryDefs struct {
	drops  dashboard.Dashboard
	panels []queryDef // every dashboard's panels
	vars   []queryDef // label_values selectors
	rules  []queryDef
}

func (d queryDefs) all() []queryDef {
	return slices.Concat(d.panels, d.vars, d.rules)
}

// panel returns the query of a drops dashboard panel.
func (d queryDefs) panel(title, ref string) (string, bool) {
	for _, q := range d.panels {
		if q.Where == "podgate-drops.json" && q.Name == title && q.RefID == ref {
			return q.Expr, true
		}
	}
	return "", false
}

func loadQueries(t *testing.T) queryDefs {
	t.Helper()
	var defs queryDefs
	for _, name := range sortedKeys(committedDashboards(t)) {
		d, err := loadDashboard(committedDashboards(t)[name])
		if err != nil {
			t.Fatal(err)
		}
		if name == "podgate-drops.json" {
			defs.drops = d
		}
		qs, err := queries(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			defs.panels = append(defs.panels, queryDef{Where: name, Name: q.Panel, RefID: q.RefID, Expr: q.Expr})
		}
		for v, q := range templateQueries(d) {
			sel, _, err := splitLabelValues(q)
			if err != nil {
				t.Fatal(err)
			}
			defs.vars = append(defs.vars, queryDef{Where: name + " $" + v, Name: v, Expr: sel})
		}
	}
	for _, g := range ruleGroups(t).Groups {
		for _, r := range g.Rules {
			defs.rules = append(defs.rules, queryDef{Where: "rule " + r.Alert + r.Record, Name: r.Alert + r.Record, Expr: r.Expr})
		}
	}
	return defs
}

// targetLabels are the labels the scrape configuration adds to every series.
var targetLabels = []string{"job", "instance", "node", "agent_pod"}

// checkMetricNames checks that every metric the queries select is in the
// agent's /metrics (histograms' _bucket, _sum and _count and Prometheus'
// own up included) and that every label they match on is one the metric
// has or the scrape adds.
func checkMetricNames(t *testing.T, exposition []byte, defs queryDefs) {
	t.Helper()
	tp := expfmt.NewTextParser(model.LegacyValidation)
	families, err := tp.TextToMetricFamilies(bytes.NewReader(exposition))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	known := map[string][]string{"up": nil} // metric name → its labels
	for name, f := range families {
		var lbls []string
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(lbls, lp.GetName()) {
					lbls = append(lbls, lp.GetName())
				}
			}
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			known[name+"_bucket"] = append(slices.Clone(lbls), "le")
			known[name+"_sum"] = lbls
			known[name+"_count"] = lbls
		case dto.MetricType_SUMMARY:
			known[name] = append(slices.Clone(lbls), "quantile")
			known[name+"_sum"] = lbls
			known[name+"_count"] = lbls
		default:
			known[name] = lbls
		}
	}
	vars := grafanaBuiltins()
	for _, v := range []string{grafana.VarNode, grafana.VarNamespace, grafana.VarDatasource} {
		vars[v] = "dummy"
	}
	used := map[string]bool{}
	for _, q := range defs.all() {
		uses, err := parsedSelectors(q.Expr, vars)
		if err != nil {
			t.Errorf("%s %s: %v", q.Where, q.Name, err)
			continue
		}
		for _, u := range uses {
			used[u.Metric] = true
			lbls, ok := known[u.Metric]
			if !ok {
				t.Errorf("%s %q uses %s, which the agent does not export", q.Where, q.Name, u.Metric)
				continue
			}
			for _, l := range u.Labels {
				if !slices.Contains(lbls, l) && !slices.Contains(targetLabels, l) {
					t.Errorf("%s %q matches %s on label %q; it has %q", q.Where, q.Name, u.Metric, l, lbls)
				}
			}
		}
	}
	t.Logf("the queries use %d of the agent's %d metric families", len(used), len(families))
}

// positive accepts any value > 0.
func positive(v float64) error {
	if v > 0 && !math.IsInf(v, 0) {
		return nil
	}
	return fmt.Errorf("%v, want > 0", v)
}

// between accepts values in [lo, hi].
func between(lo, hi float64) func(float64) error {
	return func(v float64) error {
		if v >= lo && v <= hi {
			return nil
		}
		return fmt.Errorf("%v, want in [%v, %v]", v, lo, hi)
	}
}

// dropsPanels evaluates queries of the drops dashboard.
type dropsPanels struct {
	t    *testing.T
	l    *lab
	defs queryDefs
	vars map[string]string
	at   time.Time
}

func (d dropsPanels) eval(title, ref string) []promResult {
	d.t.Helper()
	expr, ok := d.defs.panel(title, ref)
	if !ok {
		d.t.Fatalf("the drops dashboard has no panel %q with query %s", title, ref)
	}
	expr, err := substitute(expr, d.vars)
	if err != nil {
		d.t.Fatal(err)
	}
	rs, err := d.l.query(expr, d.at)
	if err != nil {
		d.t.Fatalf("%q: %v", title, err)
	}
	return rs
}

// expect checks that the panel's query has a series with the given labels
// whose value check accepts.
func (d dropsPanels) expect(title, ref string, want map[string]string, check func(float64) error) {
	d.t.Helper()
	rs := d.eval(title, ref)
	for _, r := range rs {
		if matches(r.Metric, want) {
			if err := check(r.Float()); err != nil {
				d.t.Errorf("%q %s %v: %v", title, ref, want, err)
			}
			return
		}
	}
	d.t.Errorf("%q %s: no series %v in %v", title, ref, want, rs)
}

// expectNone checks that the query has no series with the given labels.
func (d dropsPanels) expectNone(title, ref string, labels map[string]string) {
	d.t.Helper()
	if rs := d.eval(title, ref); hasSeries(rs, labels) {
		d.t.Errorf("%q %s: unexpected series %v in %v", title, ref, labels, rs)
	}
}

// log records a query's result.
func (d dropsPanels) log(title, ref string) {
	d.t.Helper()
	d.t.Logf("%q %s: %v", title, ref, d.eval(title, ref))
}

func matches(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func hasSeries(rs []promResult, want map[string]string) bool {
	for _, r := range rs {
		if matches(r.Metric, want) {
			return true
		}
	}
	return false
}
