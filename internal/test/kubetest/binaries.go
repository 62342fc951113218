package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Versions of the control plane binaries that hack/kube-binaries.sh builds.
const (
	// KubeVersion is the kube-apiserver version.
	KubeVersion = "v1.37.2"
	// EtcdVersion is the etcd server version.
	EtcdVersion = "v3.6.16"
)

// Environment variables that influence where the binaries are found.
const (
	// EnvAPIServer, when set, is the path of the kube-apiserver binary.
	EnvAPIServer = "PODGATE_KUBE_APISERVER"
	// EnvEtcd, when set, is the path of the etcd binary.
	EnvEtcd = "PODGATE_ETCD"
	// EnvCache is the cache root of hack/kube-binaries.sh
	// (default $HOME/.cache/podgate).
	EnvCache = "PODGATE_CACHE"
	// EnvRequire set to "1" makes Start fail, instead of skip, a test when
	// the binaries are missing. `make test` sets it.
	EnvRequire = "PODGATE_REQUIRE_KUBE"
)

// Binaries are the paths of the control plane executables.
type Binaries struct {
	// APIServer is the path of kube-apiserver.
	APIServer string
	// Etcd is the path of the etcd server.
	Etcd string
}

// MissingBinariesError reports binaries that FindBinaries could not find.
type MissingBinariesError struct {
	// Paths are the paths that do not hold an executable file.
	Paths []string
}

// Error implements error.
func (e *MissingBinariesError) Error() string {
	return fmt.Sprintf("control plane binaries not found: %s; run hack/kube-binaries.sh (or set %s and %s)",
		strings.Join(e.Paths, ", "), EnvAPIServer, EnvEtcd)
}

// CacheDir returns the cache root used by hack/kube-binaries.sh:
// $PODGATE_CACHE, or $HOME/.cache/podgate.
func CacheDir() (string, error) {
	if dir := os.Getenv(EnvCache); dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the podgate cache directory: %w", err)
	}
	return filepath.Join(home, ".cache", "podgate"), nil
}

// FindBinaries locates kube-apiserver and etcd: the paths in
// PODGATE_KUBE_APISERVER and PODGATE_ETCD when set, else the cache paths of
// hack/kube-binaries.sh. It returns a *MissingBinariesError when one of
// them is not an executable file.
func FindBinaries() (Binaries, error) {
	var b Binaries
	b.APIServer = os.Getenv(EnvAPIServer)
	b.Etcd = os.Getenv(EnvEtcd)
	if b.APIServer == "" || b.Etcd == "" {
		cache, err := CacheDir()
		if err != nil {
			return b, err
		}
		if b.APIServer == "" {
			b.APIServer = filepath.Join(cache, "kube", KubeVersion, "kube-apiserver")
		}
		if b.Etcd == "" {
			b.Etcd = filepath.Join(cache, "etcd", EtcdVersion, "etcd")
		}
	}
	var missing []string
	for _, p := range []string{b.APIServer, b.Etcd} {
		if !isExecutable(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return b, &MissingBinariesError{Paths: missing}
	}
	return b, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
