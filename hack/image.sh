#!/usr/bin/env bash
# image.sh builds the podgate container image with podman, without a
# registry: it builds bin/podgate on the host (make build: static,
# CGO_ENABLED=0) and then the Dockerfile's `local` target, which is FROM
# scratch and only COPYs that binary. It then proves the image works by
# running `podgate version` in it.
#
#   hack/image.sh [build]        build the binary and the image, run `version` in it
#   hack/image.sh podman ARGS... run podman with this script's configuration
#                                (e.g. `hack/image.sh podman images`)
#   hack/image.sh env            print the exports that point podman at that
#                                configuration (eval "$(hack/image.sh env)")
#   hack/image.sh release-check  build the Dockerfile's default (release)
#                                target offline, with a local stand-in for
#                                BUILDER_IMAGE and BASE_IMAGE=scratch, run
#                                `version` in it, then remove both images
#
# podman runs with its own configuration, written by this script under the
# cache directory and selected through environment variables, so the host's
# /etc/containers and /var/lib/containers are neither read for settings nor
# written:
#   CONTAINERS_CONF            containers.conf: runtime runc, cgroupfs, file
#                              events and locks, no network, low ulimits
#   CONTAINERS_STORAGE_CONF    storage.conf: vfs driver, graphroot in the cache
#   CONTAINERS_REGISTRIES_CONF registries.conf: no search registries, so an
#                              unqualified name never goes to the network
# Containers run with --network=none: podman never creates a bridge, veth or
# firewall rule on the host.
#
# It installs podman and runc from Debian when they are missing (as root;
# hack/deps.sh image).
#
# Environment:
#   IMAGE          image name (default localhost/podgate:dev)
#   VERSION        version stamped into the binary and the labels
#                  (default: git describe, as in the Makefile)
#   PODGATE_CACHE  cache root (default $HOME/.cache/podgate); podman's image
#                  store lives in $PODGATE_CACHE/podman
#   PODGATE_PODMAN_RUNDIR  podman's run-time state (default
#                  /dev/shm/podgate-podman, a tmpfs, so a reboot wipes it as
#                  podman expects; $PODGATE_CACHE/podman/run if /dev/shm is
#                  missing)
#   PODGATE_NO_INSTALL=1   fail instead of installing podman/runc
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-localhost/podgate:dev}"
CACHE="${PODGATE_CACHE:-${HOME}/.cache/podgate}"
CONF_DIR="${CACHE}/podman"
if [[ -z "${PODGATE_PODMAN_RUNDIR:-}" ]]; then
	if [[ -d /dev/shm && -w /dev/shm ]]; then
		PODGATE_PODMAN_RUNDIR=/dev/shm/podgate-podman
	else
		PODGATE_PODMAN_RUNDIR="${CONF_DIR}/run"
	fi
fi
RUN_DIR="${PODGATE_PODMAN_RUNDIR}"

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

# ensure_podman installs podman and runc when missing (hack/packages.txt,
# group image).
ensure_podman() {
	bash "${ROOT}/hack/deps.sh" image
}

# ulimit_pair NAME FLAG prints NAME=N:N with N = min(4096, the current hard
# limit). podman's defaults raise nofile and nproc to 1048576 and 4194304,
# which fails without CAP_SYS_RESOURCE ("error setting rlimit type 6/7:
# operation not permitted"), and podman itself lowers its own nproc hard
# limit (to 32768 here), so the shell's hard limit is not safe either; a low
# fixed value is.
ulimit_pair() {
	local name="$1" flag="$2" hard n=4096
	hard="$(ulimit -H "-${flag}")"
	if [[ "${hard}" != unlimited ]] && ((hard < n)); then
		n="${hard}"
	fi
	printf '"%s=%s:%s"' "${name}" "${n}" "${n}"
}

write_config() {
	mkdir -p "${CONF_DIR}/storage" "${CONF_DIR}/cni" "${RUN_DIR}/storage" "${RUN_DIR}/libpod"
	local ulimits
	ulimits="$(ulimit_pair nofile n), $(ulimit_pair nproc u)"
	cat >"${CONF_DIR}/containers.conf.tmp" <<EOF
# Written by hack/image.sh; selected with CONTAINERS_CONF. Do not edit.
[containers]
# No network namespace setup at all: nothing is created on the host.
netns = "none"
# Low limits that never need raising a hard limit (see ulimit_pair in
# hack/image.sh).
default_ulimits = [${ulimits}]
log_driver = "k8s-file"

[network]
network_backend = "cni"
# An empty directory of our own: the host's /etc/cni/net.d is not read.
network_config_dir = "${CONF_DIR}/cni"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${CONF_DIR}/events.log"
# File locks under tmp_dir instead of the shared /dev/shm/libpod_lock.
lock_type = "file"
tmp_dir = "${RUN_DIR}/libpod"
static_dir = "${CONF_DIR}/storage/libpod"
volume_path = "${CONF_DIR}/storage/volumes"
image_copy_tmp_dir = "${CONF_DIR}/tmp"
EOF
	cat >"${CONF_DIR}/storage.conf.tmp" <<EOF
# Written by hack/image.sh; selected with CONTAINERS_STORAGE_CONF.
[storage]
# vfs works on any file system (also inside a container or on overlayfs);
# the image is one small layer, so copying it is cheap.
driver = "vfs"
graphroot = "${CONF_DIR}/storage"
runroot = "${RUN_DIR}/storage"
EOF
	cat >"${CONF_DIR}/registries.conf.tmp" <<EOF
# Written by hack/image.sh; selected with CONTAINERS_REGISTRIES_CONF.
# No registry is reachable: never search one for an unqualified name.
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
	mkdir -p "${CONF_DIR}/tmp"
	local f
	for f in containers storage registries; do
		mv "${CONF_DIR}/${f}.conf.tmp" "${CONF_DIR}/${f}.conf"
	done
}

export_env() {
	export CONTAINERS_CONF="${CONF_DIR}/containers.conf"
	export CONTAINERS_STORAGE_CONF="${CONF_DIR}/storage.conf"
	export CONTAINERS_REGISTRIES_CONF="${CONF_DIR}/registries.conf"
	export TMPDIR="${CONF_DIR}/tmp"
}

version() {
	if [[ -n "${VERSION:-}" ]]; then
		printf '%s\n' "${VERSION}"
	else
		git -C "${ROOT}" describe --always --dirty 2>/dev/null || echo dev
	fi
}

build() {
	ensure_podman
	write_config
	export_env
	local version revision created start
	start="$(date +%s)"
	version="$(version)"
	revision="$(git -C "${ROOT}" rev-parse HEAD 2>/dev/null || echo unknown)"
	created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

	log "building bin/podgate ${version} (static)"
	make -s -C "${ROOT}" build VERSION="${version}"
	# The image is FROM scratch: a binary that needs a libc would not start.
	if ! go version -m "${ROOT}/bin/podgate" | grep -q 'CGO_ENABLED=0'; then
		die "bin/podgate is not a static (CGO_ENABLED=0) build"
	fi

	log "building ${IMAGE} (Dockerfile target local)"
	podman build --quiet --target local --pull=never --network=none \
		--build-arg VERSION="${version}" \
		--build-arg REVISION="${revision}" \
		--build-arg CREATED="${created}" \
		--tag "${IMAGE}" --file "${ROOT}/Dockerfile" "${ROOT}" >/dev/null
	# A rebuild leaves the previous image untagged; vfs keeps a full copy
	# of each, so drop them (this store is ours alone).
	podman image prune --force >/dev/null

	log "checking: podman run --rm ${IMAGE} version"
	local out
	out="$(podman run --rm --network=none "${IMAGE}" version)"
	printf '%s\n' "${out}"
	[[ "${out}" == "podgate ${version} "* ]] || die "unexpected version output: ${out}"
	log "${IMAGE} ok ($(($(date +%s) - start)) s)"
}

# release_check proves that the release target (the one a registry-backed
# CI builds) works, without any registry: the builder image is made here
# FROM scratch out of this host's Go toolchain and a static busybox for
# RUN's /bin/sh; `go mod download` reads the host's module cache (mounted
# read-only, GOPROXY=off) and the build runs with --network=none.
release_check() {
	ensure_podman
	if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
		[[ "${PODGATE_NO_INSTALL:-}" != 1 ]] || die "a static /bin/busybox is required (apt-get install busybox-static)"
		log "installing busybox-static from Debian"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
	fi
	write_config
	export_env
	local goroot modcache gocache builder release version out
	goroot="$(go env GOROOT)"
	modcache="$(go env GOMODCACHE)"
	gocache="$(go env GOCACHE)"
	builder=localhost/podgate-builder-stand-in:local
	release="${IMAGE%:*}:release-check"
	version="$(version)"
	CHECK_CTX="$(mktemp -d)"
	CHECK_IMAGES=("${builder}" "${release}")
	trap release_check_cleanup EXIT

	log "making ${builder} from ${goroot} and /bin/busybox"
	mkdir -p "${CHECK_CTX}/root/bin" "${CHECK_CTX}/root/usr/local" "${CHECK_CTX}/root/tmp" "${CHECK_CTX}/root/root"
	cp /bin/busybox "${CHECK_CTX}/root/bin/busybox"
	ln -s busybox "${CHECK_CTX}/root/bin/sh"
	cp -a "${goroot}" "${CHECK_CTX}/root/usr/local/go"
	printf '%s\n' \
		'FROM scratch' \
		'COPY root/ /' \
		'ENV PATH=/usr/local/go/bin:/bin HOME=/root GOTOOLCHAIN=local GOMODCACHE=/go/pkg/mod GOPROXY=off' \
		>"${CHECK_CTX}/Containerfile"
	podman build --quiet --network=none --tag "${builder}" "${CHECK_CTX}" >/dev/null

	log "building ${release} (Dockerfile target release, BASE_IMAGE=scratch)"
	podman build --quiet --pull=never --network=none \
		--build-arg BUILDER_IMAGE="${builder}" --build-arg BASE_IMAGE=scratch \
		--build-arg VERSION="${version}" \
		--volume "${modcache}:/go/pkg/mod:ro" --volume "${gocache}:/root/.cache/go-build" \
		--tag "${release}" --file "${ROOT}/Dockerfile" "${ROOT}" >/dev/null
	out="$(podman run --rm --network=none "${release}" version)"
	printf '%s\n' "${out}"
	[[ "${out}" == "podgate ${version} "* ]] || die "unexpected version output: ${out}"
	log "release target ok"
}

release_check_cleanup() {
	rm -rf "${CHECK_CTX}"
	podman rmi --force "${CHECK_IMAGES[@]}" >/dev/null 2>&1 || true
	podman image prune --force >/dev/null 2>&1 || true
}

cmd="${1:-build}"
case "${cmd}" in
build)
	build
	;;
podman)
	shift
	ensure_podman
	write_config
	export_env
	exec podman "$@"
	;;
release-check)
	release_check
	;;
env)
	write_config
	printf 'export CONTAINERS_CONF=%q\n' "${CONF_DIR}/containers.conf"
	printf 'export CONTAINERS_STORAGE_CONF=%q\n' "${CONF_DIR}/storage.conf"
	printf 'export CONTAINERS_REGISTRIES_CONF=%q\n' "${CONF_DIR}/registries.conf"
	;;
*)
	die "usage: $0 [build | podman ARGS... | env | release-check]"
	;;
esac
