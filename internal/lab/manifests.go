package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/podgate/podgate/policy"
)

// manifestFiles lists the files policy.Load reads for paths: each file
// given, and the *.yaml, *.yml and *.json files of each directory given
// (not recursively).
func manifestFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		if !fi.IsDir() {
			out = append(out, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					out = append(out, filepath.Join(p, e.Name()))
				}
			}
		}
	}
	return out, nil
}

// copyManifests copies the manifest files of paths into dir as
// NN-basename, so that files of the same name in different directories do
// not collide. It returns the names written.
func copyManifests(paths []string, dir string) ([]string, error) {
	files, err := manifestFiles(paths)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for i, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("copy manifests: %w", err)
		}
		name := fmt.Sprintf("%02d-%s", i, filepath.Base(f))
		if ext := strings.ToLower(filepath.Ext(name)); ext != ".yaml" && ext != ".yml" && ext != ".json" {
			name += ".yaml" // a file given by name is read whatever it is called
		}
		if err := writeFileAtomic(dir, name, data); err != nil {
			return nil, fmt.Errorf("copy manifests: %w", err)
		}
		names = append(names, name)
	}
	return names, nil
}

// writeFileAtomic writes data to dir/name through a temporary file in
// dir's parent (which the agents do not watch) and a rename, so that a
// reader of dir never sees a partial file.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(dir), ".manifest-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func checkManifestName(name string) error {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return fmt.Errorf("manifest name %q: want a plain file name", name)
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return nil
	}
	return fmt.Errorf("manifest name %q: want .yaml, .yml or .json", name)
}

// Apply replaces the manifests the agents read with those of paths (files
// or directories, as for Build) and recompiles the lab's expectations from
// them. The new manifests are loaded and compiled first: if they are
// invalid nothing changes. The new files are renamed into place one by
// one, then the old ones are removed; a reader in between sees both sets,
// which fails to load (objects declared twice), so a watching agent keeps
// its previous table until the change is complete.
//
// Apply changes policies and labels; pods and outside hosts that the
// manifests add or remove are not created or deleted.
func (l *Lab) Apply(paths ...string) error {
	m, err := policy.Load(paths...)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if _, err := policy.Compile(&m.Cluster); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	dir := l.ManifestDir()
	old, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	names, err := copyManifests(paths, dir)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	keep := map[string]bool{}
	for _, n := range names {
		keep[n] = true
	}
	for _, e := range old {
		if !keep[e.Name()] {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
		}
	}
	return l.reloadLocked()
}

// WriteManifest writes one manifest file (a plain name ending in .yaml,
// .yml or .json) into the agents' manifest directory, atomically, and
// recompiles the lab's expectations. If the directory no longer loads, the
// file stays (an agent is expected to keep its previous table) and the
// error says why; the expectations are unchanged.
func (l *Lab) WriteManifest(name string, data []byte) error {
	if err := checkManifestName(name); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	if err := writeFileAtomic(l.ManifestDir(), name, data); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return l.reloadLocked()
}

// RemoveManifest removes one manifest file from the agents' manifest
// directory and recompiles the lab's expectations.
func (l *Lab) RemoveManifest(name string) error {
	if err := checkManifestName(name); err != nil {
		return fmt.Errorf("remove manifest: %w", err)
	}
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	if err := os.Remove(filepath.Join(l.ManifestDir(), name)); err != nil {
		return fmt.Errorf("remove manifest: %w", err)
	}
	return l.reloadLocked()
}

// ManifestNames returns the names of the files in the manifest directory.
func (l *Lab) ManifestNames() ([]string, error) {
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	entries, err := os.ReadDir(l.ManifestDir())
	if err != nil {
		return nil, fmt.Errorf("list manifests: %w", err)
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out, nil
}

// reloadLocked compiles the manifest directory into the lab's table. The
// caller holds manifestMu.
func (l *Lab) reloadLocked() error {
	m, err := policy.Load(l.ManifestDir())
	if err != nil {
		return fmt.Errorf("reload manifests: %w", err)
	}
	t, err := policy.Compile(&m.Cluster)
	if err != nil {
		return fmt.Errorf("reload manifests: %w", err)
	}
	l.table.Store(t)
	return nil
}
