package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// Source is a source of policy tables: an [APISource] or a [FileSource].
type Source interface {
	// Run reads the inputs and publishes tables until ctx is done.
	Run(ctx context.Context) error
	// Ready reports whether the source published a table and its latest
	// rebuild succeeded; see [Status.Ready].
	Ready() bool
	// Status describes the source.
	Status() Status
	// NodeAddrs returns the addresses of the node the agent runs on. The
	// caller must not modify the slice.
	NodeAddrs() []netip.Addr
}

var (
	_ Source = (*APISource)(nil)
	_ Source = (*FileSource)(nil)
)

// Status describes a [Source] at one moment.
type Status struct {
	// Synced reports whether the source read all its inputs once: every
	// informer synced (APISource), or the manifests read (FileSource).
	Synced bool
	// Generation is the store generation of the last table this source
	// published, 0 before the first.
	Generation uint64
	// LastPublish is when that table was published.
	LastPublish time.Time
	// LastSync is when the source last knew its view to be current: its
	// last rebuild or health check while not stale (APISource), its last
	// successful read of the manifests (FileSource).
	LastSync time.Time
	// Rebuilds counts rebuild attempts, Failures those that published
	// nothing. Incremental counts the rebuilds (among Rebuilds) that
	// updated the last table for pod changes instead of compiling
	// everything.
	Rebuilds, Failures, Incremental uint64
	// LastRebuild is how long the last successful rebuild took, from
	// reading the inputs to publishing.
	LastRebuild time.Duration
	// Events counts the changes that triggered a rebuild (informer events
	// that touch policy, file system events).
	Events uint64
	// LastError is why the latest rebuild failed (reading or compiling),
	// or nil when it succeeded. While it is set, the store keeps the last
	// table that compiled, which is behind the inputs.
	LastError error
	// ErrorSince is when the rebuilds started failing.
	ErrorSince time.Time
	// Stale reports that the view may be behind the API server: it did
	// not answer, or an informer failed to list or watch, and not every
	// informer has heard from the server since. Always false for a
	// FileSource.
	Stale bool
	// StaleSince is when the view became stale.
	StaleSince time.Time
	// StaleReason is the latest failure seen while stale.
	StaleReason string
}

// Ready reports whether the source read its inputs, published a table and
// its latest rebuild succeeded. A stale view does not make a source
// unready: enforcement continues on the last table.
func (s Status) Ready() bool {
	return s.Synced && s.Generation > 0 && s.LastError == nil
}

// Err returns nil when the source is ready and its view current, and
// otherwise an error saying what is wrong (for a detailed health endpoint).
func (s Status) Err() error {
	var errs []error
	switch {
	case !s.Synced:
		errs = append(errs, errors.New("inputs not read yet"))
	case s.Generation == 0 && s.LastError == nil:
		errs = append(errs, errors.New("no policy table published yet"))
	}
	if s.LastError != nil {
		errs = append(errs, fmt.Errorf("policy table not updated since %s: %w", s.ErrorSince.Format(time.RFC3339), s.LastError))
	}
	if s.Stale {
		errs = append(errs, fmt.Errorf("view stale since %s: %s", s.StaleSince.Format(time.RFC3339), s.StaleReason))
	}
	return errors.Join(errs...)
}

// publisher is what both sources share: it compiles views, publishes
// tables and keeps the status.
type publisher struct {
	// opts compile the tables: the API source's objects are Trusted, as
	// the API server validated them. compile, when set, compiles instead
	// of policy.CompileWith with opts.
	opts    policy.Options
	compile func(*policy.Cluster) (*table.Table, error)
	// onPublish is called after each publication, outside the lock.
	onPublish func(generation uint64, rebuild time.Duration)
	store     *table.Store
	log       *slog.Logger
	clock     clock.PassiveClock

	mu       sync.Mutex
	st       Status
	warnings []string // of the last published table
}

func newPublisher(store *table.Store, log *slog.Logger, clk clock.PassiveClock) *publisher {
	return &publisher{store: store, log: log, clock: clk}
}

func (p *publisher) status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *publisher) setSynced() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Synced = true
}

func (p *publisher) event() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st.Events++
}

// publish compiles c and publishes the table, or records why it could
// not. start is when reading the inputs began; current says whether the
// view was believed current when read.
func (p *publisher) publish(c *policy.Cluster, start time.Time, current bool) {
	var t *table.Table
	var err error
	if p.compile != nil {
		t, err = p.compile(c)
	} else {
		t, err = policy.CompileWith(c, p.opts)
	}
	if err != nil {
		p.fail(fmt.Errorf("compile policy table: %w", err))
		return
	}
	p.publishTable(t, start, current, false)
}

// publishTable publishes t, compiled (or, incremental, updated) from
// inputs read since start.
func (p *publisher) publishTable(t *table.Table, start time.Time, current, incremental bool) {
	p.mu.Lock()
	var gen uint64
	var rebuild time.Duration
	defer func() {
		p.mu.Unlock()
		if p.onPublish != nil {
			p.onPublish(gen, rebuild)
		}
	}()
	gen = p.store.Publish(t)
	now := p.clock.Now()
	st := &p.st
	first, recovered := st.Generation == 0, st.LastError != nil
	st.Rebuilds++
	if incremental {
		st.Incremental++
	}
	st.Generation = gen
	st.LastPublish = now
	st.LastRebuild = now.Sub(start)
	rebuild = st.LastRebuild
	if current {
		st.LastSync = now
	}
	st.LastError, st.ErrorSince = nil, time.Time{}
	stats := t.Stats()
	level := slog.LevelDebug
	if first || recovered {
		level = slog.LevelInfo
	}
	p.log.Log(context.Background(), level, "published policy table",
		"generation", gen, "incremental", incremental, "endpoints", stats.Endpoints, "policies", stats.Policies,
		"rules", stats.Rules, "clusterPolicies", stats.ClusterPolicies, "compile", stats.Duration, "rebuild", st.LastRebuild)
	if w := t.Warnings(); !slices.Equal(w, p.warnings) {
		for _, msg := range w {
			p.log.Warn("policy table warning", "generation", gen, "warning", msg)
		}
		p.warnings = w
	}
}

// fail records a rebuild that published nothing. The error is logged when
// it differs from the previous one.
func (p *publisher) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.st
	st.Rebuilds++
	st.Failures++
	level := slog.LevelError
	if st.LastError != nil && st.LastError.Error() == err.Error() {
		level = slog.LevelDebug
	}
	if st.LastError == nil {
		st.ErrorSince = p.clock.Now()
	}
	st.LastError = err
	p.log.Log(context.Background(), level, "policy table not updated; enforcing the last one",
		"generation", st.Generation, "error", err)
}

// setStale marks the view stale for reason, logging the transition.
func (p *publisher) setStale(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.st
	if !st.Stale {
		st.Stale = true
		st.StaleSince = p.clock.Now()
		p.log.Warn("policy view is stale; enforcing the last table", "reason", reason, "generation", st.Generation)
	}
	st.StaleReason = reason
}

// setCurrent marks the view current, as of now.
func (p *publisher) setCurrent() {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.st
	now := p.clock.Now()
	if st.Stale {
		p.log.Info("policy view is current again", "staleFor", now.Sub(st.StaleSince), "generation", st.Generation)
		st.Stale, st.StaleSince, st.StaleReason = false, time.Time{}, ""
	}
	if st.Synced {
		st.LastSync = now
	}
}

func (p *publisher) stale() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.Stale
}
