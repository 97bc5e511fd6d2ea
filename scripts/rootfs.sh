#!/usr/bin/env bash
# Build and cache a root filesystem for use as an image layer in tests, demos
# and benchmarks.
#
# Usage: scripts/rootfs.sh busybox|debian [--cache DIR] [--force]
#
# The last line on stdout is the absolute path of the finished root filesystem,
# and nothing else goes to stdout. Progress and errors go to stderr.
# Exit status: 0 on success, 1 on a failure, 2 on a usage error.
set -euo pipefail

# Save stdout on fd 3 for the final path and send everything else to stderr,
# so that no tool run below can add lines to stdout.
exec 3>&1 1>&2

readonly SCRIPT_NAME=rootfs.sh
readonly STAMP_NAME=.unionfs-rootfs-complete
readonly DEBIAN_SUITE=bookworm
readonly DEBIAN_DEFAULT_MIRROR=http://deb.debian.org/debian

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT

# Set by parse_args.
kind=
cache_dir=
force=false

# Set while a build runs, so that cleanup_on_exit can remove them.
tmp_dir=
child_pid=

# Set by build_busybox or build_debian and recorded in the stamp file.
build_source=

log() {
    printf '%s: %s\n' "${SCRIPT_NAME}" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

usage_error() {
    log "error: $*"
    log "usage: scripts/rootfs.sh busybox|debian [--cache DIR] [--force]"
    exit 2
}

print_help() {
    cat >&3 <<EOF
Usage: scripts/rootfs.sh busybox|debian [--cache DIR] [--force]

Build a root filesystem once and reuse it from the cache afterwards.
The last line on stdout is the absolute path of the root filesystem.

Kinds:
  busybox   static busybox from /bin/busybox with one symlink per applet,
            /etc/passwd, /etc/group and /etc/hostname (a few seconds)
  debian    debootstrap --variant=minbase ${DEBIAN_SUITE} (a few minutes, needs the
            Debian mirror)

Options:
  --cache DIR   cache directory; the root filesystem is DIR/rootfs/KIND
                (default: \$UNIONFS_CACHE if set, else <repo>/.cache)
  --force       rebuild even if a complete cached copy exists
  -h, --help    print this help

Environment:
  UNIONFS_CACHE          default cache directory
  UNIONFS_DEBIAN_MIRROR  Debian mirror URL for the debian kind (default: the
                         ${DEBIAN_SUITE} mirror from /etc/apt/sources*, else
                         ${DEBIAN_DEFAULT_MIRROR})

Building needs root. Printing the path of a complete cached copy does not.
EOF
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            -h | --help)
                print_help
                exit 0
                ;;
            --force)
                force=true
                ;;
            --cache)
                if [[ $# -lt 2 || -z $2 ]]; then
                    usage_error "--cache requires a directory argument, for example --cache /var/tmp/unionfs-cache"
                fi
                cache_dir=$2
                shift
                ;;
            --cache=*)
                cache_dir=${1#--cache=}
                if [[ -z ${cache_dir} ]]; then
                    usage_error "--cache requires a directory argument, for example --cache=/var/tmp/unionfs-cache"
                fi
                ;;
            -*)
                usage_error "unknown option '$1'"
                ;;
            *)
                if [[ -n ${kind} ]]; then
                    usage_error "unexpected argument '$1' after kind '${kind}'. Give exactly one kind."
                fi
                kind=$1
                ;;
        esac
        shift
    done

    case ${kind} in
        busybox | debian) ;;
        "") usage_error "missing kind. Give busybox or debian." ;;
        *) usage_error "invalid kind '${kind}'. Expected busybox or debian." ;;
    esac

    if [[ -z ${cache_dir} ]]; then
        cache_dir=${UNIONFS_CACHE:-${REPO_ROOT}/.cache}
    fi
    # An absolute path keeps the printed path valid from any working directory.
    cache_dir=$(realpath -m -- "${cache_dir}")
}

# Prints the finished path on the saved stdout and exits successfully.
finish_with_path() {
    printf '%s\n' "$1" >&3
    exit 0
}

is_complete() {
    [[ -d $1 && -f $1/${STAMP_NAME} ]]
}

require_root() {
    if [[ ${EUID} -ne 0 ]]; then
        die "building the ${kind} root filesystem needs root (current uid ${EUID}), because its files must be owned by root and debootstrap and chroot need root. Run: sudo scripts/rootfs.sh ${kind}"
    fi
}

require_commands() {
    local command_name
    for command_name in "$@"; do
        if ! command -v "${command_name}" >/dev/null; then
            die "command '${command_name}' not found. Install the test dependencies with: sudo scripts/deps.sh"
        fi
    done
}

# Creates DIR/rootfs and checks that files can be created in it.
prepare_cache_dir() {
    local rootfs_parent=$1
    local error_text

    if ! error_text=$(mkdir -p -- "${rootfs_parent}" 2>&1); then
        die "cannot create cache directory '${rootfs_parent}' (${error_text}). Pass --cache DIR or set UNIONFS_CACHE to a writable directory."
    fi
    # access(2) also reports a read-only filesystem here, even for root.
    if [[ ! -w ${rootfs_parent} ]]; then
        die "cache directory '${rootfs_parent}' is not writable. Pass --cache DIR or set UNIONFS_CACHE to a writable directory."
    fi
}

# Takes an exclusive lock per kind, so that parallel runs build once and the
# others wait and then reuse the result. The lock is released on exit.
lock_kind() {
    local lock_file=$1
    if ! exec 9>"${lock_file}"; then
        die "cannot open lock file '${lock_file}'. Pass --cache DIR or set UNIONFS_CACHE to a writable directory."
    fi
    if ! flock -n 9; then
        log "another run is building ${kind}; waiting for its lock ${lock_file}"
        flock 9
    fi
}

# Unmounts every mount point at or below DIR, deepest first. debootstrap
# mounts proc inside its target and leaves it mounted when killed by SIGKILL.
# Outside Docker it mounts sys there as well.
unmount_below() {
    local dir=$1
    local mount_point
    local mount_points=()

    # findmnt -r escapes spaces and other special characters as \xNN.
    while IFS= read -r mount_point; do
        mount_point=$(printf '%b' "${mount_point}")
        if [[ ${mount_point} == "${dir}" || ${mount_point} == "${dir}"/* ]]; then
            mount_points+=("${mount_point}")
        fi
    done < <(findmnt -rn -o TARGET | sort -r)

    for mount_point in "${mount_points[@]}"; do
        log "unmounting leftover mount ${mount_point}"
        umount -- "${mount_point}" 2>/dev/null || umount -l -- "${mount_point}" ||
            log "warning: could not unmount ${mount_point}"
    done
}

# Removes a build or replaced directory. --one-file-system keeps rm out of any
# mount that survived unmount_below, such as a bind mount of the host's /dev.
remove_tree() {
    local dir=$1
    [[ -n ${dir} && -e ${dir} ]] || return 0
    unmount_below "${dir}"
    rm -rf --one-file-system -- "${dir}" ||
        log "warning: could not fully remove ${dir}; remove it by hand after checking for mounts with: findmnt -R ${dir}"
}

# Removes temporary and replaced directories that a killed run left behind.
# It runs under the kind's lock, so no other run is using them.
remove_stale_builds() {
    local rootfs_parent=$1
    local stale
    for stale in "${rootfs_parent}/.${kind}.tmp."* "${rootfs_parent}/.${kind}.old."*; do
        [[ -e ${stale} ]] || continue
        log "removing a directory that an interrupted run left behind: ${stale}"
        remove_tree "${stale}"
    done
}

# Runs from the EXIT trap, which shellcheck 0.9 does not follow (SC2317).
# shellcheck disable=SC2317
cleanup_on_exit() {
    local status=$?
    if [[ -n ${child_pid} ]] && kill -0 "${child_pid}" 2>/dev/null; then
        log "stopping build process ${child_pid}"
        kill -TERM "${child_pid}" 2>/dev/null || true
        wait "${child_pid}" 2>/dev/null || true
    fi
    if [[ -n ${tmp_dir} && -e ${tmp_dir} ]]; then
        log "removing unfinished build ${tmp_dir}"
        remove_tree "${tmp_dir}"
    fi
    exit "${status}"
}

build_busybox() {
    local root=$1
    local busybox_bin=/bin/busybox

    if [[ ! -x ${busybox_bin} ]]; then
        die "${busybox_bin} not found. Install busybox-static with: sudo scripts/deps.sh"
    fi
    # The Debian package busybox also installs /bin/busybox, but linked against
    # libc, which the minimal root filesystem does not contain.
    if ldd "${busybox_bin}" >/dev/null 2>&1; then
        die "${busybox_bin} is dynamically linked. Install the static build with: sudo apt-get install busybox-static"
    fi
    build_source="$(dpkg-query -W -f='busybox-static ${Version}' busybox-static 2>/dev/null || true) ${busybox_bin}"

    mkdir -p "${root}/bin" "${root}/etc" "${root}/proc" "${root}/sys" "${root}/dev" \
        "${root}/tmp" "${root}/root"
    chmod 1777 "${root}/tmp"
    chmod 0700 "${root}/root"
    install -m 0755 "${busybox_bin}" "${root}/bin/busybox"

    install_busybox_applets "${root}"
    write_busybox_etc "${root}"
}

# Creates one relative symlink per applet, so that each link resolves to
# bin/busybox both inside a chroot and when the tree is inspected from outside.
install_busybox_applets() {
    local root=$1
    local applet_path applet_dir target depth
    local count=0

    while IFS= read -r applet_path; do
        [[ -n ${applet_path} && ${applet_path} != bin/busybox ]] || continue

        if [[ ${applet_path} == */* ]]; then
            applet_dir=${applet_path%/*}
        else
            applet_dir=
        fi

        if [[ ${applet_dir} == bin ]]; then
            target=busybox
        else
            target=bin/busybox
            depth=$(tr -cd / <<<"${applet_path}" | wc -c)
            for ((; depth > 0; depth--)); do
                target=../${target}
            done
        fi

        if [[ -n ${applet_dir} ]]; then
            mkdir -p "${root}/${applet_dir}"
        fi
        ln -sfn "${target}" "${root}/${applet_path}"
        count=$((count + 1))
    done < <("${root}/bin/busybox" --list-full)

    if [[ ${count} -eq 0 ]]; then
        die "'busybox --list-full' listed no applets"
    fi
    log "linked ${count} busybox applets"
}

write_busybox_etc() {
    local root=$1
    printf '%s\n' \
        'root:x:0:0:root:/root:/bin/sh' \
        'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' \
        >"${root}/etc/passwd"
    printf '%s\n' \
        'root:x:0:' \
        'nobody:x:65534:' \
        >"${root}/etc/group"
    printf 'unionfs\n' >"${root}/etc/hostname"
    chmod 0644 "${root}/etc/passwd" "${root}/etc/group" "${root}/etc/hostname"
}

# Prints the URI of the first enabled Debian source for DEBIAN_SUITE in apt's
# configuration, in either the one-line or the deb822 format, or nothing.
find_apt_mirror() {
    local files=()
    local file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; do
        [[ -f ${file} ]] && files+=("${file}")
    done
    [[ ${#files[@]} -gt 0 ]] || return 0

    awk -v suite="${DEBIAN_SUITE}" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " suite " ") && uri == "")
                uri = uris
            types = ""; suites = ""; uris = ""; enabled = ""
        }
        FNR == 1 { flush() }
        /^[[:space:]]*#/ { next }
        FILENAME ~ /\.sources$/ {
            if (NF == 0) { flush(); next }
            key = tolower($1)
            value = $0
            sub(/^[^:]*:[[:space:]]*/, "", value)
            if (key == "types:") types = value
            else if (key == "suites:") suites = value
            else if (key == "uris:") { split(value, parts, /[[:space:]]+/); uris = parts[1] }
            else if (key == "enabled:") enabled = tolower(value)
            next
        }
        $1 == "deb" {
            field = 2
            if ($field ~ /^\[/) { while (field <= NF && $field !~ /\]$/) field++; field++ }
            if ($(field + 1) == suite && uri == "") uri = $field
        }
        END { flush(); if (uri != "") print uri }
    ' "${files[@]}"
}

choose_debian_mirror() {
    local mirror
    if [[ -n ${UNIONFS_DEBIAN_MIRROR:-} ]]; then
        mirror=${UNIONFS_DEBIAN_MIRROR}
        log "using mirror from UNIONFS_DEBIAN_MIRROR: ${mirror}"
    else
        mirror=$(find_apt_mirror)
        # debootstrap 1.0.128 fetches http, https and ftp URLs with wget and
        # copies file URLs, so apt-only schemes such as mirror+file fail.
        if [[ ${mirror} =~ ^(https?|file|ftp):// ]]; then
            log "using the ${DEBIAN_SUITE} mirror from apt's sources: ${mirror}"
        else
            if [[ -n ${mirror} ]]; then
                log "apt's ${DEBIAN_SUITE} source '${mirror}' is not an http, https, ftp or file URL"
            fi
            mirror=${DEBIAN_DEFAULT_MIRROR}
            log "using the default mirror: ${mirror}"
        fi
    fi
    printf '%s\n' "${mirror}"
}

# debootstrap 1.0.128 copies the build host's /etc/hostname and
# /etc/resolv.conf into the target and keeps the downloaded .deb files
# (about 31 MB for bookworm minbase). None of them belong in a shared image
# layer. An empty resolv.conf stays as a bind-mount target for a launcher.
remove_host_specific_files() {
    local root=$1
    printf 'unionfs\n' >"${root}/etc/hostname"
    rm -f -- "${root}/etc/resolv.conf"
    install -m 0644 /dev/null "${root}/etc/resolv.conf"
    if ! chroot "${root}" apt-get clean; then
        die "'apt-get clean' failed inside ${root}"
    fi
}

build_debian() {
    local root=$1
    local mirror
    mirror=$(choose_debian_mirror)

    require_commands debootstrap
    log "running debootstrap --variant=minbase ${DEBIAN_SUITE} (takes minutes)"

    # debootstrap runs in the background so that a signal to this script
    # interrupts `wait` at once. cleanup_on_exit then sends debootstrap
    # SIGTERM and waits for it. That can take several seconds, because
    # debootstrap finishes its current dpkg call before it exits.
    # Its output goes to stderr because this script's fd 1 is stderr.
    local started=${SECONDS}
    debootstrap --variant=minbase "${DEBIAN_SUITE}" "${root}" "${mirror}" &
    child_pid=$!
    if ! wait "${child_pid}"; then
        child_pid=
        if [[ -f ${root}/debootstrap/debootstrap.log ]]; then
            log "last lines of ${root}/debootstrap/debootstrap.log:"
            tail -n 20 "${root}/debootstrap/debootstrap.log" >&2
        fi
        die "debootstrap failed for suite ${DEBIAN_SUITE} from ${mirror}. Check that the mirror is reachable, or set UNIONFS_DEBIAN_MIRROR."
    fi
    child_pid=
    log "debootstrap finished in $((SECONDS - started)) s"

    unmount_below "${root}"
    remove_host_specific_files "${root}"

    build_source="debootstrap --variant=minbase ${DEBIAN_SUITE} ${mirror}"
}

# Runs a command inside the new root filesystem to check that it works.
check_root() {
    local root=$1
    shift
    local error_text
    if ! error_text=$(chroot "${root}" "$@" 2>&1); then
        die "the new ${kind} root filesystem failed its check 'chroot ${root} $*': ${error_text}"
    fi
}

write_stamp() {
    local root=$1
    local seconds=$2
    {
        printf 'kind=%s\n' "${kind}"
        printf 'built_at=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'build_seconds=%s\n' "${seconds}"
        printf 'source=%s\n' "${build_source}"
    } >"${root}/${STAMP_NAME}"
}

# Moves the finished build to FINAL, replacing an old or incomplete copy.
# rename(2) cannot replace a non-empty directory, so the old copy is moved
# aside first and removed after the new one is in place.
install_build() {
    local build=$1
    local final=$2
    local rootfs_parent=$3
    local old=

    if [[ -e ${final} || -L ${final} ]]; then
        old=$(mktemp -u "${rootfs_parent}/.${kind}.old.XXXXXX")
        mv -T -- "${final}" "${old}"
    fi
    mv -T -- "${build}" "${final}"
    tmp_dir=
    if [[ -n ${old} ]]; then
        remove_tree "${old}"
    fi
}

build_kind() {
    local final=$1
    local rootfs_parent=$2
    local started=${SECONDS}

    if ! tmp_dir=$(mktemp -d "${rootfs_parent}/.${kind}.tmp.XXXXXX" 2>&1); then
        die "cannot create a build directory in '${rootfs_parent}': ${tmp_dir}. Pass --cache DIR or set UNIONFS_CACHE to a writable directory."
    fi
    chmod 0755 "${tmp_dir}"
    log "building ${kind} in ${tmp_dir}"

    case ${kind} in
        busybox)
            build_busybox "${tmp_dir}"
            check_root "${tmp_dir}" /bin/sh -c 'echo ok'
            ;;
        debian)
            build_debian "${tmp_dir}"
            check_root "${tmp_dir}" /bin/sh -c 'dpkg-query -W dpkg'
            ;;
    esac

    # The stamp is the last write, so a copy without it was never finished.
    write_stamp "${tmp_dir}" "$((SECONDS - started))"
    install_build "${tmp_dir}" "${final}" "${rootfs_parent}"
    log "built ${kind} in $((SECONDS - started)) s, $(du -sh -- "${final}" | cut -f1): ${final}"
}

main() {
    parse_args "$@"
    umask 022

    local rootfs_parent=${cache_dir}/rootfs
    local final=${rootfs_parent}/${kind}

    if [[ ${force} == false ]] && is_complete "${final}"; then
        finish_with_path "${final}"
    fi

    require_root
    require_commands chroot flock findmnt
    prepare_cache_dir "${rootfs_parent}"
    trap cleanup_on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    lock_kind "${rootfs_parent}/.${kind}.lock"

    # Another run may have finished the build while this one waited.
    if [[ ${force} == false ]] && is_complete "${final}"; then
        log "another run built ${kind} while this one waited"
        finish_with_path "${final}"
    fi
    if [[ -e ${final} && ${force} == false ]]; then
        log "cached ${kind} at ${final} has no ${STAMP_NAME}, so it is incomplete; rebuilding"
    fi

    remove_stale_builds "${rootfs_parent}"
    build_kind "${final}" "${rootfs_parent}"
    finish_with_path "${final}"
}

main "$@"
