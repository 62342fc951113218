package offload

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// PrepareBPFFS makes dir a directory on a bpffs for [Config.PinDir]: if
// dir's parent is on a bpffs (as /sys/fs/bpf is on most hosts), dir is
// created there; otherwise a bpffs is mounted on the parent, which needs
// CAP_SYS_ADMIN, and the returned unmount, non-nil, undoes it (call it
// only once nothing is pinned there any more: see [Offload.Unpin]).
func PrepareBPFFS(dir string) (unmount func() error, err error) {
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("prepare bpffs: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(parent, &st); err != nil {
		return nil, fmt.Errorf("prepare bpffs: statfs %s: %w", parent, err)
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", parent, "bpf", 0, "mode=0700"); err != nil {
			return nil, fmt.Errorf("prepare bpffs: %s is not a bpffs and mounting one there failed (mount -t bpf bpf %s, or give a directory on a bpffs): %w", parent, parent, err)
		}
		unmount = func() error {
			if err := unix.Unmount(parent, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount bpffs %s: %w", parent, err)
			}
			return nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		if unmount != nil {
			_ = unmount()
		}
		return nil, fmt.Errorf("prepare bpffs: %w", err)
	}
	return unmount, nil
}
