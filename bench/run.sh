#!/usr/bin/env bash
# Benchmark unionfs against kernel overlayfs, fuse-overlayfs 1.10 and 2.0 and a
# plain directory, and write the results page docs/benchmarks.md.
#
# Usage: sudo bench/run.sh [--quick] [--reps N] [--only KEYS] [--systems NAMES] [--page FILE]
#
# Installs what it needs (Debian packages, fuse-overlayfs 2.0 from crates.io
# into .cache/bench/), builds unionfs in release mode, then runs
# bench/main.py. The full run takes about 30 minutes on 2 CPUs, and --quick
# uses smaller layers and takes a few minutes. `bench/run.sh --help` lists
# every option.
set -euo pipefail

readonly PACKAGES=(fuse3 fuse-overlayfs fio python3 debootstrap linux-source xz-utils)
readonly FUSE_OVERLAYFS_2_VERSION=2.0.0

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly CACHE_DIR=${UNIONFS_CACHE:-${REPO_ROOT}/.cache}
readonly FUSE_OVERLAYFS_2_ROOT=${CACHE_DIR}/bench/fuse-overlayfs-2.0

log() {
    printf 'run.sh: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

is_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ ${status} == "install ok installed" ]]
}

install_packages() {
    local missing=() package
    for package in "${PACKAGES[@]}"; do
        is_installed "${package}" || missing+=("${package}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0

    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update || die "apt-get update failed. Check the network and /etc/apt/sources.list*, then rerun."
    apt-get install -y --no-install-recommends "${missing[@]}" ||
        die "apt-get install failed for: ${missing[*]}"
}

find_cargo() {
    if command -v cargo >/dev/null; then
        command -v cargo
    elif [[ -x ${HOME}/.cargo/bin/cargo ]]; then
        printf '%s\n' "${HOME}/.cargo/bin/cargo"
    else
        die "cargo not found in PATH or ~/.cargo/bin. Install the Rust toolchain with rustup."
    fi
}

# fuse-overlayfs 2.0 is the Rust rewrite, published on crates.io only.
install_fuse_overlayfs_2() {
    local cargo=$1
    local binary=${FUSE_OVERLAYFS_2_ROOT}/bin/fuse-overlayfs
    if [[ -x ${binary} ]] && "${binary}" --version 2>/dev/null | grep -q "version ${FUSE_OVERLAYFS_2_VERSION}"; then
        return 0
    fi
    log "installing fuse-overlayfs ${FUSE_OVERLAYFS_2_VERSION} with cargo into ${FUSE_OVERLAYFS_2_ROOT} (takes minutes)"
    # A failure is reported and the benchmark goes on without fuse-overlayfs 2.0.
    "${cargo}" install fuse-overlayfs --version "${FUSE_OVERLAYFS_2_VERSION}" --locked \
        --root "${FUSE_OVERLAYFS_2_ROOT}" ||
        log "warning: cargo install fuse-overlayfs ${FUSE_OVERLAYFS_2_VERSION} failed; the run leaves it out"
}

main() {
    local arg
    for arg in "$@"; do
        if [[ ${arg} == -h || ${arg} == --help ]]; then
            exec python3 "${REPO_ROOT}/bench/main.py" --help
        fi
    done
    if [[ ${EUID} -ne 0 ]]; then
        die "the benchmark mounts filesystems and drops caches, so it must run as root. Run: sudo bench/run.sh $*"
    fi

    install_packages
    local cargo
    cargo=$(find_cargo)
    install_fuse_overlayfs_2 "${cargo}"

    log "building unionfs (cargo build --release)"
    (cd "${REPO_ROOT}" && "${cargo}" build --release) || die "cargo build --release failed"

    for module in fuse overlay; do
        grep -qw "${module}" /proc/filesystems || modprobe "${module}" 2>/dev/null ||
            die "the kernel has no ${module} filesystem. Load it with: modprobe ${module}"
    done

    # Debian's python3, not a pyenv or virtualenv one earlier in PATH.
    exec /usr/bin/python3 "${REPO_ROOT}/bench/main.py" --command "sudo bench/run.sh" "$@"
}

main "$@"
