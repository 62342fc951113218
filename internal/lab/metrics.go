package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a Prometheus text endpoint: the value of every
// counter, gauge and untyped series, keyed by [SeriesKey]. Histograms and
// summaries contribute their _sum and _count.
type Metrics map[string]float64

// SeriesKey returns the key of a series in [Metrics]: the name, then the
// labels sorted by name, as in name{a="x",b="y"} (just the name without
// labels). labels are name, value pairs.
func SeriesKey(name string, labels ...string) string {
	if len(labels) == 0 {
		return name
	}
	pairs := make([]string, 0, len(labels)/2)
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	slices.Sort(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// Get returns the value of a series (0 if it is missing).
func (m Metrics) Get(name string, labels ...string) float64 {
	return m[SeriesKey(name, labels...)]
}

// Has reports whether a series exists.
func (m Metrics) Has(name string, labels ...string) bool {
	_, ok := m[SeriesKey(name, labels...)]
	return ok
}

// Matching returns the keys of the series of a metric that carry the given
// label with the given value.
func (m Metrics) Matching(name, label, value string) []string {
	want := fmt.Sprintf("%s=%q", label, value)
	var out []string
	for k := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		inner := strings.TrimSuffix(strings.TrimPrefix(k, name+"{"), "}")
		for _, p := range splitLabels(inner) {
			if p == want {
				out = append(out, k)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}

// splitLabels splits `a="x",b="y"` at the commas between pairs (label
// values may contain commas inside their quotes).
func splitLabels(s string) []string {
	var out []string
	start, quoted, escaped := 0, false, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escaped:
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// Scrape reads url (a /metrics endpoint) with client and parses it.
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	m := Metrics{}
	for name, fam := range fams {
		for _, s := range fam.GetMetric() {
			labels := make([]string, 0, 2*len(s.GetLabel()))
			for _, l := range s.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			switch fam.GetType() {
			case dto.MetricType_COUNTER:
				m[SeriesKey(name, labels...)] = s.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				m[SeriesKey(name, labels...)] = s.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				m[SeriesKey(name, labels...)] = s.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				m[SeriesKey(name+"_sum", labels...)] = s.GetHistogram().GetSampleSum()
				m[SeriesKey(name+"_count", labels...)] = float64(s.GetHistogram().GetSampleCount())
			case dto.MetricType_SUMMARY:
				m[SeriesKey(name+"_sum", labels...)] = s.GetSummary().GetSampleSum()
				m[SeriesKey(name+"_count", labels...)] = float64(s.GetSummary().GetSampleCount())
			}
		}
	}
	return m, nil
}
