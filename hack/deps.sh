#!/usr/bin/env bash
# deps.sh installs the Debian packages of the set-up groups it is given,
# from the one list hack/packages.txt, when some of them are missing:
#
#   hack/deps.sh GROUP...         install what the groups need (demo, test, image)
#   hack/deps.sh --list GROUP...  print the groups' packages, one a line: the
#                                 package, then the commands that show it is
#                                 installed
#
# A package counts as installed when every command its line names is on
# PATH (without root, /usr/sbin and /sbin count too). When nothing is
# missing deps.sh prints nothing and runs no apt-get, so it needs no
# network. Otherwise, as root, it runs apt-get update once and then
# apt-get install -y --no-install-recommends with the missing packages,
# quietly: one line says what it installs, and apt's output is shown only
# when apt fails. Without root, or with PODGATE_NO_INSTALL=1, it prints the
# one command that installs them and fails.
set -euo pipefail

dir="${BASH_SOURCE[0]%/*}"
[[ "${dir}" != "${BASH_SOURCE[0]}" ]] || dir=.
LIST="${dir}/packages.txt"

log() { printf 'deps.sh: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}
usage() { die "usage: hack/deps.sh [--list] GROUP... (groups: demo, test, image)"; }

# select_packages GROUP... fills PKGS, CMDS (comma-separated) and WHY with
# the lines of the list that name one of the groups.
PKGS=() CMDS=() WHY=()
select_packages() {
	local line pkg groups cmds why n=0 known=, want
	while IFS= read -r line; do
		n=$((n + 1))
		[[ "${line}" =~ ^[[:space:]]*(#|$) ]] && continue
		[[ "${line}" =~ ^([^[:space:]#]+)[[:space:]]+([^[:space:]#]+)[[:space:]]+([^[:space:]#]+)[[:space:]]*#[[:space:]]*(.+)$ ]] ||
			die "${LIST}:${n}: want: package groups commands # who needs it"
		pkg="${BASH_REMATCH[1]}" groups="${BASH_REMATCH[2]}" cmds="${BASH_REMATCH[3]}" why="${BASH_REMATCH[4]}"
		known+="${groups},"
		for want in "$@"; do
			if [[ ",${groups}," == *",${want},"* ]]; then
				PKGS+=("${pkg}") CMDS+=("${cmds}") WHY+=("${why}")
				break
			fi
		done
	done <"${LIST}"
	for want in "$@"; do
		[[ "${known}" == *",${want},"* ]] || die "unknown group ${want} (see ${LIST})"
	done
}

mode=install
if [[ "${1:-}" == --list ]]; then
	mode=list
	shift
fi
[[ $# -gt 0 && "$1" != -* ]] || usage
select_packages "$@"

if [[ "${mode}" == list ]]; then
	for i in "${!PKGS[@]}"; do
		printf '%s %s\n' "${PKGS[i]}" "${CMDS[i]//,/ }"
	done
	exit 0
fi

root=false
[[ "$(id -u)" == 0 ]] && root=true
search="${PATH}"
# Debian puts iptables, ip and ipset in /usr/sbin, which a user's PATH
# often lacks: they are installed all the same.
${root} || search+=":/usr/sbin:/sbin"

# installed PKG-INDEX reports whether every command of the package is found.
installed() {
	local c cs
	IFS=, read -ra cs <<<"${CMDS[$1]}"
	for c in "${cs[@]}"; do
		PATH="${search}" command -v "${c}" >/dev/null || return 1
	done
}

missing=()
for i in "${!PKGS[@]}"; do
	installed "${i}" || missing+=("${i}")
done
[[ ${#missing[@]} -gt 0 ]] || exit 0

names=()
for i in "${missing[@]}"; do
	names+=("${PKGS[i]}")
done
install="apt-get install -y --no-install-recommends ${names[*]}"

if ! ${root} || [[ "${PODGATE_NO_INSTALL:-}" == 1 ]]; then
	log "missing Debian packages (for $*):"
	for i in "${missing[@]}"; do
		log "  ${PKGS[i]}: ${WHY[i]}"
	done
	if ${root}; then
		log "PODGATE_NO_INSTALL=1, so they are not installed here; install them with:"
		log "  ${install}"
	else
		log "install them as root, then run this again:"
		log "  sudo ${install}"
	fi
	exit 1
fi

log "installing ${names[*]} from Debian (for $*)"
export DEBIAN_FRONTEND=noninteractive
if ! out="$(apt-get update -qq 2>&1 && apt-get install -y -qq --no-install-recommends "${names[@]}" 2>&1)"; then
	printf '%s\n' "${out}" >&2
	die "apt-get failed: apt-get update && ${install}"
fi
for i in "${missing[@]}"; do
	installed "${i}" || die "${PKGS[i]} is installed, but not all of its commands are on PATH: ${CMDS[i]//,/ }"
done
