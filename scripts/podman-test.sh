#!/usr/bin/env bash
# Runs podman (and buildah, through `podman build`) with unionfs as the
# overlay driver's mount_program, in a private storage root under a
# temporary directory, and reports each step as PASS or FAIL with podman's
# output.
#
# Usage: scripts/podman-test.sh [--keep]
#   --keep   keep the temporary directory (the containers and images are
#            still removed)
#
# Environment:
#   UNIONFS_BIN   unionfs binary to use (default: target/release/unionfs,
#                 built with cargo when missing)
#
# Installs podman and runc from Debian's packages when missing. Needs root,
# /dev/fuse and fusermount3. No registry is used: the image comes from
# `podman import` of the busybox root from scripts/rootfs.sh.
# Exit status: 0 when every step passed, 1 when a step failed, 2 on a usage
# error or a failed setup.
set -uo pipefail

readonly SCRIPT_NAME=podman-test.sh
readonly PACKAGES=(podman runc fuse3)
readonly IMAGE=localhost/unionfs-test/busybox

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT

keep=false
work=
failed=()
passed=()

log() {
    printf '%s: %s\n' "${SCRIPT_NAME}" "$*" >&2
}

die() {
    log "error: $*"
    exit 2
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --keep) keep=true ;;
            -h | --help)
                sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
                exit 0
                ;;
            *) die "unknown argument '$1'; usage: scripts/podman-test.sh [--keep]" ;;
        esac
        shift
    done
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
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    log "installing ${missing[*]} from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2 || die "apt-get update failed; check the sources in /etc/apt"
    apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed; see apt's output above"
}

find_unionfs() {
    if [[ -n ${UNIONFS_BIN:-} ]]; then
        [[ -x ${UNIONFS_BIN} ]] || die "UNIONFS_BIN=${UNIONFS_BIN} is not an executable file"
        unionfs=$(realpath -- "${UNIONFS_BIN}")
        return
    fi
    unionfs=${REPO_ROOT}/target/release/unionfs
    if [[ ! -x ${unionfs} ]]; then
        log "building unionfs with cargo build --release"
        (cd "${REPO_ROOT}" && cargo build --release >&2) || die "cargo build --release failed"
    fi
}

# Writes storage.conf and containers.conf for a private podman under $work
# and exports the variables that select them.
configure_podman() {
    mkdir -p "${work}/graph" "${work}/run" "${work}/tmp" "${work}/logs"
    cat >"${work}/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "${work}/graph"
runroot = "${work}/run"

[storage.options.overlay]
mount_program = "${unionfs}"
EOF
    # runc, because Debian 12's crun rejects hosts with hybrid cgroups.
    # cgroupfs, because the host may run without systemd. The ulimits are
    # set explicitly, because root in a container may be unable to raise
    # them to podman's defaults.
    cat >"${work}/containers.conf" <<EOF
[containers]
netns = "none"
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${work}/events.log"
tmp_dir = "${work}/tmp"
EOF
    export CONTAINERS_STORAGE_CONF=${work}/storage.conf
    export CONTAINERS_CONF=${work}/containers.conf
}

# Runs one step: NAME, then a function and its arguments. The function's
# output goes to $work/logs/NAME.log and is shown on failure.
step() {
    local name=$1
    shift
    local output=${work}/logs/${name}.log
    log "step ${name}"
    if "$@" >"${output}" 2>&1; then
        passed+=("${name}")
        printf 'PASS %s\n' "${name}"
    else
        failed+=("${name}")
        printf 'FAIL %s\n' "${name}"
        sed 's/^/    /' "${output}"
    fi
}

# Runs a command, printing it first on stderr so a step's log shows what
# ran while stdout stays the command's own.
run() {
    printf '$ %s\n' "$*" >&2
    "$@"
}

# Fails with a message unless the text ($1) contains the fragment ($2).
expect_contains() {
    if [[ $1 != *"$2"* ]]; then
        printf 'expected %q in:\n%s\n' "$2" "$1"
        return 1
    fi
}

# Waits up to 10 seconds for every pid in $1 to exit; prints how long.
wait_for_exit() {
    local pid waited
    for ((waited = 0; waited < 100; waited++)); do
        local alive=false
        for pid in $1; do
            kill -0 "${pid}" 2>/dev/null && alive=true
        done
        if [[ ${alive} == false ]]; then
            printf 'daemons exited within %d ms\n' "$((waited * 100))"
            return 0
        fi
        sleep 0.1
    done
    printf 'daemon(s) %s still run 10 s later\n' "$1"
    return 1
}

is_mounted() {
    findmnt -rn --mountpoint "$1" >/dev/null
}

# Prints the pids of unionfs daemons serving mountpoint $1.
daemons_for() {
    local pid
    for pid in $(pgrep -x unionfs); do
        if tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- " $1"; then
            printf '%s\n' "${pid}"
        fi
    done
}

step_import() {
    local rootfs
    rootfs=$("${REPO_ROOT}/scripts/rootfs.sh" busybox) || return 1
    run tar -C "${rootfs}" --exclude=./.unionfs-rootfs-complete -cf "${work}/busybox.tar" . || return 1
    run podman import "${work}/busybox.tar" "${IMAGE}:base" || return 1
}

step_run_write_delete() {
    run podman run --name unionfs-c1 "${IMAGE}:base" sh -c '
        echo hello > /new.txt &&
        rm /bin/vi &&
        rm -rf /root && mkdir /root && touch /root/only &&
        mkdir -p /data/sub && echo x > /data/sub/f &&
        cat /new.txt'
}

step_diff() {
    local diff
    diff=$(run podman diff unionfs-c1) || return 1
    printf '%s\n' "${diff}"
    expect_contains "${diff}" "A /new.txt" &&
        expect_contains "${diff}" "D /bin/vi" &&
        expect_contains "${diff}" "A /data/sub/f"
}

step_commit() {
    run podman commit unionfs-c1 "${IMAGE}:committed"
}

step_run_committed() {
    local output
    output=$(run podman run --rm "${IMAGE}:committed" sh -c \
        'cat /new.txt; test ! -e /bin/vi && echo vi-deleted; ls -A /root') || return 1
    printf '%s\n' "${output}"
    expect_contains "${output}" "hello" &&
        expect_contains "${output}" "vi-deleted" &&
        expect_contains "${output}" "only"
}

step_build_third_layer() {
    mkdir -p "${work}/context"
    printf 'FROM %s\nRUN echo third > /third.txt && rm /new.txt\n' "${IMAGE}:committed" \
        >"${work}/context/Containerfile"
    run podman build --network none -t "${IMAGE}:third" "${work}/context" || return 1
    local output
    output=$(run podman run --rm "${IMAGE}:third" sh -c \
        'cat /third.txt; test ! -e /new.txt && echo new-deleted; ls -A /root') || return 1
    printf '%s\n' "${output}"
    expect_contains "${output}" "third" &&
        expect_contains "${output}" "new-deleted" &&
        expect_contains "${output}" "only"
}

step_mount_umount() {
    local merged
    merged=$(run podman mount unionfs-c1) || return 1
    printf 'merged: %s\n' "${merged}"
    findmnt -rn --mountpoint "${merged}" || { echo "not mounted"; return 1; }
    expect_contains "$(cat "${merged}/new.txt")" "hello" || return 1
    local daemons
    daemons=$(daemons_for "${merged}")
    printf 'daemon pids: %s\n' "${daemons:-none}"
    run podman umount unionfs-c1 || return 1
    if is_mounted "${merged}"; then
        echo "still mounted after podman umount"
        return 1
    fi
    wait_for_exit "${daemons}"
}

step_detached_stop() {
    run podman run -d --name unionfs-c2 "${IMAGE}:base" sleep 1000 || return 1
    local merged daemons
    merged=$(run podman inspect --format '{{.GraphDriver.Data.MergedDir}}' unionfs-c2) || return 1
    printf 'merged: %s\n' "${merged}"
    is_mounted "${merged}" || { echo "the container's root is not mounted"; return 1; }
    daemons=$(daemons_for "${merged}")
    printf 'daemon pids: %s\n' "${daemons:-none}"
    [[ -n ${daemons} ]] || { echo "no unionfs daemon serves ${merged}"; return 1; }
    run podman stop -t 2 unionfs-c2 || return 1
    if is_mounted "${merged}"; then
        echo "still mounted after podman stop"
        return 1
    fi
    wait_for_exit "${daemons}"
}

step_uidmap() {
    local output
    output=$(run podman run --rm --uidmap 0:100000:65536 --gidmap 0:100000:65536 \
        "${IMAGE}:base" sh -c 'id -u; stat -c "%u:%g %n" /bin/busybox /etc/passwd; echo data > /tmp/f && cat /tmp/f') ||
        return 1
    printf '%s\n' "${output}"
    expect_contains "${output}" "0:0 /bin/busybox" && expect_contains "${output}" "data"
}

cleanup() {
    local status=$?
    if [[ -n ${work} && -d ${work} ]]; then
        podman rm -a -f -t 0 >/dev/null 2>&1
        podman rmi -a -f >/dev/null 2>&1
        local mountpoint
        # Deepest first, so nested mounts go before their parents.
        while IFS= read -r mountpoint; do
            [[ -n ${mountpoint} ]] || continue
            umount -l -- "$(printf '%b' "${mountpoint}")" 2>/dev/null
        done < <(findmnt -rn -o TARGET | grep -F -- "${work}" | sort -r)
        if [[ ${keep} == true ]]; then
            log "kept ${work}"
        else
            rm -rf --one-file-system -- "${work}"
        fi
    fi
    exit "${status}"
}

main() {
    parse_args "$@"
    [[ ${EUID} -eq 0 ]] || die "needs root: podman mounts layers and starts containers; run it with sudo"
    install_packages
    find_unionfs
    work=$(mktemp -d /tmp/unionfs-podman.XXXXXX) || die "cannot create a temporary directory"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    configure_podman
    log "unionfs: ${unionfs}; podman $(podman --version | awk '{print $3}'); storage under ${work}"

    step import step_import
    if [[ ${#failed[@]} -ne 0 ]]; then
        log "the image could not be imported; skipping the other steps"
        exit 1
    fi
    step run-write-delete step_run_write_delete
    step diff step_diff
    step commit step_commit
    step run-committed step_run_committed
    step build-third-layer step_build_third_layer
    step mount-umount step_mount_umount
    step detached-stop step_detached_stop
    step uidmap step_uidmap

    printf '%s passed, %s failed\n' "${#passed[@]}" "${#failed[@]}"
    [[ ${#failed[@]} -eq 0 ]]
}

main "$@"
