package k8swatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

// DefaultDebounce is the default of [FileConfig.Debounce].
const DefaultDebounce = 100 * time.Millisecond

// FileConfig configures a [FileSource].
type FileConfig struct {
	// OnPublish, when set, is called after every table publication with
	// its generation and how long the rebuild took (from reading the
	// inputs to publishing), e.g. to feed a histogram. It must return
	// quickly.
	OnPublish func(generation uint64, rebuild time.Duration)

	// Paths are manifest files and directories, as for [policy.Load].
	// Required.
	Paths []string
	// Loader reads them (its limits; the zero value has the defaults).
	Loader policy.Loader
	// Store receives the tables. Required.
	Store *table.Store
	// Logger receives the source's log; nil discards it.
	Logger *slog.Logger
	// Debounce is how long the files must be quiet after a change before
	// they are read again (editors write in several steps); a stream of
	// changes delays a reload by at most ten times as long. Zero means
	// DefaultDebounce.
	Debounce time.Duration
	// NodeAddrs are the addresses [FileSource.NodeAddrs] returns: the
	// agent's own, as there is no Node object to read them from.
	NodeAddrs []netip.Addr
	// Clock is for tests; nil means the real clock.
	Clock clock.Clock
}

// Default fills in the defaults of unset fields.
func (c *FileConfig) Default() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Debounce == 0 {
		c.Debounce = DefaultDebounce
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
}

// Validate reports every problem of the config, joined.
func (c *FileConfig) Validate() error {
	var errs []error
	if len(c.Paths) == 0 {
		errs = append(errs, errors.New("no manifest paths"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("store is required"))
	}
	if c.Debounce < 0 {
		errs = append(errs, fmt.Errorf("debounce %v is negative", c.Debounce))
	}
	return errors.Join(errs...)
}

// FileSource publishes tables read from manifest files, and reads them
// again when they change. Create it with [NewFileSource] and call Run. Its
// methods are safe for concurrent use.
type FileSource struct {
	cfg     FileConfig
	log     *slog.Logger
	clock   clock.Clock
	pub     *publisher
	paths   []string // absolute, cleaned
	addrs   []netip.Addr
	notes   []string // of the last load, touched by Run's goroutine only
	started atomic.Bool
}

// NewFileSource creates a file source. Paths that do not exist yet are
// allowed (reading fails until they appear); their parent directories must
// exist when Run starts.
func NewFileSource(cfg FileConfig) (*FileSource, error) {
	cfg.Default()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configure file source: %w", err)
	}
	s := &FileSource{
		cfg:   cfg,
		log:   cfg.Logger,
		clock: cfg.Clock,
		pub:   newPublisher(cfg.Store, cfg.Logger, cfg.Clock),
		addrs: slices.Clone(cfg.NodeAddrs),
	}
	s.pub.onPublish = cfg.OnPublish
	for _, p := range cfg.Paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("configure file source: %w", err)
		}
		s.paths = append(s.paths, abs)
	}
	return s, nil
}

// Ready reports whether the manifests were read, a table was published and
// the latest reload succeeded.
func (s *FileSource) Ready() bool { return s.pub.status().Ready() }

// Status describes the source. Stale is always false.
func (s *FileSource) Status() Status { return s.pub.status() }

// NodeAddrs returns [FileConfig.NodeAddrs]. The caller must not modify
// the slice.
func (s *FileSource) NodeAddrs() []netip.Addr { return s.addrs }

// Run watches the manifests, reads them and publishes a table, and reads
// them again after every change until ctx is done. It returns an error if
// the watches cannot be set up (for example a missing parent directory);
// unreadable or invalid manifests are reported by Status and the log
// instead, keeping the last table.
func (s *FileSource) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("run file source: already running")
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch manifests: %w", err)
	}
	defer w.Close()
	// A path's parent directory is watched, not the path: editors and
	// ConfigMap volumes replace files by renaming over them, which would
	// end a watch on the file itself. Directories named in Paths are
	// watched too, for changes of the files in them.
	for _, p := range s.paths {
		if err := w.Add(filepath.Dir(p)); err != nil {
			return fmt.Errorf("watch manifests: %s: %w", filepath.Dir(p), err)
		}
	}
	s.reload(w)
	s.pub.setSynced()

	debounce, maxDelay := s.cfg.Debounce, 10*s.cfg.Debounce
	var (
		timer   clock.Timer
		fire    <-chan time.Time
		pending time.Time // first change not yet read
	)
	schedule := func() {
		now := s.clock.Now()
		if fire == nil {
			pending = now
		}
		d := min(debounce, pending.Add(maxDelay).Sub(now))
		if timer != nil {
			timer.Stop()
		}
		timer = s.clock.NewTimer(max(d, 0))
		fire = timer.C()
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watch manifests: watcher closed")
			}
			if s.relevant(ev.Name) {
				s.log.Debug("manifest changed", "path", ev.Name, "op", ev.Op.String())
				s.pub.event()
				schedule()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watch manifests: watcher closed")
			}
			s.log.Warn("watch manifests", "error", err)
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				s.pub.event()
				schedule() // events were lost: read everything again
			}
		case <-fire:
			fire = nil
			s.reload(w)
		}
	}
}

// relevant reports whether a change of name may change what Load reads:
// one of the paths itself, a manifest file in a directory path, or a
// Kubernetes volume's "..data" symlink swap next to either.
func (s *FileSource) relevant(name string) bool {
	name = filepath.Clean(name)
	base := filepath.Base(name)
	for _, p := range s.paths {
		if name == p || (filepath.Dir(name) == filepath.Dir(p) && strings.HasPrefix(base, "..")) {
			return true
		}
		if filepath.Dir(name) == p {
			switch strings.ToLower(filepath.Ext(base)) {
			case ".yaml", ".yml", ".json":
				return true
			}
			if strings.HasPrefix(base, "..") {
				return true
			}
		}
	}
	return false
}

// reload reads the manifests and publishes their table. It first (re)adds
// the watches of the paths that are directories, which may have been
// created or replaced since the last read.
func (s *FileSource) reload(w *fsnotify.Watcher) {
	start := s.clock.Now()
	for _, p := range s.paths {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			if err := w.Add(p); err != nil {
				s.log.Warn("watch manifest directory", "path", p, "error", err)
			}
		}
	}
	m, err := s.cfg.Loader.Load(s.paths...)
	if err != nil {
		s.pub.fail(fmt.Errorf("load manifests: %w", err))
		return
	}
	if !slices.Equal(m.Notes, s.notes) {
		for _, n := range m.Notes {
			s.log.Info("manifest note", "note", n)
		}
		s.notes = m.Notes
	}
	s.pub.publish(&m.Cluster, start, true)
}
