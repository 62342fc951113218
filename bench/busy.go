package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hogScript is what each hog runs: a shell loop of a builtin, which keeps
// a CPU busy in user space with no system calls, threads or memory.
const hogScript = "while :; do :; done"

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100
// on every Linux architecture Go supports (the kernel converts from its
// own HZ).
const userHZ = 100

// Hogs are CPU hogs: one process per CPU, each pinned to its CPU, at
// normal priority (SCHED_OTHER, nice 0), spinning until stopped. They
// stand for the pods that share a node's CPUs with podgate. Stop must be
// called; the hogs are also killed if the process that started them dies
// (PR_SET_PDEATHSIG). Methods are safe to call from several goroutines.
type Hogs struct {
	pids []int
	stop chan struct{}
	done chan error
}

// HogSample is the CPU time of every hog at one instant.
type HogSample struct {
	at  time.Time
	cpu []time.Duration
}

// StartHogs starts one hog per CPU 0..cpus-1, pinned to it; name is the
// hogs' $0 (visible in ps), so that they can be told apart.
func StartHogs(cpus int, name string) (*Hogs, error) {
	if cpus < 1 {
		return nil, fmt.Errorf("start hogs: %d CPUs", cpus)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		return nil, fmt.Errorf("start hogs: %w", err)
	}
	h := &Hogs{stop: make(chan struct{}), done: make(chan error, 1)}
	started := make(chan error, 1)
	go func() {
		// PR_SET_PDEATHSIG fires when the thread that forked exits, not
		// the process: keep this thread until the hogs are stopped.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var cmds []*exec.Cmd
		var err error
		for cpu := range cpus {
			cmd := exec.Command(sh, "-c", hogScript, name)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
			if err = cmd.Start(); err != nil {
				err = fmt.Errorf("start hog %d: %w", cpu, err)
				break
			}
			cmds = append(cmds, cmd)
			h.pids = append(h.pids, cmd.Process.Pid)
			if err = pinProcess(cmd.Process.Pid, cpuSet(cpu)); err != nil {
				err = fmt.Errorf("pin hog %d: %w", cpu, err)
				break
			}
		}
		if err == nil {
			started <- nil
			<-h.stop
		}
		var errs []error
		for _, c := range cmds {
			if kerr := c.Process.Kill(); kerr != nil && !errors.Is(kerr, os.ErrProcessDone) {
				errs = append(errs, kerr)
			}
			_ = c.Wait() // killed: the error is the signal
		}
		if err != nil {
			started <- errors.Join(append([]error{err}, errs...)...)
			close(h.done)
			return
		}
		h.done <- errors.Join(errs...)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start hogs: %w", err)
	}
	return h, nil
}

// PIDs returns the hogs' process IDs, hog i on CPU i.
func (h *Hogs) PIDs() []int { return h.pids }

// Sample reads the CPU time of every hog.
func (h *Hogs) Sample() (HogSample, error) {
	s := HogSample{at: time.Now(), cpu: make([]time.Duration, len(h.pids))}
	for i, pid := range h.pids {
		d, err := procCPUTime(pid)
		if err != nil {
			return s, fmt.Errorf("sample hogs: %w", err)
		}
		s.cpu[i] = d
	}
	return s, nil
}

// Share returns the CPU share each hog got between two samples (CPU time
// over wall time, 1 for a hog that had its CPU to itself) and their mean.
func (s HogSample) Share(later HogSample) (mean float64, perCPU []float64) {
	wall := later.at.Sub(s.at)
	if wall <= 0 || len(s.cpu) == 0 || len(later.cpu) != len(s.cpu) {
		return 0, nil
	}
	perCPU = make([]float64, len(s.cpu))
	for i := range s.cpu {
		perCPU[i] = float64(later.cpu[i]-s.cpu[i]) / float64(wall)
		mean += perCPU[i]
	}
	return mean / float64(len(s.cpu)), perCPU
}

// Stop kills the hogs and waits for them.
func (h *Hogs) Stop() error {
	close(h.stop)
	if err := <-h.done; err != nil {
		return fmt.Errorf("stop hogs: %w", err)
	}
	return nil
}

// procCPUTime returns utime+stime of process pid (all its threads, live
// and exited) from /proc/PID/stat.
func procCPUTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	return parseStatCPU(string(data))
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/PID/stat line. The command name (field 2) is in parentheses and
// may hold spaces and parentheses itself, so fields are counted from the
// last ')'.
func parseStatCPU(line string) (time.Duration, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, errors.New("parse /proc/PID/stat: no command name")
	}
	f := strings.Fields(line[i+1:])
	// f[0] is field 3 (state): utime is field 14, f[11].
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/PID/stat: %d fields after the command name", len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("parse /proc/PID/stat: cpu time %q", s)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// hogName names the hogs of the bench run in process pid with a lab
// prefix: "PREFIX-hog-PID".
func hogName(prefix string, pid int) string { return fmt.Sprintf("%s-hog-%d", prefix, pid) }
