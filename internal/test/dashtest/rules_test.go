package dashtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestRulesLoad loads the alert rules the way Prometheus does (strict
// YAML, every expression parsed, every template checked) and checks the
// conventions the alerts follow.
func TestRulesLoad(t *testing.T) {
	groups := ruleGroups(t)
	seen := map[string]bool{}
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			n++
			name := r.Alert + r.Record
			if seen[name] {
				t.Errorf("rule %s defined twice", name)
			}
			seen[name] = true
			e, err := parseExpr(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if _, err := selectors(e); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if r.Alert == "" {
				continue
			}
			if !strings.HasPrefix(r.Alert, "Podgate") {
				t.Errorf("alert %s: want a Podgate prefix", r.Alert)
			}
			if s := r.Labels["severity"]; !contains([]string{"info", "warning", "critical"}, s) {
				t.Errorf("alert %s: severity %q", r.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" {
					t.Errorf("alert %s: no %s", r.Alert, a)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no rules")
	}
}

// TestAlertUnitTests runs deploy/prometheus/alerts_test.yaml with
// `promtool test rules` against the rules of prometheusrule.yaml.
func TestAlertUnitTests(t *testing.T) {
	promtool := lookTool(t, "promtool")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "podgate-rules.yml"), rulesFile(t), 0o644); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(prometheusDir, "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"check", "rules", "podgate-rules.yml"},
		{"test", "rules", "alerts_test.yaml"},
	} {
		cmd := exec.CommandContext(ctx, promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestEveryAlertIsUnitTested checks that alerts_test.yaml makes every alert
// fire at least once, so that a new alert comes with its test.
func TestEveryAlertIsUnitTested(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(prometheusDir, "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Tests []struct {
			AlertRuleTests []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range file.Tests {
		for _, a := range tc.AlertRuleTests {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, g := range ruleGroups(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" && !fires[r.Alert] {
				t.Errorf("alerts_test.yaml never expects %s to fire", r.Alert)
			}
		}
	}
}
