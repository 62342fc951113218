// Package grafana builds podgate's Grafana dashboards with the Grafana
// Foundation SDK (github.com/grafana/grafana-foundation-sdk/go).
//
// The dashboards are data, not code: the JSON files beside this file are
// the generated output, committed so that they can be imported into Grafana
// or provisioned without building anything. `make dashboards` (which runs
// ./deploy/grafana/gen) regenerates them; the tests in internal/test/dashtest
// fail when a committed file differs from what [Render] returns, validate
// every file strictly with the SDK, parse every query with the PromQL
// parser and run the drop queries against a real Prometheus scraping a real
// agent.
//
// Every dashboard is templated by data source ($datasource, a Prometheus
// data source), node ($node, the `node` label that the scrape
// configurations in deploy/prometheus add from the pod's node name) and,
// where pods are involved, namespace ($namespace).
//
// Nothing here is safe or unsafe for concurrent use in any interesting way:
// every function builds new values and shares no state.
package grafana
