#!/usr/bin/env bash
# kube-binaries.sh builds the real kube-apiserver and etcd used by the
# integration tests (internal/test/kubetest) from the Go module proxy and caches
# them by version:
#
#   ${PODGATE_CACHE:-$HOME/.cache/podgate}/kube/<KUBE_VERSION>/kube-apiserver
#   ${PODGATE_CACHE:-$HOME/.cache/podgate}/etcd/<ETCD_VERSION>/etcd
#
# It prints the two paths, one per line. When both binaries are already
# cached it does nothing else (well under a second). A cold build takes
# several minutes on a 2-core machine; the Go build cache makes a rebuild
# after deleting the binaries much faster.
#
# Each binary is built in a throwaway module in a temporary directory, never
# in the project's go.mod:
#   - kube-apiserver: require k8s.io/kubernetes at KUBE_VERSION and replace
#     every k8s.io staging module (which k8s.io/kubernetes points at
#     ./staging/src/...) with its published v0.X.Y release.
#   - etcd: require go.etcd.io/etcd/server/v3 at ETCD_VERSION and build its
#     root package, the etcd server main (a wrapper around etcdmain).
#
# Environment:
#   PODGATE_CACHE    cache root (default $HOME/.cache/podgate)
#   KUBE_VERSION     default v1.37.2
#   ETCD_VERSION     default v3.6.16
#   PODGATE_REBUILD  set to 1 to rebuild even if the binaries are cached
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CACHE="${PODGATE_CACHE:-${HOME}/.cache/podgate}"
KUBE_BIN="${CACHE}/kube/${KUBE_VERSION}/kube-apiserver"
ETCD_BIN="${CACHE}/etcd/${ETCD_VERSION}/etcd"

# Staging modules are released as v0.<minor>.<patch> alongside v1.<minor>.<patch>.
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"

log() { printf 'kube-binaries: %s\n' "$*" >&2; }

done_already() {
	[[ "${PODGATE_REBUILD:-0}" != 1 && -x "${KUBE_BIN}" && -x "${ETCD_BIN}" ]]
}

if done_already; then
	printf '%s\n%s\n' "${KUBE_BIN}" "${ETCD_BIN}"
	exit 0
fi

command -v go >/dev/null || { log "go is not on PATH"; exit 1; }

mkdir -p "${CACHE}"
# Serialise concurrent runs (e.g. parallel CI jobs on one machine).
exec 9>"${CACHE}/.kube-binaries.lock"
flock 9
if done_already; then
	printf '%s\n%s\n' "${KUBE_BIN}" "${ETCD_BIN}"
	exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/podgate-kube-binaries.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT
mkdir -p "${WORK}/out"

# The throwaway modules must not be influenced by a surrounding workspace or
# by the caller's module flags.
export GOWORK=off GOFLAGS=-buildvcs=false CGO_ENABLED=0

build_kube_apiserver() {
	local dir="${WORK}/kube" start=${SECONDS}
	mkdir -p "${dir}"
	cd "${dir}"
	log "building kube-apiserver ${KUBE_VERSION} in ${dir}"
	go mod init podgate.invalid/kubebuild >/dev/null 2>&1
	go mod edit -require="k8s.io/kubernetes@${KUBE_VERSION}"

	# Find the staging modules from k8s.io/kubernetes' own go.mod: they are
	# the ones it replaces with ./staging/src/k8s.io/<name>.
	local kmod staging
	kmod="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" |
		sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')"
	[[ -f "${kmod}" ]] || { log "cannot find go.mod of k8s.io/kubernetes@${KUBE_VERSION}"; return 1; }
	staging="$(sed -n 's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\2#p' "${kmod}" | sort -u)"
	[[ -n "${staging}" ]] || { log "no staging replaces found in ${kmod}"; return 1; }
	local m args=()
	for m in ${staging}; do
		args+=("-replace=${m}=${m}@${STAGING_VERSION}")
	done
	go mod edit "${args[@]}"
	log "replaced $(wc -w <<<"${staging}") staging modules with ${STAGING_VERSION}"

	cat >tools.go <<'EOF'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
EOF
	go mod tidy
	local minor="${KUBE_VERSION#v1.}"
	minor="${minor%%.*}"
	local pkg=k8s.io/component-base/version
	local ldflags="-s -w -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
	ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
	go build -trimpath -ldflags "${ldflags}" -o "${WORK}/out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
	"${WORK}/out/kube-apiserver" --version >&2
	mkdir -p "$(dirname "${KUBE_BIN}")"
	mv -f "${WORK}/out/kube-apiserver" "${KUBE_BIN}"
	log "kube-apiserver built in $((SECONDS - start))s"
}

build_etcd() {
	local dir="${WORK}/etcd" start=${SECONDS}
	mkdir -p "${dir}"
	cd "${dir}"
	log "building etcd ${ETCD_VERSION} in ${dir}"
	go mod init podgate.invalid/etcdbuild >/dev/null 2>&1
	go mod edit -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
	cat >tools.go <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
	go mod tidy
	go build -trimpath -ldflags "-s -w" -o "${WORK}/out/etcd" go.etcd.io/etcd/server/v3
	"${WORK}/out/etcd" --version >&2
	mkdir -p "$(dirname "${ETCD_BIN}")"
	mv -f "${WORK}/out/etcd" "${ETCD_BIN}"
	log "etcd built in $((SECONDS - start))s"
}

if [[ "${PODGATE_REBUILD:-0}" == 1 || ! -x "${ETCD_BIN}" ]]; then
	build_etcd
fi
if [[ "${PODGATE_REBUILD:-0}" == 1 || ! -x "${KUBE_BIN}" ]]; then
	build_kube_apiserver
fi
printf '%s\n%s\n' "${KUBE_BIN}" "${ETCD_BIN}"
