package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RunDir is the directory where named network namespaces are bind-mounted,
// the same one iproute2 uses.
const RunDir = "/run/netns"

// threadNetNS is the calling thread's own network namespace file.
const threadNetNS = "/proc/thread-self/ns/net"

// ErrInvalidName is returned for a namespace name that cannot be a file name
// under [RunDir].
var ErrInvalidName = errors.New("invalid network namespace name")

// ErrClosed is returned when a [Namespace] is used after Close or Delete.
var ErrClosed = errors.New("network namespace handle closed")

// Namespace is a named network namespace held open by a file descriptor.
//
// Name, Path, Do, Handle, Start and Sysctl may be called from several
// goroutines at once; Close and Delete must not run concurrently with any
// other method.
type Namespace struct {
	name string
	path string
	fd   int
}

// New creates a named network namespace and returns it open.
//
// The namespace is created on a dedicated locked OS thread, bind-mounted at
// RunDir/name (RunDir first made a shared mount of its own, as iproute2
// does, see prepareRunDir), and the thread is switched back (or destroyed if that fails);
// no other thread of the process changes namespace. It fails with an error
// wrapping [os.ErrExist] if the name is taken. On any failure nothing is left
// behind.
func New(name string) (*Namespace, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	if err := prepareRunDir(); err != nil {
		return nil, err
	}
	path := filepath.Join(RunDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create netns file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("close netns file %s: %w", path, err)
	}

	mounted := false
	err = onLockedThread(func() error {
		return unix.Unshare(unix.CLONE_NEWNET)
	}, func() error {
		if err := unix.Mount(threadNetNS, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount netns at %s: %w", path, err)
		}
		mounted = true
		return nil
	})
	if err == nil {
		var ns *Namespace
		ns, err = open(name, path)
		if err == nil {
			return ns, nil
		}
	}
	if mounted {
		if uerr := unix.Unmount(path, unix.MNT_DETACH); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s: %w", path, uerr))
		}
	}
	if rerr := os.Remove(path); rerr != nil {
		err = errors.Join(err, fmt.Errorf("remove %s: %w", path, rerr))
	}
	return nil, fmt.Errorf("create netns %q: %w", name, err)
}

// Open opens an existing named network namespace, for example one made by
// `ip netns add`. Delete on the result removes it.
func Open(name string) (*Namespace, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	return open(name, filepath.Join(RunDir, name))
}

func open(name, path string) (*Namespace, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	// A plain file left behind by a failed `ip netns add` is not a namespace.
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("statfs netns %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("open netns %s: not a namespace mount", path)
	}
	return &Namespace{name: name, path: path, fd: fd}, nil
}

// prepareRunDir makes RunDir a mount point of its own with shared
// propagation before a namespace file is mounted in it, as iproute2's
// `ip netns add` does: `mount --make-shared RunDir`, and if that fails
// because RunDir is no mount point, `mount --rbind RunDir RunDir` first.
// The setup runs under an exclusive flock on RunDir, as in iproute2, so
// that concurrent callers do not stack bind mounts.
//
// Without it, namespace files are mounted on the file system that holds
// RunDir; the next `ip netns add` by anyone then bind-mounts RunDir over
// itself, which copies those mounts and hides the originals under the new
// mount: unmounting removes only the copy, the namespace stays alive, and
// removing its file fails with EBUSY.
//
// One exception to iproute2's behaviour: if RunDir is no mount point but
// already holds namespace mounts (made by a program that does not do this,
// such as an older podgate), binding RunDir over itself would do exactly
// that to them, so it is left as it is; a later New, once they are gone,
// makes it shared.
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	lock, err := unix.Open(RunDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", RunDir, err)
	}
	defer unix.Close(lock)
	if err := flock(lock); err != nil {
		return fmt.Errorf("lock %s: %w", RunDir, err)
	}
	for made := false; ; made = true {
		err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || made {
			return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
		}
		// EINVAL: RunDir is no mount point.
		busy, err := mountsBelow(RunDir)
		if err != nil {
			return err
		}
		if busy {
			return nil
		}
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", RunDir, err)
		}
	}
}

// flock takes an exclusive lock on fd, retrying when a signal interrupts
// the wait.
func flock(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// mountsBelow reports whether any mount of the calling thread's mount
// namespace lies below dir.
func mountsBelow(dir string) (bool, error) {
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mount table: %w", err)
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT ...; MOUNTPOINT escapes
		// space, tab, newline and backslash in octal, which a name under
		// RunDir cannot contain unescaped anyway.
		f := strings.Fields(line)
		if len(f) >= 5 && strings.HasPrefix(f[4], prefix) {
			return true, nil
		}
	}
	return false, nil
}

func validateName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > 200 ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("check name %q: %w", name, ErrInvalidName)
	}
	return nil
}

// Name returns the namespace name (the file name under RunDir).
func (ns *Namespace) Name() string { return ns.name }

// Path returns the bind-mount path of the namespace.
func (ns *Namespace) Path() string { return ns.path }

// FD returns the namespace file descriptor (for example for
// [netlink.NsFd]); it is valid until Close or Delete, -1 afterwards.
func (ns *Namespace) FD() int { return ns.fd }

// Do runs fn on a separate goroutine locked to an OS thread that is switched
// into the namespace for the duration of the call, and returns fn's error.
//
// Only fn's own thread is in the namespace: goroutines fn starts are not.
// Sockets fn opens stay in the namespace and may be used anywhere later.
// Because fn runs on another goroutine, it must not call t.FailNow (or
// Fatal, Skip) of a *testing.T; return an error instead. A panic in fn is
// re-raised in the caller after the thread has been restored. If the thread
// cannot be switched back, it is destroyed and Do reports an error.
func (ns *Namespace) Do(fn func() error) error {
	if ns.fd < 0 {
		return fmt.Errorf("enter netns %q: %w", ns.name, ErrClosed)
	}
	fd := ns.fd
	err := onLockedThread(func() error {
		return unix.Setns(fd, unix.CLONE_NEWNET)
	}, fn)
	if err != nil {
		return fmt.Errorf("netns %q: %w", ns.name, err)
	}
	return nil
}

// Handle returns a netlink handle whose sockets live in the namespace, so
// links, addresses, routes and neighbours of the namespace can be configured
// from any goroutine without switching threads. The caller must Close it.
// A handle is not safe for concurrent use.
//
// The sockets are opened with netlink.NewHandle inside Do rather than with
// netlink.NewHandleAt, whose own thread switch unlocks the thread even when
// switching back failed.
func (ns *Namespace) Handle() (*netlink.Handle, error) {
	var h *netlink.Handle
	err := ns.Do(func() error {
		var err error
		h, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return h, nil
}

// Start starts cmd (see [exec.Cmd.Start]) inside the namespace. The caller
// then waits for it with cmd.Wait as usual.
//
// The child is forked from a locked OS thread that was switched into the
// namespace, so it inherits that namespace; no `ip netns exec` binary is
// needed and the child shares the caller's mount namespace. Unlike
// `ip netns exec`, /sys is not remounted (it still shows the caller's
// devices) and /etc/netns/NAME is not bind-mounted over /etc. Do not set
// cmd.SysProcAttr.Pdeathsig: it fires when the forking thread exits, and
// that thread is a pooled runtime thread.
func (ns *Namespace) Start(cmd *exec.Cmd) error {
	if err := ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return nil
}

// Run runs the command name with args in the namespace ([Namespace.Start]),
// with stdin as its standard input unless it is empty, waits for it and
// returns its standard output. If it fails, the error names the command
// and carries its standard error.
func (ns *Namespace) Run(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := ns.Start(cmd); err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// Sysctl writes value to the sysctl key inside the namespace, for example
// Sysctl("net.ipv4.ip_forward", "1"). The key may use dots or slashes. Only
// per-namespace keys (net.*) are namespaced by the kernel; writing any other
// key would change the host, so Sysctl refuses keys outside net.
func (ns *Namespace) Sysctl(key, value string) error {
	rel := key
	if !strings.Contains(rel, "/") {
		rel = strings.ReplaceAll(rel, ".", "/")
	}
	if !strings.HasPrefix(rel, "net/") || strings.Contains(rel, "..") {
		return fmt.Errorf("write sysctl %q: only net.* keys are per namespace", key)
	}
	path := filepath.Join("/proc/sys", rel)
	err := ns.Do(func() error {
		return os.WriteFile(path, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("write sysctl %s: %w", key, err)
	}
	return nil
}

// Close releases the file descriptor without deleting the namespace.
func (ns *Namespace) Close() error {
	if ns.fd < 0 {
		return nil
	}
	fd := ns.fd
	ns.fd = -1
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close netns %q: %w", ns.name, err)
	}
	return nil
}

// Delete closes the namespace and removes its name, like `ip netns delete`.
// The kernel destroys the namespace, and with it every veth with an end in
// it, once nothing else references it. Delete of an already deleted
// namespace is not an error.
func (ns *Namespace) Delete() error {
	err := ns.Close()
	if uerr := unix.Unmount(ns.path, unix.MNT_DETACH); uerr != nil &&
		!errors.Is(uerr, unix.EINVAL) && !errors.Is(uerr, unix.ENOENT) {
		err = errors.Join(err, fmt.Errorf("unmount netns %s: %w", ns.path, uerr))
	}
	if rerr := os.Remove(ns.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("remove netns %s: %w", ns.path, rerr))
	}
	return err
}

// onLockedThread runs enter and then fn on a new goroutine locked to its OS
// thread, then switches the thread back to the namespace it started in. If
// enter fails the thread is unchanged. If switching back fails, the goroutine
// exits still locked so the runtime destroys the thread. A panic in fn is
// re-raised on the calling goroutine.
func onLockedThread(enter, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(threadNetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current netns: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("switch netns: %w", err)}
			return
		}
		var res result
		func() {
			defer func() {
				if v := recover(); v != nil {
					res = result{panicked: true, value: v}
				}
			}()
			res.err = fn()
		}()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			res.err = errors.Join(res.err, fmt.Errorf("restore netns (thread discarded): %w", err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(res.value)
	}
	return res.err
}
