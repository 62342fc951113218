package node

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFile is the name of the lock file inside [Config.StateDir].
const LockFile = "agent.lock"

// ErrLocked is wrapped by the error [AcquireLock] returns when another
// process holds the lock.
var ErrLocked = errors.New("held by another podgate agent")

// Lock is an exclusive lock on a state directory: while one process holds
// it, no other can, so that only one agent acts on a node. It is an
// flock(2) on [LockFile], which the kernel releases when the process ends,
// however it ends; the file itself stays (removing it would let a second
// agent lock a new file while the first still holds the old one).
//
// Its methods may be called from any goroutine.
type Lock struct {
	f    *os.File
	path string
}

// AcquireLock creates dir if needed and takes the lock on dir/[LockFile]
// without waiting. If another process holds it, the error wraps
// [ErrLocked] and names the file and, when it can be found, the holder's
// process ID. It writes the caller's process ID into the file.
func AcquireLock(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		holder := lockHolder(f)
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w%s: only one agent may run on a node", path, ErrLocked, holder)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Best effort: the holder's PID for the error of the next one.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f, path: path}, nil
}

// Path returns the lock file's path.
func (l *Lock) Path() string { return l.path }

// Dir returns the state directory the lock is for.
func (l *Lock) Dir() string { return filepath.Dir(l.path) }

// Release gives the lock up. The process ending does the same.
func (l *Lock) Release() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("release lock %s: %w", l.path, err)
	}
	return nil
}

// lockHolder returns " (pid N)" for the process holding the flock on f:
// from /proc/locks, which gives it in the caller's PID namespace, or else
// from what the holder wrote into the file (its PID in its own PID
// namespace). It returns "" if neither says.
func lockHolder(f *os.File) string {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil {
		if pid := procLocksHolder(st); pid > 0 {
			return fmt.Sprintf(" (pid %d)", pid)
		}
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n]))); err == nil && pid > 0 {
		return fmt.Sprintf(" (pid %d in its PID namespace)", pid)
	}
	return ""
}

// procLocksHolder finds the PID of the FLOCK holder of the file with st's
// device and inode in /proc/locks ("1: FLOCK ADVISORY WRITE PID
// MAJ:MIN:INODE 0 EOF", major and minor in hex), or 0.
func procLocksHolder(st unix.Stat_t) int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		// Blocked waiters are listed as "1: -> FLOCK ...".
		if len(fields) < 6 || fields[1] != "FLOCK" || fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}
