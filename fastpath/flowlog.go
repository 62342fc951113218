package fastpath

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/podgate/podgate/policy/table"
)

// FlowEnd is one end of a flow in a [FlowRecord].
type FlowEnd struct {
	IP        netip.Addr `json:"ip"`
	Port      uint16     `json:"port,omitempty"`
	Namespace string     `json:"namespace,omitempty"`
	Pod       string     `json:"pod,omitempty"`
}

// FlowRecord is a verdict on a flow as the flow log and `podgate flows`
// show it.
type FlowRecord struct {
	Time     time.Time `json:"time"`
	Verdict  string    `json:"verdict"` // "allow", "deny" or "evicted"
	Protocol string    `json:"protocol"`
	Src      FlowEnd   `json:"src"`
	Dst      FlowEnd   `json:"dst"`
	// Direction is the side that denied ("ingress" or "egress"); Reason the
	// drop reason (denied_ingress, denied_egress, unknown_endpoint).
	Direction string `json:"direction,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// Cut marks a denied packet of a connection that was allowed and that
	// a newer policy denies (the connection was cut).
	Cut bool `json:"cut,omitempty"`
	// State is the TCP state of an evicted flow (verdict "evicted": an
	// allowed flow evicted to make room in a full flow table).
	State string `json:"state,omitempty"`
	// Policies says what decided: the rules that allowed the flow, or the
	// policies that isolate the denying side.
	Policies []string `json:"policies,omitempty"`
}

// FlowFilter selects records; zero fields match everything.
type FlowFilter struct {
	Namespace string // either end's namespace
	Verdict   string // "allow", "deny" or "evicted"
}

// Match reports whether r passes the filter.
func (f FlowFilter) Match(r *FlowRecord) bool {
	if f.Verdict != "" && f.Verdict != r.Verdict {
		return false
	}
	return f.Namespace == "" || f.Namespace == r.Src.Namespace || f.Namespace == r.Dst.Namespace
}

// FlowLogConfig configures a [FlowLog].
type FlowLogConfig struct {
	Engine *Engine
	Store  *table.Store
	// Logger receives one line per denied flow; nil logs nothing.
	Logger *slog.Logger
	// LogRate and LogBurst limit the denied-flow lines per second (default
	// 100 and 200); lines over the limit are counted, not written.
	LogRate  float64
	LogBurst int
	// Keep is how many recent records are kept for /flows (default 1000).
	Keep int
	// Poll is how often the engine's events are drained (default 50ms).
	Poll time.Duration
	// MaxFollowers bounds the /flows?follow=true streams at once (default
	// 16); more are refused with 503, so that clients cannot exhaust the
	// agent's memory.
	MaxFollowers int
}

// FlowLog turns the engine's flow events into records: a rate-limited
// JSON log of denied flows, the recent records, and a stream for
// followers. It is safe for concurrent use; one goroutine runs [FlowLog.Run].
type FlowLog struct {
	cfg        FlowLogConfig
	limiter    *rate.Limiter
	suppressed atomic.Uint64
	logged     atomic.Uint64

	mu     sync.Mutex
	recent []FlowRecord // ring of cfg.Keep records
	next   int
	full   bool
	subs   map[chan FlowRecord]FlowFilter
	tables map[uint64]*logTable // recent tables by generation
}

// logTable is a table the flow log resolves events against, with the
// names of the rules it has named so far: every allowed flow names its
// two rules, and formatting them again for each flow was most of the log's
// cost during a burst of new flows. Only the goroutine that drains the
// events uses rules.
type logTable struct {
	t     *table.Table
	rules map[logRule]string
}

type logRule struct {
	dir table.Direction
	ref table.RuleRef
}

// rule returns the name of rule ref of direction dir.
func (lt *logTable) rule(dir table.Direction, ref table.RuleRef) string {
	k := logRule{dir, ref}
	if s, ok := lt.rules[k]; ok {
		return s
	}
	s := lt.t.Rule(dir, ref).String()
	lt.rules[k] = s
	return s
}

// NewFlowLog returns a flow log; start it with Run.
func NewFlowLog(cfg FlowLogConfig) (*FlowLog, error) {
	if cfg.Engine == nil || cfg.Store == nil {
		return nil, fmt.Errorf("new flow log: Engine and Store are required")
	}
	if cfg.LogRate <= 0 {
		cfg.LogRate = 100
	}
	if cfg.LogBurst <= 0 {
		cfg.LogBurst = 200
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 1000
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	if cfg.MaxFollowers <= 0 {
		cfg.MaxFollowers = 16
	}
	return &FlowLog{
		cfg:     cfg,
		limiter: rate.NewLimiter(rate.Limit(cfg.LogRate), cfg.LogBurst),
		recent:  make([]FlowRecord, cfg.Keep),
		subs:    make(map[chan FlowRecord]FlowFilter),
		tables:  make(map[uint64]*logTable),
	}, nil
}

// Run drains the engine's events until ctx is done.
func (l *FlowLog) Run(ctx context.Context) error {
	t := time.NewTicker(l.cfg.Poll)
	defer t.Stop()
	for {
		l.drain()
		select {
		case <-ctx.Done():
			l.drain()
			return nil
		case <-t.C:
		}
	}
}

// Logged and Suppressed count denied-flow lines written and those the rate
// limit held back.
func (l *FlowLog) Logged() uint64     { return l.logged.Load() }
func (l *FlowLog) Suppressed() uint64 { return l.suppressed.Load() }

func (l *FlowLog) drain() {
	if t := l.cfg.Store.Load(); t != nil {
		l.mu.Lock()
		if _, ok := l.tables[t.Generation()]; !ok {
			l.tables[t.Generation()] = &logTable{t: t, rules: make(map[logRule]string)}
			for g := range l.tables {
				if g+4 <= t.Generation() {
					delete(l.tables, g)
				}
			}
		}
		l.mu.Unlock()
	}
	var ev FlowEvent
	for l.cfg.Engine.NextEvent(&ev) {
		rec := l.record(&ev)
		if !ev.Allowed && l.cfg.Logger != nil {
			msg := "flow denied"
			if ev.Evicted {
				msg = "flow evicted"
			}
			if l.limiter.Allow() {
				l.logged.Add(1)
				l.cfg.Logger.LogAttrs(context.Background(), slog.LevelInfo, msg,
					slog.Time("flowTime", rec.Time), slog.String("direction", rec.Direction), slog.String("reason", rec.Reason),
					slog.String("protocol", rec.Protocol),
					slog.String("srcNamespace", rec.Src.Namespace), slog.String("srcPod", rec.Src.Pod),
					slog.String("srcIP", rec.Src.IP.String()), slog.Int("srcPort", int(rec.Src.Port)),
					slog.String("dstNamespace", rec.Dst.Namespace), slog.String("dstPod", rec.Dst.Pod),
					slog.String("dstIP", rec.Dst.IP.String()), slog.Int("dstPort", int(rec.Dst.Port)),
					slog.Any("policies", rec.Policies))
			} else {
				l.suppressed.Add(1)
			}
		}
		l.add(rec)
	}
}

func (l *FlowLog) add(rec FlowRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recent[l.next] = rec
	l.next = (l.next + 1) % len(l.recent)
	l.full = l.full || l.next == 0
	for ch, f := range l.subs {
		if f.Match(&rec) {
			select {
			case ch <- rec:
			default: // a slow follower misses records rather than stalling the log
			}
		}
	}
}

// record resolves an event against the table it was decided with.
func (l *FlowLog) record(ev *FlowEvent) FlowRecord {
	l.mu.Lock()
	lt := l.tables[ev.Generation]
	l.mu.Unlock()
	var t *table.Table
	if lt != nil {
		t = lt.t
	}
	r := FlowRecord{
		Time:     l.cfg.Engine.Wall(ev.Mono),
		Verdict:  "allow",
		Protocol: ev.Proto.String(),
		Src:      FlowEnd{IP: ev.Src},
		Dst:      FlowEnd{IP: ev.Dst},
	}
	if ev.Proto.HasPorts() {
		r.Src.Port, r.Dst.Port = ev.SrcPort, ev.DstPort
	}
	if t == nil {
		t = l.cfg.Store.Load()
	}
	if t == nil {
		return r
	}
	for _, end := range []*FlowEnd{&r.Src, &r.Dst} {
		if i, ok := t.EndpointByAddr(end.IP); ok {
			e := t.Endpoint(i)
			end.Namespace, end.Pod = e.Namespace, e.Name
		}
	}
	if ev.Evicted {
		r.Verdict, r.Reason = "evicted", "table_full"
		if ev.Proto == table.TCP {
			r.State = ev.EvictedState.String()
		}
		return r
	}
	if ev.Allowed {
		for _, x := range []struct {
			dir table.Direction
			ref table.RuleRef
		}{{table.Egress, ev.Egress}, {table.Ingress, ev.Ingress}} {
			if x.ref.Policy >= 0 && int(x.ref.Policy) < len(t.Policies()) && t.Generation() == ev.Generation {
				if lt != nil {
					r.Policies = append(r.Policies, lt.rule(x.dir, x.ref))
				} else {
					r.Policies = append(r.Policies, t.Rule(x.dir, x.ref).String())
				}
			}
		}
		return r
	}
	r.Verdict, r.Reason, r.Cut = "deny", ev.Drop.String(), ev.Cut
	side := ev.Isolated
	switch ev.Drop {
	case DropDeniedEgress:
		r.Direction = "egress"
	case DropDeniedIngress:
		r.Direction = "ingress"
	}
	dir := table.Ingress
	if r.Direction == "egress" {
		dir = table.Egress
	}
	if ev.ByCluster {
		// The rule of the cluster policy that denied, found again on
		// the table the flow was judged with.
		if ref, ok := t.ClusterRuleOf(dir, ev.Src, ev.Dst, ev.Proto, ev.DstPort); ok && t.Generation() == ev.Generation {
			r.Policies = append(r.Policies, t.ClusterRule(ref).String())
		}
		return r
	}
	if i, ok := t.EndpointByAddr(side); ok {
		for _, p := range t.Selecting(i, dir) {
			r.Policies = append(r.Policies, t.Policy(p).String())
		}
	}
	return r
}

// Recent returns the kept records that match f, oldest first.
func (l *FlowLog) Recent(f FlowFilter) []FlowRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []FlowRecord
	n, start := l.next, 0
	if l.full {
		n, start = len(l.recent), l.next
	}
	for k := range n {
		r := &l.recent[(start+k)%len(l.recent)]
		if f.Match(r) {
			out = append(out, *r)
		}
	}
	return out
}

// errTooManyFollowers refuses a follower beyond MaxFollowers.
var errTooManyFollowers = errors.New("too many /flows followers")

// subscribe returns a channel of new records matching f; cancel stops it.
// It fails when MaxFollowers streams are open.
func (l *FlowLog) subscribe(f FlowFilter) (<-chan FlowRecord, func(), error) {
	// A small buffer: a follower that falls behind misses records.
	ch := make(chan FlowRecord, 32)
	l.mu.Lock()
	if len(l.subs) >= l.cfg.MaxFollowers {
		l.mu.Unlock()
		return nil, nil, errTooManyFollowers
	}
	l.subs[ch] = f
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		delete(l.subs, ch)
		l.mu.Unlock()
	}, nil
}

// ServeHTTP serves the records as JSON lines: GET
// /flows?namespace=N&verdict=deny&follow=true. With follow the response
// streams new records until the client goes away.
func (l *FlowLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := FlowFilter{Namespace: q.Get("namespace"), Verdict: strings.ToLower(q.Get("verdict"))}
	if f.Verdict != "" && f.Verdict != "allow" && f.Verdict != "deny" && f.Verdict != "evicted" {
		http.Error(w, "verdict: want allow, deny or evicted", http.StatusBadRequest)
		return
	}
	follow, _ := strconv.ParseBool(q.Get("follow"))
	enc := json.NewEncoder(w)
	var ch <-chan FlowRecord
	if follow {
		var cancel func()
		var err error
		if ch, cancel, err = l.subscribe(f); err != nil {
			// Close the connection too, so that a refused client does
			// not keep a slot of the server's connection limit.
			w.Header().Set("Connection", "close")
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer cancel()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	for _, rec := range l.Recent(f) {
		if err := enc.Encode(rec); err != nil {
			return
		}
	}
	if !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case rec := <-ch:
			if err := enc.Encode(rec); err != nil {
				return
			}
		}
	}
}
