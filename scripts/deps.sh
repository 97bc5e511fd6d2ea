#!/usr/bin/env bash
# Install the Debian packages that the unionfs tests, demos and benchmarks
# need, then load the fuse and overlay kernel modules if the kernel lacks them.
#
# Usage: scripts/deps.sh
# Run as root on Debian 12 (bookworm). Running it again installs nothing when
# every package is present, and skips `apt-get update` in that case.
set -euo pipefail

readonly PACKAGES=(
    fuse3
    attr
    acl
    busybox-static
    debootstrap
    fuse-overlayfs
    unionfs-fuse
    fio
    hyperfine
    e2fsprogs
    util-linux
    psmisc
    procps
    iproute2
    python3
    podman
    runc
    umoci
)

readonly KERNEL_FILESYSTEMS=(fuse overlay)

log() {
    printf 'deps.sh: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

require_root() {
    if [[ ${EUID} -ne 0 ]]; then
        die "must run as root (current uid ${EUID}), because it installs packages with apt-get. Run: sudo scripts/deps.sh"
    fi
}

require_apt() {
    if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
        die "apt-get or dpkg-query not found. This script supports Debian 12 (bookworm) only."
    fi
}

# Succeeds when dpkg reports the package as fully installed. A removed package
# whose configuration files remain reads "deinstall ok config-files" and counts
# as missing.
is_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ ${status} == "install ok installed" ]]
}

# Prints the packages from PACKAGES that are not installed, one per line.
list_missing_packages() {
    local package
    for package in "${PACKAGES[@]}"; do
        if ! is_installed "${package}"; then
            printf '%s\n' "${package}"
        fi
    done
}

install_packages() {
    local missing=()
    mapfile -t missing < <(list_missing_packages)

    if [[ ${#missing[@]} -eq 0 ]]; then
        log "all ${#PACKAGES[@]} packages are already installed"
        return 0
    fi

    log "installing ${#missing[@]} missing package(s): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive

    if ! apt-get update; then
        die "apt-get update failed. Check the network and the sources in /etc/apt/sources.list*, then rerun."
    fi
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        die "apt-get install failed for: ${missing[*]}. See the apt output above, then rerun."
    fi

    # apt-get can exit 0 and still leave a package unconfigured, so check again.
    local still_missing=()
    mapfile -t still_missing < <(list_missing_packages)
    if [[ ${#still_missing[@]} -ne 0 ]]; then
        die "packages still not installed after apt-get install: ${still_missing[*]}"
    fi
    log "installed: ${missing[*]}"
}

has_kernel_filesystem() {
    # /proc/filesystems lines are "nodev<TAB>name" or "<TAB>name".
    awk -v name="$1" '$NF == name { found = 1 } END { exit !found }' /proc/filesystems
}

# Loads each module in KERNEL_FILESYSTEMS that the kernel does not list yet.
# A failure here is reported but does not fail the script, because containers
# often cannot load modules although the host provides them.
load_kernel_modules() {
    local module
    local missing=()
    for module in "${KERNEL_FILESYSTEMS[@]}"; do
        if has_kernel_filesystem "${module}"; then
            continue
        fi
        if command -v modprobe >/dev/null; then
            modprobe "${module}" 2>/dev/null || true
        fi
        if ! has_kernel_filesystem "${module}"; then
            missing+=("${module}")
        fi
    done

    if [[ ${#missing[@]} -ne 0 ]]; then
        log "warning: kernel filesystem(s) not available: ${missing[*]}. Tests that mount them will fail or skip. Load them on the host with: modprobe -a ${missing[*]}"
    else
        log "kernel filesystems available: ${KERNEL_FILESYSTEMS[*]}"
    fi

    if [[ ! -c /dev/fuse ]]; then
        log "warning: /dev/fuse not found, so FUSE mounts will fail. Create it with: mknod -m 666 /dev/fuse c 10 229"
    fi
}

main() {
    if [[ $# -ne 0 ]]; then
        log "error: unexpected argument '$1'. Usage: scripts/deps.sh (takes no arguments)"
        exit 2
    fi
    require_root
    require_apt
    install_packages
    load_kernel_modules
}

main "$@"
