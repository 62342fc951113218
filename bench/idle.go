package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podgate/podgate/internal/lab"
)

// IdleCost is what an agent costs on a node with many pods and no
// traffic: its CPU use over a window and the memory it holds.
type IdleCost struct {
	// Enforcer is "podgate" (default flags) or a variant's
	// "podgate-NAME"; AgentArgs the arguments on top of the bench's own
	// (--state-dir, --conntrack-max 262144, --log-level warn).
	Enforcer  string   `json:"enforcer"`
	AgentArgs []string `json:"agent_args,omitempty"`
	// Policies is the synthetic policy count of the table; PodPorts the
	// pods on the node, each a veth the agent attached to.
	Policies int `json:"policies"`
	PodPorts int `json:"pod_ports"`
	// Seconds is the window; CPUSeconds the agent's utime+stime in it
	// (/proc/PID/stat, all threads); CPUPercent is CPUSeconds over
	// Seconds, in percent of one core.
	Seconds    float64 `json:"seconds"`
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPercent float64 `json:"cpu_percent_of_one_core"`
	// ReceivedPackets is podgate_received_packets_total's growth in the
	// window: frames that reached the agent (0 when the node is truly
	// idle).
	ReceivedPackets float64 `json:"received_packets"`
	// RSSBytes, VmPinBytes and VmLckBytes are VmRSS, VmPin and VmLck of
	// /proc/PID/status after the window. AF_XDP pins its UMEM without
	// accounting it in VmPin (nor, with CAP_IPC_LOCK, in the memlock
	// rlimit), and BPF maps are not in the process's address space, so
	// VmPin and VmLck are 0: the pinned memory is counted below.
	RSSBytes   float64 `json:"rss_bytes"`
	VmPinBytes float64 `json:"vm_pin_bytes"`
	VmLckBytes float64 `json:"vm_lck_bytes"`
	// UMEMBytes is the user memory the kernel pinned for the agent: the
	// growth of nr_foll_pin_acquired − nr_foll_pin_released (/proc/vmstat,
	// pages pinned with FOLL_PIN machine-wide) from before the agent
	// started until its pod ports were attached and it had settled. The
	// agent pins nothing but its AF_XDP UMEMs. UMEMReleasedBytes is the
	// same counter's drop when the agent stopped; the two differ when
	// something else on the machine pinned or released pages meanwhile,
	// and then UMEMNoisy is set and UMEMBytes is not to be trusted. The
	// kernel folds per-CPU counter deltas lazily, so both may be off by up
	// to ~1 MiB.
	UMEMBytes         float64 `json:"umem_pinned_bytes"`
	UMEMReleasedBytes float64 `json:"umem_released_bytes"`
	UMEMNoisy         bool    `json:"umem_noisy,omitempty"`
	// XSKSockets counts the agent's AF_XDP sockets (sockets it has
	// mapped rings of, /proc/PID/maps) and XSKRingBytes the size of those
	// mappings: the rx, tx, fill and completion rings, kernel memory.
	XSKSockets   int     `json:"xsk_sockets"`
	XSKRingBytes float64 `json:"xsk_ring_bytes"`
	// BPFMaps and BPFMapBytes are the BPF maps the agent holds open and
	// the kernel memory they use ("memlock" of /proc/PID/fdinfo, the
	// kernel's own estimate); BPFProgs and BPFProgBytes the same for its
	// programs.
	BPFMaps      int     `json:"bpf_maps"`
	BPFMapBytes  float64 `json:"bpf_map_bytes"`
	BPFProgs     int     `json:"bpf_progs"`
	BPFProgBytes float64 `json:"bpf_prog_bytes"`
	// PinnedBytes is memory that cannot be swapped or reclaimed while
	// the agent runs: UMEMBytes + XSKRingBytes + BPFMapBytes +
	// BPFProgBytes. PinnedBytesPerPodPort divides it by PodPorts (so it
	// includes the node-wide part: the kernel leg's socket, shared maps).
	PinnedBytes           float64 `json:"pinned_bytes"`
	PinnedBytesPerPodPort float64 `json:"pinned_bytes_per_pod_port"`
}

// measureIdle builds a lab whose node has Config.IdlePods pods (the
// bench's three and as many more), with the largest policy count's table,
// and measures the idle cost of every agent configuration on it.
func (e *env) measureIdle(ctx context.Context) (err error) {
	p := e.cfg.Policies[len(e.cfg.Policies)-1]
	dir := filepath.Join(e.cfg.Out, "manifests", fmt.Sprintf("idle-%d-pods-%d-policies", e.cfg.IdlePods, p))
	if err := writeManifests(dir, e.cfg.Namespaces, e.cfg.PodsPerNamespace, p, e.cfg.IdlePods-3); err != nil {
		return err
	}
	e.logf("idle cost: building a lab with %d pods on the node", e.cfg.IdlePods)
	l, err := lab.Build(ctx, lab.Spec{
		Manifests: []string{dir}, NodeName: NodeName, Prefix: e.cfg.Prefix,
		Enforcer: lab.EnforcerNone, ProbeTimeout: time.Second,
	})
	if err != nil {
		return fmt.Errorf("bench: idle cost: %w", err)
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench: idle cost: %w", cerr))
		}
	}()
	var ports []string
	for _, ep := range l.Endpoints() {
		if ep.Kind == lab.KindPod {
			ports = append(ports, ep.HostIf)
		}
	}
	if len(ports) != e.cfg.IdlePods {
		return fmt.Errorf("bench: idle cost: the lab has %d pods on the node, want %d", len(ports), e.cfg.IdlePods)
	}
	for _, pg := range e.cfg.podgateRuns() {
		ic, err := e.idleRun(ctx, l, pg, p, ports)
		if err != nil {
			return err
		}
		e.logf("  %s: %.2f%% of one core, %.0f packets, RSS %.0f MiB, pinned %.2f MiB per pod port (UMEM %.0f MiB, %.0f MiB released at stop; rings %.1f MiB of %d sockets; BPF maps %.1f MiB)",
			pg.enforcer, ic.CPUPercent, ic.ReceivedPackets, ic.RSSBytes/(1<<20), ic.PinnedBytesPerPodPort/(1<<20),
			ic.UMEMBytes/(1<<20), ic.UMEMReleasedBytes/(1<<20), ic.XSKRingBytes/(1<<20), ic.XSKSockets, ic.BPFMapBytes/(1<<20))
		e.report.Idle = append(e.report.Idle, ic)
	}
	return nil
}

// idleSettle is how long the agent may settle (start-up garbage, the
// first compile) after every port is attached, before the window.
const idleSettle = 2 * time.Second

// idleRun starts one agent configuration on the idle lab, waits until it
// has attached every pod port, and measures.
func (e *env) idleRun(ctx context.Context, l *lab.Lab, pg podgateRun, p int, ports []string) (_ IdleCost, err error) {
	ic := IdleCost{Enforcer: pg.enforcer, AgentArgs: pg.args, Policies: p, PodPorts: len(ports)}
	pin0, err := pinnedPages()
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	if err := l.StartAgent(ctx, e.cfg.AgentBinary, agentArgs(l, pg, defaultConntrackMax)...); err != nil {
		return ic, fmt.Errorf("bench: idle cost: %s (agent arguments %q): %w", pg.enforcer, pg.args, err)
	}
	running := true
	defer func() {
		if running {
			if serr := l.StopAgent(syscall.SIGTERM); serr != nil {
				err = errors.Join(err, fmt.Errorf("bench: idle cost: %w", serr))
			}
		}
	}()
	pid := l.AgentPID()
	if e.pin {
		if err := pinProcess(pid, cpuSet(e.cfg.EnforcerCPU)); err != nil {
			return ic, fmt.Errorf("bench: idle cost: pin agent: %w", err)
		}
	}
	scrape := func() (Metrics, error) { return scrapeAgent(ctx, l) }
	if err := waitPorts(ctx, scrape, float64(p+BenchPolicies), ports); err != nil {
		return ic, fmt.Errorf("bench: idle cost: %s: %w", pg.enforcer, err)
	}
	if err := sleepCtx(ctx, idleSettle); err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	pin1, err := pinnedPages()
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	m0, err := scrape()
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	c0, err := procCPUTime(pid)
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, e.cfg.IdleDuration); err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	c1, err := procCPUTime(pid)
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	wall := time.Since(t0)
	m1, err := scrape()
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	ic.Seconds = wall.Seconds()
	ic.CPUSeconds = (c1 - c0).Seconds()
	ic.CPUPercent = 100 * ic.CPUSeconds / ic.Seconds
	ic.ReceivedPackets = m1.Get("podgate_received_packets_total") - m0.Get("podgate_received_packets_total")
	if err := agentMemory(pid, &ic); err != nil {
		return ic, fmt.Errorf("bench: idle cost: %s: %w", pg.enforcer, err)
	}
	pin2, err := pinnedPages()
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	running = false
	if err := l.StopAgent(syscall.SIGTERM); err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	pin3, err := pinnedPages()
	if err != nil {
		return ic, fmt.Errorf("bench: idle cost: %w", err)
	}
	page := float64(os.Getpagesize())
	ic.UMEMBytes, ic.UMEMReleasedBytes = float64(pin1-pin0)*page, float64(pin2-pin3)*page
	ic.UMEMNoisy = math.Abs(ic.UMEMBytes-ic.UMEMReleasedBytes) > max(pinTolerance, 0.02*ic.UMEMBytes)
	ic.PinnedBytes = ic.UMEMBytes + ic.XSKRingBytes + ic.BPFMapBytes + ic.BPFProgBytes
	ic.PinnedBytesPerPodPort = ic.PinnedBytes / float64(ic.PodPorts)
	return ic, nil
}

// pinTolerance is how far the pinned-page counts at the agent's start
// and stop may differ before the UMEM figure counts as disturbed: the
// kernel's lazily folded per-CPU deltas.
const pinTolerance = 2 << 20

// pinnedPages returns the pages pinned with FOLL_PIN machine-wide:
// nr_foll_pin_acquired − nr_foll_pin_released of /proc/vmstat.
func pinnedPages() (int64, error) {
	data, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return 0, fmt.Errorf("read pinned pages: %w", err)
	}
	return parsePinnedPages(string(data))
}

func parsePinnedPages(vmstat string) (int64, error) {
	var acq, rel int64
	var found int
	for _, line := range strings.Split(vmstat, "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok || (k != "nr_foll_pin_acquired" && k != "nr_foll_pin_released") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/vmstat: %s: %w", k, err)
		}
		if k == "nr_foll_pin_acquired" {
			acq = n
		} else {
			rel = n
		}
		found++
	}
	if found != 2 {
		return 0, errors.New("parse /proc/vmstat: no nr_foll_pin_acquired and nr_foll_pin_released")
	}
	return acq - rel, nil
}

// waitPorts scrapes until the agent's table has the wanted policy count
// and it reports a port for every interface of ports (60 s at most).
func waitPorts(ctx context.Context, scrape func() (Metrics, error), policies float64, ports []string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		m, err := scrape()
		missing := len(ports)
		if err == nil {
			missing = len(ports) - countPorts(m, ports)
			if missing == 0 && m.Get("podgate_table_policies") == policies {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %d pod ports: %d not attached after 60 s: %w", len(ports), missing, errors.Join(err, context.DeadlineExceeded))
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return fmt.Errorf("wait for pod ports: %w", err)
		}
	}
}

// countPorts counts the interfaces of ports that have a
// podgate_port_packets_total series (the agent exports one per port).
func countPorts(m Metrics, ports []string) int {
	have := map[string]bool{}
	const name = `podgate_port_packets_total{`
	for k := range m {
		rest, ok := strings.CutPrefix(k, name)
		if !ok {
			continue
		}
		if _, after, ok := strings.Cut(rest, `interface="`); ok {
			iface, _, _ := strings.Cut(after, `"`)
			have[iface] = true
		}
	}
	n := 0
	for _, p := range ports {
		if have[p] {
			n++
		}
	}
	return n
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// agentMemory fills the fields of ic that describe the memory of the
// agent process pid now: RSS, VmPin, VmLck, its AF_XDP rings and its BPF
// maps and programs.
func agentMemory(pid int, ic *IdleCost) error {
	st, err := procStatusKB(pid, "VmRSS", "VmPin", "VmLck")
	if err != nil {
		return err
	}
	ic.RSSBytes, ic.VmPinBytes, ic.VmLckBytes = 1024*st["VmRSS"], 1024*st["VmPin"], 1024*st["VmLck"]
	maps, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "maps"))
	if err != nil {
		return fmt.Errorf("read mappings: %w", err)
	}
	ic.XSKSockets, ic.XSKRingBytes, err = socketMappings(string(maps))
	if err != nil {
		return err
	}
	fds, err := procFDs(pid)
	if err != nil {
		return err
	}
	ic.BPFMaps, ic.BPFMapBytes, ic.BPFProgs, ic.BPFProgBytes = fds.maps, fds.mapBytes, fds.progs, fds.progBytes
	return nil
}

// socketMappings sums the mappings of sockets in a /proc/PID/maps text
// (an AF_XDP socket's rings are mapped from the socket: "socket:[INODE]")
// and counts the sockets.
func socketMappings(maps string) (sockets int, bytes float64, err error) {
	seen := map[string]bool{}
	for _, line := range strings.Split(maps, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[5], "socket:[") {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || b < a {
			return 0, 0, fmt.Errorf("parse mappings: %q", line)
		}
		bytes += float64(b - a)
		if !seen[f[5]] {
			seen[f[5]] = true
			sockets++
		}
	}
	return sockets, bytes, nil
}

// procStatusKB reads fields of /proc/PID/status given in kB.
func procStatusKB(pid int, names ...string) (map[string]float64, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return nil, fmt.Errorf("read process status: %w", err)
	}
	defer f.Close()
	return parseStatusKB(f, names...)
}

func parseStatusKB(f io.Reader, names ...string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, n := range names {
			if k != n {
				continue
			}
			fs := strings.Fields(v)
			if len(fs) != 2 || fs[1] != "kB" {
				return nil, fmt.Errorf("parse process status: %s: %q", k, v)
			}
			x, err := strconv.ParseFloat(fs[0], 64)
			if err != nil {
				return nil, fmt.Errorf("parse process status: %s: %w", k, err)
			}
			out[k] = x
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse process status: %w", err)
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("parse process status: no %s", n)
		}
	}
	return out, nil
}

// fdSummary is what a process holds open that uses kernel memory.
type fdSummary struct {
	maps, progs         int
	mapBytes, progBytes float64
}

// procFDs walks /proc/PID/fd for the BPF maps and programs, with their
// "memlock" from /proc/PID/fdinfo (each map or program once, by its ID,
// however many descriptors refer to it).
func procFDs(pid int) (fdSummary, error) {
	var s fdSummary
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	entries, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return s, fmt.Errorf("list file descriptors: %w", err)
	}
	seenMaps, seenProgs := map[string]bool{}, map[string]bool{}
	for _, ent := range entries {
		link, err := os.Readlink(filepath.Join(dir, "fd", ent.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		var idKey string
		switch link {
		case "anon_inode:bpf-map":
			idKey = "map_id"
		case "anon_inode:bpf-prog":
			idKey = "prog_id"
		default:
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "fdinfo", ent.Name()))
		if err != nil {
			continue
		}
		info := parseFDInfo(string(data))
		id := info[idKey]
		mem, err := strconv.ParseFloat(info["memlock"], 64)
		if id == "" || err != nil {
			return s, fmt.Errorf("fdinfo of %s %s: no %s or memlock", link, ent.Name(), idKey)
		}
		if idKey == "map_id" && !seenMaps[id] {
			seenMaps[id] = true
			s.maps++
			s.mapBytes += mem
		}
		if idKey == "prog_id" && !seenProgs[id] {
			seenProgs[id] = true
			s.progs++
			s.progBytes += mem
		}
	}
	return s, nil
}

// parseFDInfo parses "key:\tvalue" lines.
func parseFDInfo(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}
