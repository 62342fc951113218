package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/policy/table"
)

// Metrics scrapes the node's agent's /metrics. Without a running agent
// it returns [ErrNoAgent].
func (n *Node) Metrics(ctx context.Context) (Metrics, error) {
	u := n.AgentURL()
	if u == "" {
		return nil, fmt.Errorf("metrics of node %s: %w", n.name, ErrNoAgent)
	}
	m, err := Scrape(ctx, n.HTTPClient(), u+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("metrics of node %s: %w", n.name, err)
	}
	return m, nil
}

// Flows returns the recent flow records of the node's agent that match f
// (its /flows, as `podgate flows` shows them), oldest first. The agent
// keeps its last 1,000 records. Without a running agent it returns
// [ErrNoAgent].
func (n *Node) Flows(ctx context.Context, f fastpath.FlowFilter) ([]fastpath.FlowRecord, error) {
	u := n.AgentURL()
	if u == "" {
		return nil, fmt.Errorf("flows of node %s: %w", n.name, ErrNoAgent)
	}
	q := url.Values{}
	if f.Namespace != "" {
		q.Set("namespace", f.Namespace)
	}
	if f.Verdict != "" {
		q.Set("verdict", f.Verdict)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/flows?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("flows of node %s: %w", n.name, err)
	}
	resp, err := n.HTTPClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("flows of node %s: %w", n.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return nil, fmt.Errorf("flows of node %s: %s", n.name, resp.Status)
	}
	var out []fastpath.FlowRecord
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec fastpath.FlowRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, fmt.Errorf("flows of node %s: decode record: %w", n.name, err)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("flows of node %s: %w", n.name, err)
	}
	return out, nil
}

// Attribution timing: how far a record's time may lie outside a probe's
// time span (the agents' and the lab's clocks are the machine's, but the
// agent stamps a record when its worker saw the packet), how long to wait
// for records of recent probes (the agents drain their flow events every
// 50ms), and how often to look again meanwhile.
const (
	attributeSlack = 250 * time.Millisecond
	attributeWait  = time.Second
	attributePoll  = 100 * time.Millisecond
)

// Attribute sets DeniedBy of every failed result from the records of
// denied flows of the agents that run ([Node.Flows]): the record of the
// node whose agent dropped the probe's flow, with the side (egress at the
// source's node, ingress at the destination's) and the policies. A record
// matches a result by protocol, source address, destination address and
// port (for a Service, the ClusterIP and port, or a backend's address and
// target port after the DNAT) and time (within the probe's span). For
// results whose probes ended less than a second ago it waits for their
// records up to a second. Results that no record matches keep a nil
// DeniedBy; without running agents Attribute does nothing.
//
// The agents keep their last 1,000 records: a matrix that denies more
// flows on one node than that leaves the older ones unattributed.
func (l *Lab) Attribute(ctx context.Context, results []Result) error {
	var nodes []*Node
	for _, n := range l.nodes {
		if n.AgentRunning() {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		return nil
	}
	deadline := time.Now().Add(attributeWait)
	for {
		records := make([][]fastpath.FlowRecord, len(nodes))
		for i, n := range nodes {
			recs, err := n.Flows(ctx, fastpath.FlowFilter{Verdict: "deny"})
			if errors.Is(err, ErrNoAgent) {
				continue // stopped meanwhile
			}
			if err != nil {
				return fmt.Errorf("attribute denied probes: %w", err)
			}
			records[i] = recs
		}
		pending := false
		for i := range results {
			r := &results[i]
			if r.Observed || r.DeniedBy != nil {
				continue
			}
			for k, n := range nodes {
				if rec := l.matchRecord(r, records[k]); rec != nil {
					r.DeniedBy = &Denial{Node: n.name, Direction: rec.Direction, Reason: rec.Reason, Policies: rec.Policies}
					break
				}
			}
			if r.DeniedBy == nil && time.Since(r.Started.Add(r.Elapsed)) < attributeWait {
				pending = true
			}
		}
		if !pending || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("attribute denied probes: %w", ctx.Err())
		case <-time.After(attributePoll):
		}
	}
}

// matchRecord returns the last record of recs that is r's flow, or nil.
func (l *Lab) matchRecord(r *Result, recs []fastpath.FlowRecord) *fastpath.FlowRecord {
	proto := r.Port.Protocol
	if proto == table.ICMP && r.Dst.Is6() {
		proto = table.ICMPv6
	}
	type dest struct {
		addr netip.Addr
		port uint16
	}
	dests := []dest{{r.Dst, r.Port.Port}}
	if s, ok := l.svcByAddr[r.Dst]; ok {
		if sp := s.port(r.Port.Protocol, r.Port.Port); sp != nil {
			for _, b := range sp.backends(r.Dst.Is4()) {
				dests = append(dests, dest{b.Addr, b.Port})
			}
		}
	}
	from, to := r.Started.Add(-attributeSlack), r.Started.Add(r.Elapsed+attributeSlack)
	for i := len(recs) - 1; i >= 0; i-- {
		rec := &recs[i]
		if rec.Verdict != "deny" || rec.Protocol != proto.String() || rec.Src.IP != r.Src ||
			rec.Time.Before(from) || rec.Time.After(to) {
			continue
		}
		for _, d := range dests {
			if rec.Dst.IP == d.addr && (!proto.HasPorts() || rec.Dst.Port == d.port) {
				return rec
			}
		}
	}
	return nil
}
