package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// tool is a program the harness runs and its Debian package.
type tool struct{ bin, pkg string }

// tools lists the programs the harness runs.
func tools() []tool {
	return []tool{
		{"iperf3", "iperf3"},
		{"ipset", "ipset"},
		{"iptables-legacy-restore", "iptables"},
		{"ip", "iproute2"},
	}
}

// EnsureTools installs the Debian packages of missing tools with apt-get
// (running apt-get update first if the install fails), logging to w.
func EnsureTools(ctx context.Context, w io.Writer) error {
	var missing []string
	for _, t := range tools() {
		if _, err := exec.LookPath(t.bin); err != nil {
			missing = append(missing, t.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Fprintf(w, "installing %s with apt-get\n", strings.Join(missing, " "))
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-q"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = w, w
		return cmd.Run()
	}
	if err := install(); err != nil {
		upd := exec.CommandContext(ctx, "apt-get", "update", "-q")
		upd.Stdout, upd.Stderr = w, w
		if uerr := upd.Run(); uerr != nil {
			return fmt.Errorf("apt-get update: %w", uerr)
		}
		if err := install(); err != nil {
			return fmt.Errorf("apt-get install %s: %w", strings.Join(missing, " "), err)
		}
	}
	for _, t := range tools() {
		if _, err := exec.LookPath(t.bin); err != nil {
			return fmt.Errorf("%s still missing after installing %s: %w", t.bin, t.pkg, err)
		}
	}
	return nil
}

// setRPS steers the receive processing of every RX queue of dev in ns to
// the CPUs of mask (0 turns steering off). /sys shows the devices of the
// namespace that mounted it, so the write runs under `ip netns exec`,
// which mounts a /sys of the target namespace in a private mount
// namespace.
func setRPS(ctx context.Context, ns *netns.Namespace, dev string, mask uint64) error {
	script := fmt.Sprintf(`for q in /sys/class/net/%s/queues/rx-*; do echo %x > "$q/rps_cpus" || exit 1; done`, dev, mask)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name(), "sh", "-c", script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("set rps of %s in %s: %w: %s", dev, ns.Name(), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cpuMask returns a mask of the given CPUs.
func cpuMask(cpus ...int) uint64 {
	var m uint64
	for _, c := range cpus {
		m |= 1 << c
	}
	return m
}

func cpuSet(cpus ...int) unix.CPUSet {
	var s unix.CPUSet
	for _, c := range cpus {
		s.Set(c)
	}
	return s
}

// pinProcess sets the CPU affinity of every thread of process pid (threads
// created later inherit it from their creator).
func pinProcess(pid int, set unix.CPUSet) error {
	entries, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		return fmt.Errorf("pin process %d: %w", pid, err)
	}
	var errs []error
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("pin thread %d: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// Machine describes the machine a run was made on.
type Machine struct {
	CPUModel string     `json:"cpu_model"`
	CPUs     int        `json:"cpus"`
	Kernel   string     `json:"kernel"`
	MemoryMB int        `json:"memory_mb"`
	GoVer    string     `json:"go"`
	Load     [3]float64 `json:"load_average_at_start"`
}

// machineInfo reads /proc/cpuinfo, /proc/meminfo, uname and the load.
func machineInfo() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVer: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryMB = kb / 1024
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.Load = loadAvg()
	return m
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() [3]float64 {
	var l [3]float64
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(data))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// baselineVersions describes the kernel baseline's tools.
func baselineVersions(ctx context.Context) string {
	v := func(name string, args ...string) string {
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			return name + " (version unknown)"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	return fmt.Sprintf("iptables legacy (xt, not nftables): %s, loaded with iptables-legacy-restore; %s, loaded with ipset restore; both inside the lab's node network namespace.",
		v("iptables-legacy", "--version"), v("ipset", "--version"))
}

// runQueueWait sums the time the threads of process pid spent runnable
// but waiting for a CPU (/proc/PID/task/TID/schedstat, second field).
func runQueueWait(pid int) (time.Duration, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("read run-queue wait: %w", err)
	}
	var total time.Duration
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(data))
		if len(f) < 2 {
			continue
		}
		if ns, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			total += time.Duration(ns)
		}
	}
	return total, nil
}
