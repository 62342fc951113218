#!/usr/bin/env bash
# Regenerates the BPF objects of fastpath/offload (bpf2go: bpf/offload.c →
# offload_bpfel.{go,o}, offload_bpfeb.{go,o}), which are committed so that
# building needs no clang. Installs clang, llvm (llvm-strip) and libbpf-dev
# with apt-get when they are missing and this runs as root.
#
#   hack/bpf-generate.sh          regenerate
#   hack/bpf-generate.sh --check  regenerate, then fail if the committed
#                                 files differ (needs the same clang version
#                                 as the one that built them: Debian 12's 14)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bpf-generate.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

pkgs=(clang llvm libbpf-dev linux-libc-dev)
missing() {
	! command -v clang >/dev/null || ! command -v llvm-strip >/dev/null ||
		[[ ! -f /usr/include/bpf/bpf_helpers.h ]] || [[ ! -f /usr/include/linux/bpf.h ]]
}
if missing; then
	[[ "${PODGATE_NO_INSTALL:-}" != 1 ]] || die "clang, llvm and libbpf-dev are required (apt-get install ${pkgs[*]})"
	[[ "$(id -u)" == 0 ]] || die "clang, llvm or libbpf-dev are missing; install them as root: apt-get install ${pkgs[*]}"
	log "installing ${pkgs[*]} from Debian"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

log "$(clang --version | head -n1)"
go generate ./fastpath/offload/
if [[ "${1:-}" == --check ]]; then
	if ! git diff --exit-code --stat -- fastpath/offload/; then
		die "the committed BPF objects do not match bpf/offload.c (or this clang is another version): commit the regenerated files"
	fi
	log "committed BPF objects match the source"
fi
