package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/netns"
)

// Reading what the enforcers and the kernel count: the agent's /metrics,
// the veths' drop counters, the kernel's conntrack size.

// dropCounters reads the counters that say where forwarded packets were
// lost: the drop counters of the veths on the path (client eth0, the node
// ends, server eth0). With the agent, an XDP redirect into its socket that
// finds no free frame counts as an RX drop of the node end. The agent
// itself is not scraped between trials (a scrape would compete with its
// worker); its counters are read once per phase. The agent's threads'
// time spent runnable but waiting for a CPU (schedstat) says how much of a
// stall was the CPU being given to other processes.
func (e *env) dropCounters() (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, l := range []struct {
		ns   *netns.Namespace
		name string
		key  string
	}{
		{e.client.NS, "eth0", "client-eth0"},
		{e.lab.Node().NS, e.client.HostIf, "node-client-veth"},
		{e.lab.Node().NS, e.server.HostIf, "node-server-veth"},
		{e.server.NS, "eth0", "server-eth0"},
	} {
		h, err := l.ns.Handle()
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		link, err := h.LinkByName(l.name)
		h.Close()
		if err != nil {
			return nil, fmt.Errorf("bench: find %s: %w", l.name, err)
		}
		if st := link.Attrs().Statistics; st != nil {
			out[l.key+" rx_dropped"] = st.RxDropped
			out[l.key+" tx_dropped"] = st.TxDropped
		}
	}
	if pid := e.lab.AgentPID(); pid > 0 {
		if wait, err := runQueueWait(pid); err == nil {
			out["agent run-queue wait µs"] = uint64(wait / time.Microsecond)
		}
	}
	return out, nil
}

// metrics scrapes the agent.
func (e *env) metrics(ctx context.Context) (Metrics, error) { return scrapeAgent(ctx, e.lab) }

// scrapeAgent scrapes the agent of lab l.
func scrapeAgent(ctx context.Context, l *lab.Lab) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.AgentURL()+"/metrics", nil)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape agent: %w", err)
	}
	resp, err := l.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("bench: scrape agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: scrape agent: %s", resp.Status)
	}
	return parseMetrics(resp.Body)
}

// waitMetric scrapes until a metric has the wanted value (30s at most).
func (e *env) waitMetric(ctx context.Context, name string, want float64) (Metrics, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := e.metrics(ctx)
		if err == nil && m.Get(name) == want {
			return m, nil
		}
		if time.Now().After(deadline) {
			got := 0.0
			if m != nil {
				got = m.Get(name)
			}
			return nil, fmt.Errorf("bench: agent metric %s is %v, want %v: %w", name, got, want, errors.Join(err, context.DeadlineExceeded))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: wait for %s: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kernelConntrackCount reads nf_conntrack_count of the namespace.
func kernelConntrackCount(ns *netns.Namespace) (float64, error) {
	var v float64
	err := ns.Do(func() error {
		data, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		v, err = strconv.ParseFloat(strings.TrimSpace(string(data)), 64)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("bench: read conntrack count: %w", err)
	}
	return v, nil
}
