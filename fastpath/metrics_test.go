package fastpath

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func TestCollector(t *testing.T) {
	r := newRig(t, articleTable(t), nil)
	r.expectOne(r.send("app", syn(t, wire("app"), apiIP, 80)), "api")
	s, d := fromKernel()
	r.send("kernel", tcpFrame(t, s, d, vmIP, dbIP, 5555, 80, tcpOpt{syn: true}))
	r.send("kernel", tcpFrame(t, s, d, vmIP, dbIP, 5556, 80, tcpOpt{syn: true}))

	c := NewCollector(r.e, r.store, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
	want := `
# HELP podgate_policy_denied_packets_total Packets a policy of a local pod denied, by direction and by the pod that is isolated.
# TYPE podgate_policy_denied_packets_total counter
podgate_policy_denied_packets_total{direction="egress",namespace="backend",pod="dbpod"} 0
podgate_policy_denied_packets_total{direction="egress",namespace="frontend",pod="apipod"} 0
podgate_policy_denied_packets_total{direction="egress",namespace="frontend",pod="apppod"} 0
podgate_policy_denied_packets_total{direction="ingress",namespace="backend",pod="dbpod"} 2
podgate_policy_denied_packets_total{direction="ingress",namespace="frontend",pod="apipod"} 0
podgate_policy_denied_packets_total{direction="ingress",namespace="frontend",pod="apppod"} 0
# HELP podgate_policy_allowed_flows_total New flows a policy's rules allowed on this node, by direction.
# TYPE podgate_policy_allowed_flows_total counter
podgate_policy_allowed_flows_total{direction="egress",policy="apppod-policy",policy_namespace="frontend"} 1
podgate_policy_allowed_flows_total{direction="ingress",policy="apipod-policy",policy_namespace="frontend"} 1
`
	want += `# HELP podgate_policy_isolation_denied_packets_total Packets denied on this node while this policy isolated the denying pod, by direction; a denial counts for every policy that isolates the pod.
# TYPE podgate_policy_isolation_denied_packets_total counter
podgate_policy_isolation_denied_packets_total{direction="egress",policy="apipod-policy",policy_namespace="frontend"} 0
podgate_policy_isolation_denied_packets_total{direction="egress",policy="apppod-policy",policy_namespace="frontend"} 0
podgate_policy_isolation_denied_packets_total{direction="egress",policy="dbpod-policy",policy_namespace="backend"} 0
podgate_policy_isolation_denied_packets_total{direction="ingress",policy="apipod-policy",policy_namespace="frontend"} 0
podgate_policy_isolation_denied_packets_total{direction="ingress",policy="apppod-policy",policy_namespace="frontend"} 0
podgate_policy_isolation_denied_packets_total{direction="ingress",policy="dbpod-policy",policy_namespace="backend"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "podgate_policy_denied_packets_total", "podgate_policy_allowed_flows_total", "podgate_policy_isolation_denied_packets_total"); err != nil {
		t.Error(err)
	}
	if got := testutil.ToFloat64(prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		for m := range collect(c) {
			if strings.Contains(m.Desc().String(), `"podgate_dropped_packets_total"`) && strings.Contains(metricLabels(m), "denied_ingress") {
				ch <- m
			}
		}
	})); got != 2 {
		t.Errorf("dropped denied_ingress = %v, want 2", got)
	}
}

func collect(c prometheus.Collector) <-chan prometheus.Metric {
	ch := make(chan prometheus.Metric, 1024)
	c.Collect(ch)
	close(ch)
	return ch
}

func metricLabels(m prometheus.Metric) string {
	var b strings.Builder
	var pb dto.Metric
	_ = m.Write(&pb)
	for _, l := range pb.Label {
		b.WriteString(l.GetName() + "=" + l.GetValue() + ",")
	}
	return b.String()
}
