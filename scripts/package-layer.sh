#!/usr/bin/env bash
# Build and cache an image layer that adds Debian packages to the Debian
# minbase root filesystem, by running apt-get in a container with unionfs
# run and keeping its container layer.
#
# Usage: scripts/package-layer.sh PACKAGE... [--cache DIR] [--force]
#
# The last line on stdout is the absolute path of the finished layer, which
# goes between a container layer and the Debian root:
#   unionfs run ./container:LAYER:$(scripts/rootfs.sh debian) -- ps -ef
# Needs root, a built unionfs ($UNIONFS, else the newer of target/release
# and target/debug)
# and Debian's package mirror, reached through the host's network
# (--net host).
# Exit status: 0 on success, 1 on a failure, 2 on a usage error.
set -euo pipefail

exec 3>&1 1>&2

readonly SCRIPT_NAME=package-layer.sh
readonly STAMP_NAME=.unionfs-layer-complete
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT

log() {
    printf '%s: %s\n' "${SCRIPT_NAME}" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

usage_error() {
    log "error: $*"
    log "usage: scripts/package-layer.sh PACKAGE... [--cache DIR] [--force]"
    exit 2
}

packages=()
cache_dir=${UNIONFS_CACHE:-${REPO_ROOT}/.cache}
force=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --cache)
            [[ $# -ge 2 && -n $2 ]] || usage_error "--cache requires a directory"
            cache_dir=$2
            shift
            ;;
        --force) force=true ;;
        -h | --help)
            sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&3
            exit 0
            ;;
        -*) usage_error "unknown option '$1'" ;;
        *)
            [[ $1 =~ ^[a-z0-9][a-z0-9.+-]+$ ]] || usage_error "invalid package name '$1'"
            packages+=("$1")
            ;;
    esac
    shift
done
[[ ${#packages[@]} -gt 0 ]] || usage_error "give at least one package name, such as procps"
[[ ${EUID} -eq 0 ]] || die "building a layer needs root; run: sudo scripts/package-layer.sh ${packages[*]}"

unionfs=${UNIONFS:-}
if [[ -z ${unionfs} ]]; then
    # The newer of the release and debug builds.
    for candidate in "${REPO_ROOT}/target/release/unionfs" "${REPO_ROOT}/target/debug/unionfs"; do
        if [[ -x ${candidate} && (-z ${unionfs} || ${candidate} -nt ${unionfs}) ]]; then
            unionfs=${candidate}
        fi
    done
fi
[[ -n ${unionfs} && -x ${unionfs} ]] || die "no unionfs binary found; run cargo build --release or set UNIONFS"

cache_dir=$(realpath -m -- "${cache_dir}")
name=$(printf '%s\n' "${packages[@]}" | sort -u | paste -sd- -)
layer=${cache_dir}/layers/debian-${name}
if [[ ${force} == false && -f ${layer}/${STAMP_NAME} ]]; then
    printf '%s\n' "${layer}" >&3
    exit 0
fi

debian=$("${REPO_ROOT}/scripts/rootfs.sh" debian)
mkdir -p -- "${cache_dir}/layers"
rm -rf -- "${layer}" "${cache_dir}/layers/.debian-${name}.unionfs-work"

log "installing ${packages[*]} in a container over ${debian}"
# --rm is not given: the container layer is the result. On failure it is
# removed below, so no half-built layer is cached.
if ! "${unionfs}" run --net host --name "layer-${name}-$$" "${layer}:${debian}" -- \
    sh -c 'apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" &&
        apt-get clean && rm -rf /var/lib/apt/lists/*' sh "${packages[@]}"; then
    rm -rf -- "${layer}" "${cache_dir}/layers/.debian-${name}.unionfs-work"
    die "installing ${packages[*]} failed; check that Debian's mirror is reachable"
fi
rm -rf -- "${cache_dir}/layers/.debian-${name}.unionfs-work"
date -u +%Y-%m-%dT%H:%M:%SZ >"${layer}/${STAMP_NAME}"
log "built layer ${layer} ($(du -sh -- "${layer}" | cut -f1))"
printf '%s\n' "${layer}" >&3
