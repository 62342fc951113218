package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// ownerFile, in a lab's directory, records the process that built the lab:
// "PID STARTTIME" (the start time in clock ticks since boot, field 22 of
// /proc/PID/stat), so that a reused PID is not mistaken for the owner.
const ownerFile = "owner"

func writeOwner(dir string) error {
	st, err := procStart(os.Getpid())
	if err != nil {
		return fmt.Errorf("record lab owner: %w", err)
	}
	data := fmt.Sprintf("%d %d\n", os.Getpid(), st)
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(data), 0o600); err != nil {
		return fmt.Errorf("record lab owner: %w", err)
	}
	return nil
}

// procStart returns the start time of process pid (clock ticks since
// boot).
func procStart(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); the start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// labAlive reports whether the lab with the given ID (PREFIX-PID-XXXXXX)
// is still owned by a running process.
func labAlive(id string, pid int) bool {
	data, err := os.ReadFile(filepath.Join(os.TempDir(), id, ownerFile))
	if err == nil {
		var opid int
		var ostart uint64
		if _, err := fmt.Sscanf(string(data), "%d %d", &opid, &ostart); err == nil {
			st, err := procStart(opid)
			return err == nil && st == ostart && !zombie(opid)
		}
	}
	// No owner record (directory removed): trust the PID alone.
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// CleanupReport is what [Cleanup] removed or left.
type CleanupReport struct {
	// Namespaces and Dirs are the namespaces and directories removed.
	Namespaces, Dirs []string
	// Killed are the PIDs of processes that were still running in removed
	// namespaces (agents of killed labs).
	Killed []int
	// Alive are the IDs of labs skipped because their owner still runs.
	Alive []string
}

// Cleanup removes what labs with the given prefix left behind when they
// were killed: namespaces under /run/netns named PREFIX-PID-XXXXXX-...
// and directories PREFIX-PID-XXXXXX in os.TempDir(), for every lab whose
// owning process no longer runs. Processes still running in those
// namespaces (an agent outlives a lab killed with SIGKILL) are sent
// SIGTERM and, after 5 seconds, SIGKILL. Labs whose owner still runs are
// left alone. It keeps going after errors and returns them all.
func Cleanup(prefix string) (CleanupReport, error) {
	var rep CleanupReport
	if err := checkPrefix(prefix); err != nil {
		return rep, fmt.Errorf("cleanup: %w", err)
	}
	re, err := regexp.Compile(`^(` + regexp.QuoteMeta(prefix) + `-([0-9]+)-[0-9a-f]{6})(-|$)`)
	if err != nil {
		return rep, fmt.Errorf("cleanup: %w", err)
	}
	labs := map[string]int{} // id → pid
	nsByLab := map[string][]string{}
	dirByLab := map[string]string{}
	var errs []error

	if entries, err := os.ReadDir(netns.RunDir); err == nil {
		for _, e := range entries {
			if m := re.FindStringSubmatch(e.Name()); m != nil && m[3] == "-" {
				pid, _ := strconv.Atoi(m[2])
				labs[m[1]] = pid
				nsByLab[m[1]] = append(nsByLab[m[1]], e.Name())
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list %s: %w", netns.RunDir, err))
	}
	if entries, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range entries {
			if m := re.FindStringSubmatch(e.Name()); m != nil && m[3] == "" && e.IsDir() {
				pid, _ := strconv.Atoi(m[2])
				labs[m[1]] = pid
				dirByLab[m[1]] = filepath.Join(os.TempDir(), e.Name())
			}
		}
	} else {
		errs = append(errs, fmt.Errorf("list %s: %w", os.TempDir(), err))
	}

	ids := make([]string, 0, len(labs))
	for id := range labs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if labAlive(id, labs[id]) {
			rep.Alive = append(rep.Alive, id)
			continue
		}
		names := nsByLab[id]
		sort.Strings(names)
		killed, err := killInNamespaces(names)
		rep.Killed = append(rep.Killed, killed...)
		if err != nil {
			errs = append(errs, err)
		}
		for _, name := range names {
			if err := removeNamespace(name); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Namespaces = append(rep.Namespaces, name)
		}
		if d, ok := dirByLab[id]; ok {
			if err := unmountUnder(d); err != nil {
				errs = append(errs, err)
			}
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
			} else {
				rep.Dirs = append(rep.Dirs, d)
			}
		}
	}
	if len(errs) > 0 {
		return rep, fmt.Errorf("cleanup: %w", errors.Join(errs...))
	}
	return rep, nil
}

// removeNamespace deletes a named namespace, or removes the file left by
// a namespace that was never mounted.
func removeNamespace(name string) error {
	ns, err := netns.Open(name)
	if err != nil {
		path := filepath.Join(netns.RunDir, name)
		_ = unix.Unmount(path, unix.MNT_DETACH)
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, rerr)
		}
		return nil
	}
	return ns.Delete()
}

// killInNamespaces stops every process whose network namespace is one of
// the named ones (found by comparing /proc/PID/ns/net with the namespace
// files): SIGTERM, then SIGKILL to those left after 5 seconds.
func killInNamespaces(names []string) ([]int, error) {
	type nsID struct{ dev, ino uint64 }
	want := map[nsID]bool{}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(netns.RunDir, n), &st); err == nil {
			want[nsID{st.Dev, st.Ino}] = true
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
			continue
		}
		if want[nsID{st.Dev, st.Ino}] {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) && unix.Kill(pid, 0) == nil && !zombie(pid) {
			time.Sleep(50 * time.Millisecond)
		}
		if unix.Kill(pid, 0) == nil && !zombie(pid) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
	return pids, nil
}

// zombie reports whether pid has exited but not been reaped.
func zombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// unmountUnder unmounts (lazily) every mount at or under dir, deepest
// first: the bpffs an agent mounted for its pins.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	dir = filepath.Clean(dir)
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
