//lint:file-ignore SA1019 the classic dashboard JSON model (package dashboard) imports into every Grafana version; the SDK deprecates it for dashboardv2, which needs Grafana 12 and its v2 API

package dashtest

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"

	"github.com/podgate/podgate/deploy/grafana"
)

// TestDashboardsUpToDate fails when a committed dashboard differs from the
// generator's output (run `make dashboards`), or when deploy/grafana holds
// a JSON file the generator does not make.
func TestDashboardsUpToDate(t *testing.T) {
	want, err := grafana.Render()
	if err != nil {
		t.Fatal(err)
	}
	got := committedDashboards(t)
	if diff := cmp.Diff(sortedKeys(want), sortedKeys(got)); diff != "" {
		t.Errorf("dashboard files (-generated +committed):\n%s\nrun `make dashboards`", diff)
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			continue
		}
		if diff := cmp.Diff(string(w), string(g)); diff != "" {
			t.Errorf("%s is not the generator's output (-generated +committed):\n%s\nrun `make dashboards`", name, diff)
		}
	}
}

// TestDashboardsStrict decodes every committed dashboard with the SDK's
// strict decoder (unknown fields, wrong types and missing required fields
// are errors, in the panels' options and the Prometheus queries too) and
// validates it.
func TestDashboardsStrict(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	for _, name := range sortedKeys(committedDashboards(t)) {
		raw := committedDashboards(t)[name]
		t.Run(name, func(t *testing.T) {
			var strict dashboard.Dashboard
			if err := strictErr(strict.UnmarshalJSONStrict(raw)); err != nil {
				t.Fatalf("strict decode:\n%v", err)
			}
			// The strict decoder drops what it decoded through a plugin
			// (targets, options) when that plugin's own strict decoder
			// succeeds, so validate the leniently decoded dashboard,
			// which has them, too.
			if err := strict.Validate(); err != nil {
				t.Errorf("validate (strict decode): %v", err)
			}
			d, err := loadDashboard(raw)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Validate(); err != nil {
				t.Errorf("validate: %v", err)
			}
			checkLayout(t, d)
		})
	}
}

// TestStrictDecodeCatchesMistakes makes sure the strict check is not
// vacuous: an unknown field in a panel's options, in a Prometheus query
// or at the top level must be reported.
func TestStrictDecodeCatchesMistakes(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	raw := committedDashboards(t)["podgate-drops.json"]
	if raw == nil {
		t.Fatal("no podgate-drops.json")
	}
	for _, tt := range []struct {
		name, old, new string
	}{
		{"top level", `"editable": true,`, `"editable": true, "editabel": true,`},
		{"query", `"refId": "A"`, `"refId": "A", "exprr": "up"`},
		{"panel options", `"graphMode": "none",`, `"graphMode": "none", "graphModes": "none",`},
		{"wrong type", `"refresh": "30s",`, `"refresh": 30,`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Contains(raw, []byte(tt.old)) {
				t.Fatalf("dashboard has no %q", tt.old)
			}
			broken := bytes.Replace(raw, []byte(tt.old), []byte(tt.new), 1)
			var d dashboard.Dashboard
			err := strictErr(d.UnmarshalJSONStrict(broken))
			if err == nil {
				t.Fatalf("strict decode accepted %s", tt.new)
			}
			t.Logf("strict decode: %v", err)
		})
	}
}

// checkLayout checks what Grafana does not: unique panel ids, panels
// inside the 24-column grid, every query on the $datasource variable.
func checkLayout(t *testing.T, d dashboard.Dashboard) {
	t.Helper()
	ids := map[uint32]string{}
	record := func(id *uint32, title string) {
		if id == nil {
			t.Errorf("panel %q has no id", title)
			return
		}
		if other, ok := ids[*id]; ok {
			t.Errorf("panels %q and %q share id %d", other, title, *id)
		}
		ids[*id] = title
	}
	for _, p := range d.Panels {
		if p.RowPanel != nil {
			record(cogID(p.RowPanel.Id), "row "+deref(p.RowPanel.Title))
		}
	}
	for _, p := range panels(d) {
		title := ""
		if p.Title != nil {
			title = *p.Title
		}
		record(p.Id, title)
		if p.GridPos == nil || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %q: grid position %+v outside the grid", title, p.GridPos)
		}
		if p.Type == "text" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", title)
		}
		if p.Datasource == nil || p.Datasource.Uid == nil || *p.Datasource.Uid != "${"+grafana.VarDatasource+"}" {
			t.Errorf("panel %q: data source %+v, want the $%s variable", title, p.Datasource, grafana.VarDatasource)
		}
	}
	if d.Uid == nil || !strings.HasPrefix(*d.Uid, "podgate-") {
		t.Errorf("uid %v, want podgate-*", d.Uid)
	}
}

func cogID(id uint32) *uint32 { return &id }

// TestDashboardQueriesParse parses every panel query and every template
// variable query with the PromQL parser, after replacing the variables
// with dummy values (an undefined variable is an error).
func TestDashboardQueriesParse(t *testing.T) {
	for name, raw := range committedDashboards(t) {
		t.Run(name, func(t *testing.T) {
			d, err := loadDashboard(raw)
			if err != nil {
				t.Fatal(err)
			}
			values := grafanaBuiltins()
			for _, v := range variableNames(d) {
				values[v] = "dummy"
			}
			qs, err := queries(d)
			if err != nil {
				t.Fatal(err)
			}
			if len(qs) == 0 {
				t.Fatal("no queries")
			}
			for _, q := range qs {
				if _, err := parsedSelectors(q.Expr, values); err != nil {
					t.Errorf("panel %q %s: %v", q.Panel, q.RefID, err)
				}
			}
			for v, q := range templateQueries(d) {
				sel, _, err := splitLabelValues(q)
				if err != nil {
					t.Errorf("variable %s: %v", v, err)
					continue
				}
				if _, err := parsedSelectors(sel, values); err != nil {
					t.Errorf("variable %s: %v", v, err)
				}
			}
		})
	}
}

// parsedSelectors substitutes, parses and returns the metrics expr selects.
func parsedSelectors(expr string, values map[string]string) ([]selectorUse, error) {
	s, err := substitute(expr, values)
	if err != nil {
		return nil, err
	}
	e, err := parseExpr(s)
	if err != nil {
		return nil, err
	}
	return selectors(e)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
