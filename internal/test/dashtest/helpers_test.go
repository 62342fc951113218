//lint:file-ignore SA1019 the classic dashboard JSON model (package dashboard) imports into every Grafana version; the SDK deprecates it for dashboardv2, which needs Grafana 12 and its v2 API

package dashtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	sdkprom "github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// Paths relative to this package's directory (go test runs there).
const (
	repoRoot      = "../../.."
	grafanaDir    = repoRoot + "/deploy/grafana"
	prometheusDir = repoRoot + "/deploy/prometheus"
	daemonSetFile = repoRoot + "/deploy/daemonset.yaml"
)

// requireEnv makes the tests that need prometheus fail instead of skip.
const requireEnv = "PODGATE_REQUIRE_PROMETHEUS"

// lookTool returns the path of a Prometheus binary (prometheus, promtool).
// Without it the test is skipped, or fails when PODGATE_REQUIRE_PROMETHEUS=1.
func lookTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(requireEnv) == "1" {
		tb.Fatalf("%s=1 but %s is not installed (apt-get install prometheus): %v", requireEnv, name, err)
	}
	tb.Skipf("%s is not installed (apt-get install prometheus; %s=1 makes this a failure)", name, requireEnv)
	return ""
}

// committedDashboards reads every *.json file in deploy/grafana.
func committedDashboards(tb testing.TB) map[string][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join(grafanaDir, "*.json"))
	if err != nil {
		tb.Fatal(err)
	}
	if len(paths) == 0 {
		tb.Fatalf("no dashboards in %s", grafanaDir)
	}
	out := make(map[string][]byte, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// strictErr turns the result of the SDK's UnmarshalJSONStrict into a plain
// error: the SDK returns its error list (cog.BuildErrors) as an error even
// when the list is empty, so success is a non-nil error whose list is
// empty.
func strictErr(err error) error {
	var list cog.BuildErrors
	if err == nil || errors.As(err, &list) && len(list) == 0 {
		return nil
	}
	return err
}

// loadDashboard decodes a dashboard leniently, with the SDK's panel and
// query types registered, so that targets come out as prometheus
// dataqueries.
func loadDashboard(raw []byte) (dashboard.Dashboard, error) {
	plugins.RegisterDefaultPlugins()
	var d dashboard.Dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("decode dashboard: %w", err)
	}
	return d, nil
}

// panelQuery is one query of one panel.
type panelQuery struct {
	Panel   string // title
	Type    string // panel type
	RefID   string
	Expr    string
	Instant bool
}

// panels returns every panel of d, those inside rows included.
func panels(d dashboard.Dashboard) []dashboard.Panel {
	var out []dashboard.Panel
	for _, p := range d.Panels {
		if p.Panel != nil {
			out = append(out, *p.Panel)
		}
		if p.RowPanel != nil {
			out = append(out, p.RowPanel.Panels...)
		}
	}
	return out
}

// queries returns the Prometheus queries of every panel of d.
func queries(d dashboard.Dashboard) ([]panelQuery, error) {
	var out []panelQuery
	for _, p := range panels(d) {
		title := ""
		if p.Title != nil {
			title = *p.Title
		}
		for i, t := range p.Targets {
			q, ok := t.(*sdkprom.Dataquery)
			if !ok {
				return nil, fmt.Errorf("panel %q target %d: %T, want a prometheus dataquery", title, i, t)
			}
			pq := panelQuery{Panel: title, Type: p.Type, Expr: q.Expr}
			if q.RefId != nil {
				pq.RefID = *q.RefId
			}
			if q.Instant != nil {
				pq.Instant = *q.Instant
			}
			out = append(out, pq)
		}
	}
	return out, nil
}

// templateQueries returns the label_values queries of d's query variables
// by variable name.
func templateQueries(d dashboard.Dashboard) map[string]string {
	out := map[string]string{}
	for _, v := range d.Templating.List {
		if v.Type != "query" || v.Query == nil || v.Query.String == nil {
			continue
		}
		out[v.Name] = *v.Query.String
	}
	return out
}

// variableNames returns the names of d's template variables.
func variableNames(d dashboard.Dashboard) []string {
	var out []string
	for _, v := range d.Templating.List {
		out = append(out, v.Name)
	}
	return out
}

// labelValuesRE matches Grafana's label_values(SELECTOR, LABEL).
var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// splitLabelValues returns the selector and label of a label_values query.
func splitLabelValues(q string) (selector, label string, err error) {
	m := labelValuesRE.FindStringSubmatch(strings.TrimSpace(q))
	if m == nil {
		return "", "", fmt.Errorf("%q is not label_values(SELECTOR, LABEL)", q)
	}
	return m[1], m[2], nil
}

// grafanaVarRE matches $name, ${name} and [[name]] references.
var grafanaVarRE = regexp.MustCompile(`\$\{([a-zA-Z0-9_]+)(?::[a-z]+)?\}|\$([a-zA-Z0-9_]+)|\[\[([a-zA-Z0-9_]+)\]\]`)

// substitute replaces the template variables in expr with values[name].
// It fails on a variable that values does not have, so that a query using
// an undefined variable is caught.
func substitute(expr string, values map[string]string) (string, error) {
	var missing []string
	out := grafanaVarRE.ReplaceAllStringFunc(expr, func(m string) string {
		sub := grafanaVarRE.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		v, ok := values[name]
		if !ok {
			missing = append(missing, name)
			return m
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("undefined variables %q in %q", missing, expr)
	}
	return out, nil
}

// grafanaBuiltins are Grafana's global variables with values that parse.
func grafanaBuiltins() map[string]string {
	return map[string]string{
		"__rate_interval": "1m",
		"__interval":      "1m",
		"__range":         "1h",
	}
}

// parseExpr parses a PromQL expression with the default options.
func parseExpr(expr string) (parser.Expr, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	return e, nil
}

// selectorUse is a metric a query selects and the labels it matches on.
type selectorUse struct {
	Metric string
	Labels []string // matcher label names, __name__ excluded
}

// selectors returns the metrics e selects (vector selectors, inside range
// selectors too) with the labels each selector matches on.
func selectors(e parser.Expr) ([]selectorUse, error) {
	var out []selectorUse
	var errs []error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		u := selectorUse{Metric: vs.Name}
		for _, m := range vs.LabelMatchers {
			if m.Name == "__name__" {
				if u.Metric == "" {
					u.Metric = m.Value
				}
				continue
			}
			u.Labels = append(u.Labels, m.Name)
		}
		if u.Metric == "" {
			errs = append(errs, fmt.Errorf("selector %s has no metric name", vs))
		}
		out = append(out, u)
		return nil
	})
	return out, errors.Join(errs...)
}

// rulesFile returns the rule groups of deploy/prometheus/prometheusrule.yaml
// as a plain Prometheus rules file (the PrometheusRule's spec).
func rulesFile(tb testing.TB) []byte {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(prometheusDir, "prometheusrule.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	var pr struct {
		APIVersion string    `yaml:"apiVersion"`
		Kind       string    `yaml:"kind"`
		Metadata   yaml.Node `yaml:"metadata"`
		Spec       yaml.Node `yaml:"spec"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&pr); err != nil {
		tb.Fatalf("decode prometheusrule.yaml: %v", err)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		tb.Fatalf("prometheusrule.yaml is a %s %s", pr.APIVersion, pr.Kind)
	}
	out, err := yaml.Marshal(&pr.Spec)
	if err != nil {
		tb.Fatalf("encode rules: %v", err)
	}
	return out
}

// ruleGroups parses the rules strictly, as Prometheus does on load.
func ruleGroups(tb testing.TB) *rulefmt.RuleGroups {
	tb.Helper()
	// Legacy names: the Prometheus that CI runs (Debian's 2.42) has no
	// UTF-8 names.
	groups, errs := rulefmt.Parse(rulesFile(tb), false, model.LegacyValidation,
		parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		tb.Fatalf("rules do not load: %v", errors.Join(errs...))
	}
	return groups
}

// contains reports whether s is in list.
func contains(list []string, s string) bool { return slices.Contains(list, s) }
