package offload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// MaxFlowsLimit is the largest Config.MaxFlows: the conntrack table's
// largest capacity, since the fastpath uses its entry index as a slot.
const MaxFlowsLimit = 1 << 28

// Errors returned by this package.
var (
	// ErrInvalidConfig is wrapped by [Open] for a bad [Config].
	ErrInvalidConfig = errors.New("invalid offload config")
	// ErrInvalidFlow is wrapped by [Offload.Install] for a flow the
	// programs could never match or act on.
	ErrInvalidFlow = errors.New("invalid flow")
	// ErrClosed is returned when an Offload is used after Close.
	ErrClosed = errors.New("offload closed")
)

// Config configures [Open].
type Config struct {
	// MaxFlows is the capacity of the flows map and the number of counter
	// slots (two counters each); 1 to [MaxFlowsLimit].
	MaxFlows int
	// PinDir is a directory on a BPF file system (bpffs) where the maps
	// and the TCX links are pinned, so that the offload keeps forwarding
	// after the process dies and the next run takes it over. "" pins
	// nothing: everything goes away with the process. A PinDir belongs to
	// one network namespace and one Offload at a time.
	PinDir string
}

// Validate reports every problem with c, joined.
func (c Config) Validate() error {
	var errs []error
	if c.MaxFlows < 1 || c.MaxFlows > MaxFlowsLimit {
		errs = append(errs, fmt.Errorf("MaxFlows %d not in [1, %d]: %w", c.MaxFlows, MaxFlowsLimit, ErrInvalidConfig))
	}
	if c.PinDir != "" {
		var st unix.Statfs_t
		if err := unix.Statfs(c.PinDir, &st); err != nil {
			errs = append(errs, fmt.Errorf("PinDir %s: %w (%w)", c.PinDir, ErrInvalidConfig, err))
		} else if uint32(st.Type) != unix.BPF_FS_MAGIC {
			errs = append(errs, fmt.Errorf("PinDir %s is not on a bpffs (mount -t bpf bpf DIR): %w", c.PinDir, ErrInvalidConfig))
		}
	}
	return errors.Join(errs...)
}

// Names of pinned objects in Config.PinDir: the maps by their names in
// bpf/offload.c, the links as below.
const (
	pinKernel    = "kernel_egress"
	pinPodPrefix = "pod_ingress_"
)

// Offload is the loaded BPF programs and maps of the established-flow
// offload, and the TCX links that attach them.
//
// Install, Remove, Range, Stats, Counters, Take and ResetCounters may be
// called from several goroutines at once, and concurrently with the
// attach methods; none of them may run concurrently with Close (after it,
// they return ErrClosed or zero counters). The attach methods (AttachPod,
// DetachPod, AttachKernel, DetachKernel) act in the network namespace of
// the calling thread and are serialised internally.
type Offload struct {
	cfg  Config
	objs offloadObjects
	// counters is the counters map's memory: reads and resets without
	// syscalls.
	counters counterMem

	batchMu sync.Mutex // guards keys, vals
	keys    []Key
	vals    []Value

	mu     sync.Mutex // guards pods, kernel, conf, closed
	pods   map[int]*tcx
	kernel *tcx
	conf   config // the config map's entry
	closed bool
	// done is closed, readable without mu.
	done atomic.Bool
	// replaced is why Open replaced the maps a previous run pinned, or
	// nil.
	replaced error
}

// tcx is an attached program: a TCX link, maybe pinned.
type tcx struct {
	link    link.Link
	ifindex int
	pin     string // "" when not pinned
	// current: the link runs this Offload's program (false for a link a
	// previous run pinned, until it is attached again).
	current bool
}

// Open loads the programs and creates the maps. With Config.PinDir it
// reuses maps pinned there by a previous run (their flows, counters and
// config stay) and pins the ones it creates. If a pinned map's type,
// sizes or flags differ (a new MaxFlows, a podgate build whose map layouts
// changed), Open starts afresh: it unpins every map of the previous run
// and creates new ones ([Offload.Replaced] says why; the caller should
// log it). It also takes over the TCX links a previous run pinned
// ([Offload.Attachments] lists them), whether or not it replaced the
// maps: they keep running the previous program (on its own maps) until
// attached again, so that the pods stay behind a program and the node
// does not open while a new agent starts; links whose interface is gone
// are removed.
func Open(cfg Config) (*Offload, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open offload: %w", err)
	}
	spec, err := loadOffload()
	if err != nil {
		return nil, fmt.Errorf("open offload: %w", err)
	}
	spec.Maps[offloadMapFlows].MaxEntries = uint32(cfg.MaxFlows)
	spec.Maps[offloadMapCounters].MaxEntries = uint32(2 * cfg.MaxFlows)
	var opts ebpf.CollectionOptions
	if cfg.PinDir != "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		opts.Maps.PinPath = cfg.PinDir
	}
	o := &Offload{cfg: cfg, pods: make(map[int]*tcx)}
	err = spec.LoadAndAssign(&o.objs, &opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) && cfg.PinDir != "" {
		o.replaced = fmt.Errorf("maps pinned in %s do not match MaxFlows %d or this build, replaced by new ones (the previous run's flows, counters and punt budgets are gone): %w",
			cfg.PinDir, cfg.MaxFlows, err)
		if uerr := unpinMaps(cfg.PinDir, spec); uerr != nil {
			return nil, fmt.Errorf("open offload: %w: %w", o.replaced, uerr)
		}
		err = spec.LoadAndAssign(&o.objs, &opts)
	}
	if err != nil {
		return nil, fmt.Errorf("open offload: load programs and maps: %w", err)
	}
	o.counters, err = mapCounters(o.objs.Counters, cfg.MaxFlows)
	if err != nil {
		_ = o.objs.Close()
		return nil, fmt.Errorf("open offload: %w", err)
	}
	if err := o.objs.Config.Lookup(uint32(0), &o.conf); err != nil {
		return nil, errors.Join(fmt.Errorf("open offload: read config: %w", err), o.Close())
	}
	if cfg.PinDir != "" {
		if err := o.adopt(); err != nil {
			return nil, errors.Join(fmt.Errorf("open offload: %w", err), o.Close())
		}
	}
	return o, nil
}

// unpinMaps removes the pins of spec's maps from dir (a missing one is no
// error). A map stays alive as long as a program uses it.
func unpinMaps(dir string, spec *ebpf.CollectionSpec) error {
	var errs []error
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata and the like: never pinned
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin incompatible map %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Replaced returns why [Open] replaced the maps pinned by a previous run
// (an error wrapping [ebpf.ErrMapIncompatible]), or nil if it reused them
// or there were none.
func (o *Offload) Replaced() error { return o.replaced }

// PinDir returns Config.PinDir: where links of other programs that must
// outlive a crash with this Offload's (the kernel port's XDP link) are
// pinned too, or "".
func (o *Offload) PinDir() string { return o.cfg.PinDir }

// adopt takes over the links pinned in PinDir by a previous run.
func (o *Offload) adopt() error {
	entries, err := os.ReadDir(o.cfg.PinDir)
	if err != nil {
		return fmt.Errorf("read pin dir: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		want := 0
		switch {
		case name == pinKernel:
		case strings.HasPrefix(name, pinPodPrefix):
			want, err = strconv.Atoi(strings.TrimPrefix(name, pinPodPrefix))
			if err != nil || want <= 0 {
				continue
			}
		default:
			continue
		}
		path := filepath.Join(o.cfg.PinDir, name)
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		ifindex, err := tcxIfindex(l)
		if err != nil {
			errs = append(errs, errors.Join(fmt.Errorf("inspect pinned link %s: %w", path, err), l.Close()))
			continue
		}
		if ifindex == 0 || (want != 0 && ifindex != want) {
			// The interface is gone: the link is detached already.
			if err := errors.Join(l.Unpin(), l.Close()); err != nil {
				errs = append(errs, fmt.Errorf("remove stale link %s: %w", path, err))
			}
			continue
		}
		t := &tcx{link: l, ifindex: ifindex, pin: path}
		if name == pinKernel {
			o.kernel = t
		} else {
			o.pods[ifindex] = t
		}
	}
	return errors.Join(errs...)
}

// tcxIfindex returns the interface a TCX link is attached to, 0 if its
// interface is gone.
func tcxIfindex(l link.Link) (int, error) {
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	t := info.TCX()
	if t == nil {
		return 0, fmt.Errorf("link %d is a %v link, not TCX", info.ID, info.Type)
	}
	return int(t.Ifindex), nil
}

// Close releases the programs, maps and links of this process. Links and
// maps that are pinned stay (and keep forwarding); unpinned links are
// detached. Close is idempotent.
func (o *Offload) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	o.done.Store(true)
	var errs []error
	for _, t := range o.pods {
		if err := t.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link on ifindex %d: %w", t.ifindex, err))
		}
	}
	o.pods = nil
	if o.kernel != nil {
		if err := o.kernel.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close kernel link: %w", err))
		}
		o.kernel = nil
	}
	if err := o.counters.unmap(); err != nil {
		errs = append(errs, err)
	}
	if err := o.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close objects: %w", err))
	}
	return errors.Join(errs...)
}

// Unpin removes everything this Offload pinned or took over from
// Config.PinDir: maps and links. It detaches nothing by itself, but once
// unpinned the links and maps live only as long as this process holds
// them: Close then detaches the programs and frees the maps. A graceful
// stop restoring the node calls Unpin, then Close. Without PinDir it does
// nothing.
func (o *Offload) Unpin() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("unpin: %w", ErrClosed)
	}
	var errs []error
	for _, t := range o.pods {
		errs = append(errs, unpin(t))
	}
	if o.kernel != nil {
		errs = append(errs, unpin(o.kernel))
	}
	for _, m := range []*ebpf.Map{o.objs.Flows, o.objs.Counters, o.objs.Config, o.objs.Stats, o.objs.PuntBudget} {
		if m.IsPinned() {
			if err := m.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin map %v: %w", m, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Install adds or replaces flows (BPF_MAP_UPDATE_BATCH, or one update per
// flow on kernels without batch operations) and returns how many of them,
// from the first, are installed. Every flow is checked first (a canonical
// key, a known protocol, a slot below MaxFlows, actions with the
// interfaces they need): a bad flow is an error wrapping [ErrInvalidFlow]
// and nothing is installed. If the kernel fails part way (the map is full:
// E2BIG), the flows from the failing one on are not installed. Reset the
// counters of a reused slot (ResetCounters or Take) before installing its
// flow.
func (o *Offload) Install(flows []Flow) (int, error) {
	if o.done.Load() {
		return 0, fmt.Errorf("install flows: %w", ErrClosed)
	}
	for i := range flows {
		f := &flows[i]
		if err := f.Key.validate(); err != nil {
			return 0, fmt.Errorf("install flow %d (%v): %w: %w", i, f.Key, ErrInvalidFlow, err)
		}
		if err := f.Value.validate(o.cfg.MaxFlows); err != nil {
			return 0, fmt.Errorf("install flow %d (%v): %w: %w", i, f.Key, ErrInvalidFlow, err)
		}
	}
	if len(flows) == 0 {
		return 0, nil
	}
	o.batchMu.Lock()
	defer o.batchMu.Unlock()
	o.keys, o.vals = o.keys[:0], o.vals[:0]
	for i := range flows {
		o.keys = append(o.keys, flows[i].Key)
		o.vals = append(o.vals, flows[i].Value)
	}
	n, err := o.objs.Flows.BatchUpdate(o.keys, o.vals, &ebpf.BatchOptions{ElemFlags: uint64(ebpf.UpdateAny)})
	if errors.Is(err, ebpf.ErrNotSupported) {
		for n = 0; n < len(o.keys); n++ {
			if err = o.objs.Flows.Update(&o.keys[n], &o.vals[n], ebpf.UpdateAny); err != nil {
				break
			}
		}
	}
	if err != nil {
		n = min(max(n, 0), len(flows))
		return n, fmt.Errorf("install flows: %d of %d installed, flow %d (%v): %w", n, len(flows), n, o.keys[min(n, len(o.keys)-1)], err)
	}
	return len(flows), nil
}

// Remove deletes flows (BPF_MAP_DELETE_BATCH where supported); a key that
// is not there is skipped, not an error.
func (o *Offload) Remove(keys []Key) error {
	if o.done.Load() {
		return fmt.Errorf("remove flows: %w", ErrClosed)
	}
	for i := 0; i < len(keys); {
		n, err := o.objs.Flows.BatchDelete(keys[i:], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			return o.removeEach(keys[i:])
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			// The batch stops at the missing key keys[i+n].
			i += n + 1
		default:
			return fmt.Errorf("remove flows: flow %d (%v): %w", i+n, keys[min(i+n, len(keys)-1)], err)
		}
	}
	return nil
}

func (o *Offload) removeEach(keys []Key) error {
	for i := range keys {
		if err := o.objs.Flows.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove flow %v: %w", keys[i], err)
		}
	}
	return nil
}

// Range calls fn for every flow in the map until fn returns false (crash
// recovery: what a previous run installed). Flows installed or removed
// meanwhile may or may not be seen.
func (o *Offload) Range(fn func(Key, Value) bool) error {
	if o.done.Load() {
		return fmt.Errorf("iterate flows: %w", ErrClosed)
	}
	var (
		k Key
		v Value
	)
	it := o.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		if !fn(k, v) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate flows: %w", err)
	}
	return nil
}

// Clear removes every flow, and returns how many there were: at a start,
// the flows of a previous run, whose verdicts and counter slots mean
// nothing to this one.
func (o *Offload) Clear() (int, error) {
	var keys []Key
	if err := o.Range(func(k Key, _ Value) bool {
		keys = append(keys, k)
		return true
	}); err != nil {
		return 0, fmt.Errorf("clear flows: %w", err)
	}
	if err := o.Remove(keys); err != nil {
		return 0, fmt.Errorf("clear flows: %w", err)
	}
	return len(keys), nil
}

// Stats returns the programs' global counters, summed over CPUs.
func (o *Offload) Stats() (Stats, error) {
	if o.done.Load() {
		return Stats{}, fmt.Errorf("read offload stats: %w", ErrClosed)
	}
	var per []Stats
	if err := o.objs.Stats.Lookup(uint32(0), &per); err != nil {
		return Stats{}, fmt.Errorf("read offload stats: %w", err)
	}
	var s Stats
	for i := range per {
		s.add(&per[i])
	}
	return s, nil
}

func (s *Stats) add(o *Stats) {
	for i := range s.Hit {
		s.Hit[i] += o.Hit[i]
	}
	for i := range s.Punt {
		s.Punt[i] += o.Punt[i]
		s.Pass[i] += o.Pass[i]
	}
	s.PuntUnset += o.PuntUnset
	s.EgressMarked += o.EgressMarked
	s.RedirectErrors += o.RedirectErrors
	s.ShortFrames += o.ShortFrames
	s.VLANDropped += o.VLANDropped
	s.PuntLimited += o.PuntLimited
}

// config mirrors struct config.
type config struct {
	PuntIfindex     uint32
	Flags           uint32
	LeaseUntilNS    uint64
	PuntIntervalNS  uint64
	PuntToleranceNS uint64
}

// setPuntIfindex sets the punt interface, keeping the lease. The caller
// holds o.mu.
func (o *Offload) setPuntIfindex(ifindex int) error {
	c := o.conf
	c.PuntIfindex = uint32(ifindex)
	if err := o.putConfig(c); err != nil {
		return fmt.Errorf("set punt ifindex %d: %w", ifindex, err)
	}
	return nil
}

// putConfig writes c to the config map (one system call) and keeps it as
// o.conf. The caller holds o.mu.
func (o *Offload) putConfig(c config) error {
	if err := o.objs.Config.Put(uint32(0), c); err != nil {
		return err
	}
	o.conf = c
	return nil
}

// Lease lets the programs use the flows map until the CLOCK_MONOTONIC time
// until (nanoseconds); after it, they use no flow (every frame goes to the
// fastpath, or on to pgw0, as on a miss), until the lease is renewed. The
// fastpath renews it while it runs, so that if it dies, established flows
// stop being forwarded on its verdicts within the lease: with the AF_XDP
// socket gone, their frames are dropped, as every other frame of the node's
// pods is. Zero removes the lease (the flows are always used). One system
// call.
func (o *Offload) Lease(until int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("renew lease: %w", ErrClosed)
	}
	c := o.conf
	c.LeaseUntilNS = uint64(max(until, 0))
	if err := o.putConfig(c); err != nil {
		return fmt.Errorf("renew lease: %w", err)
	}
	return nil
}

// PuntLimit is the punt budget of each pod: how many frames per second
// pod_ingress may send to the fastpath from one pod's host veth, on
// average (Rate), and back to back (Burst). Frames over it are dropped in
// TC and counted in [Stats].PuntLimited. Rate 0 is unlimited.
type PuntLimit struct {
	Rate  uint64 // frames per second; 0: unlimited
	Burst uint64 // frames; at least 1 is used
}

// SetPuntLimit sets every pod's punt budget (see [PuntLimit]); a pod's
// state (how much of its burst it used) is kept across changes. One system
// call.
func (o *Offload) SetPuntLimit(l PuntLimit) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("set punt limit: %w", ErrClosed)
	}
	c := o.conf
	c.PuntIntervalNS, c.PuntToleranceNS = puntGCRA(l)
	if c == o.conf {
		return nil
	}
	if err := o.putConfig(c); err != nil {
		return fmt.Errorf("set punt limit %d/s, burst %d: %w", l.Rate, l.Burst, err)
	}
	return nil
}

// puntGCRA converts a rate and a burst to the GCRA's emission interval and
// tolerance: interval 1e9/rate ns (at least 1), tolerance (burst-1)
// intervals, so that burst frames conform back to back.
func puntGCRA(l PuntLimit) (interval, tolerance uint64) {
	if l.Rate == 0 {
		return 0, 0
	}
	interval = max(uint64(1e9)/l.Rate, 1)
	burst := min(max(l.Burst, 1), 1<<20)
	return interval, (burst - 1) * interval
}
