#!/usr/bin/env bash
# Run the POSIX conformance suite pjdfstest (Rust port, crates.io 0.2.2) in one
# run against four targets and compare them:
#
#   plain          a directory on the filesystem under the layers
#   overlay        kernel overlayfs over an empty lower layer
#   unionfs        unionfs over an empty lower layer
#   unionfs-lower  unionfs, with the tests run inside a directory that comes
#                  from a lower layer, so the suite's first create copies it up
#
# Usage: scripts/pjdfstest.sh [--results DIR] [PATTERN...]
#
# PATTERNs select tests whose names contain them, as pjdfstest's own filter
# does (for example `rename` or `chmod::`). The script prints a table of passes
# and failures per target and writes each target's full output and per-test
# results to the results directory (default target/pjdfstest).
#
# Exit status: 0 when every unionfs failure is listed in
# tests/pjdfstest-known-failures.txt, 1 when unionfs fails a test that is not
# listed there (whether or not kernel overlayfs fails it too) or a target
# could not run, 2 on a usage error.
#
# Needs root, /dev/fuse and kernel overlayfs. It installs pjdfstest into
# .cache/pjdfstest with `cargo install` when it is missing, and creates the
# unprivileged user unionfs-test when it is missing. Environment:
#   UNIONFS_BIN         the unionfs binary (default: build target/release/unionfs)
#   PJDFSTEST_TIMEOUT   seconds allowed for each target's run (default 300)
set -euo pipefail

readonly SCRIPT_NAME=pjdfstest.sh
readonly PJDFSTEST_VERSION=0.2.2
readonly TEST_USER=unionfs-test
# pjdfstest sleeps this long (in seconds) between changes that it expects to
# move a timestamp. It must exceed the timestamp granularity of every target,
# which is one kernel tick (at most 10 ms) for timestamps taken from the
# kernel's coarse clock.
readonly NAPTIME=0.05
readonly TARGETS=(plain overlay unionfs unionfs-lower)
readonly MAX_TEST_DIRECTORY_LENGTH=52

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly KNOWN_FAILURES_FILE=${REPO_ROOT}/tests/pjdfstest-known-failures.txt
readonly PJDFSTEST_ROOT=${REPO_ROOT}/.cache/pjdfstest
readonly PJDFSTEST_BIN=${PJDFSTEST_ROOT}/bin/pjdfstest

# Set by parse_args.
results_dir=${REPO_ROOT}/target/pjdfstest
patterns=()

# Set by setup_scratch. cleanup_on_exit unmounts everything in `mounted`.
scratch=
mounted=()
unionfs_bin=
# Set by prepare_target: where pjdfstest runs, and the mount to remove after.
test_directory=
target_mount=

log() {
    printf '%s: %s\n' "${SCRIPT_NAME}" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

usage_error() {
    log "error: $*"
    log "usage: scripts/pjdfstest.sh [--results DIR] [PATTERN...]"
    exit 2
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --results)
                [[ $# -ge 2 ]] || usage_error "--results needs a directory"
                results_dir=$2
                shift 2
                ;;
            -h | --help)
                sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
                exit 0
                ;;
            -*)
                usage_error "unknown option '$1'"
                ;;
            *)
                patterns+=("$1")
                shift
                ;;
        esac
    done
    mkdir -p "${results_dir}"
    results_dir=$(cd "${results_dir}" && pwd)
}

require_environment() {
    [[ ${EUID} -eq 0 ]] || die "must run as root, because it mounts filesystems and switches users. Run: sudo scripts/pjdfstest.sh"
    [[ -c /dev/fuse ]] || die "/dev/fuse not found; load the fuse module (modprobe fuse)"
    grep -qw overlay /proc/filesystems || die "kernel overlayfs not available; load it (modprobe overlay)"
    [[ -f ${KNOWN_FAILURES_FILE} ]] || die "${KNOWN_FAILURES_FILE} not found"
}

# Installs pjdfstest into .cache/pjdfstest unless that version is there.
install_pjdfstest() {
    if [[ -x ${PJDFSTEST_BIN} ]] &&
        [[ $("${PJDFSTEST_BIN}" --version 2>/dev/null) == "pjdfstest ${PJDFSTEST_VERSION}" ]]; then
        return 0
    fi
    command -v cargo >/dev/null || die "cargo not found; install the Rust toolchain to build pjdfstest"
    log "installing pjdfstest ${PJDFSTEST_VERSION} into ${PJDFSTEST_ROOT}"
    cargo install pjdfstest --version "${PJDFSTEST_VERSION}" --locked --root "${PJDFSTEST_ROOT}" ||
        die "cargo install pjdfstest ${PJDFSTEST_VERSION} failed; see the cargo output above"
}

# Creates the second unprivileged user pjdfstest switches to, with a group of
# the same name, unless it exists.
ensure_test_user() {
    if getent passwd "${TEST_USER}" >/dev/null; then
        return 0
    fi
    log "creating the unprivileged user ${TEST_USER}"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "unprivileged user for unionfs tests" \
        "${TEST_USER}" || die "useradd ${TEST_USER} failed"
}

find_unionfs() {
    if [[ -n ${UNIONFS_BIN:-} ]]; then
        unionfs_bin=${UNIONFS_BIN}
    else
        log "building unionfs"
        (cd "${REPO_ROOT}" && cargo build --release --locked --bin unionfs) ||
            die "cargo build failed; see the output above"
        unionfs_bin=${REPO_ROOT}/target/release/unionfs
    fi
    [[ -x ${unionfs_bin} ]] || die "unionfs binary ${unionfs_bin} not found or not executable"

    # NOTE: `mount -o remount` in the EROFS tests runs mount.fuse3, which runs
    # the `unionfs` installed on the system path (a PATH set here does not
    # reach it), so those tests use that binary.
    local installed
    installed=$(command -v unionfs || true)
    if [[ -z ${installed} ]]; then
        log "warning: no unionfs on the system path, so the EROFS tests cannot remount unionfs; scripts/test.sh installs it"
    elif ! cmp -s "${installed}" "${unionfs_bin}"; then
        log "warning: ${installed} differs from ${unionfs_bin}, and the EROFS tests remount through ${installed}"
    fi
}

# Unmounts `path`: unionfs through `unionfs umount`, which waits for its
# daemon to exit, and anything else with umount(8).
unmount_one() {
    local path=$1
    local fstype
    fstype=$(findmnt -n -o FSTYPE --mountpoint "${path}" 2>/dev/null) || return 0
    if [[ ${fstype} == fuse.unionfs ]]; then
        "${unionfs_bin}" umount "${path}" && return 0
    else
        umount "${path}" && return 0
    fi
    log "warning: unmounting ${path} failed; detaching it with umount -l"
    umount -l "${path}"
}

cleanup_on_exit() {
    local status=$?
    local index
    # Unmount in reverse order of mounting.
    for ((index = ${#mounted[@]} - 1; index >= 0; index--)); do
        unmount_one "${mounted[index]}" || log "warning: could not unmount ${mounted[index]}"
    done
    if [[ -n ${scratch} && -d ${scratch} ]]; then
        if findmnt -rn -o TARGET | grep -qF "${scratch}/"; then
            log "warning: something under ${scratch} is still mounted; leaving the directory in place"
        else
            rm -rf "${scratch}"
        fi
    fi
    exit "${status}"
}

setup_scratch() {
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/unionfs-pjd.XXXXXX")
    # The unprivileged test users must be able to reach the test directories.
    chmod 0755 "${scratch}"
    if ! setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups test -x "${scratch}"; then
        die "user nobody cannot enter ${scratch}; set TMPDIR to a directory every user can traverse"
    fi

    # A second filesystem for the tests that expect EXDEV from link and
    # rename across filesystems.
    mkdir "${scratch}/secondary"
    mount -t tmpfs -o size=16m,mode=0755 unionfs-pjdfstest "${scratch}/secondary"
    mounted+=("${scratch}/secondary")
}

# Writes the pjdfstest configuration. `allow_remount` lets the EROFS tests
# remount the target's filesystem read-only and back, so it is only set for
# mounts this script owns, never for the plain directory's filesystem.
write_config() {
    local path=$1 allow_remount=$2
    cat >"${path}" <<EOF
# pjdfstest ${PJDFSTEST_VERSION} configuration written by scripts/pjdfstest.sh.
[features]
utimensat = {}
utime_now = {}
rename_ctime = {}
posix_fallocate = {}
secondary_fs = "${scratch}/secondary"

[settings]
naptime = ${NAPTIME}
allow_remount = ${allow_remount}

[dummy_auth]
entries = [
    ["nobody", "$(id -gn nobody)"],
    ["${TEST_USER}", "$(id -gn "${TEST_USER}")"],
]
EOF
}

# Builds the layers of `target` and mounts it. Sets test_directory and
# target_mount (empty for the plain directory).
prepare_target() {
    local target=$1
    local base=${scratch}/${target}
    mkdir -p "${base}"
    test_directory=${base}/mnt
    target_mount=${base}/mnt
    case ${target} in
        plain)
            mkdir "${base}/dir"
            test_directory=${base}/dir
            target_mount=
            ;;
        overlay)
            mkdir "${base}"/{lower,upper,work,mnt}
            mount -t overlay overlay \
                -o "lowerdir=${base}/lower,upperdir=${base}/upper,workdir=${base}/work" \
                "${base}/mnt" || die "mounting kernel overlayfs on ${base}/mnt failed"
            mounted+=("${base}/mnt")
            ;;
        unionfs)
            mkdir "${base}"/{lower,upper,work,mnt}
            mount_unionfs "${base}"
            ;;
        unionfs-lower)
            mkdir "${base}"/{lower,upper,work,mnt}
            # A lower directory with entries of its own, so that it is a
            # merged directory and the suite's first create copies it up.
            mkdir -p "${base}/lower/t/subdir"
            printf 'lower file\n' >"${base}/lower/t/file"
            printf 'lower file\n' >"${base}/lower/t/subdir/file"
            ln -s file "${base}/lower/t/symlink"
            mkfifo "${base}/lower/t/fifo"
            chmod -R a+rX "${base}/lower"
            mount_unionfs "${base}"
            test_directory=${base}/mnt/t
            ;;
    esac
}

# Mounts unionfs over `base`/lower. Kernel overlayfs honours devices and
# setuid bits by default, so unionfs gets `dev,suid` to compare like with like.
mount_unionfs() {
    local base=$1
    "${unionfs_bin}" \
        -o "lowerdir=${base}/lower,upperdir=${base}/upper,workdir=${base}/work,dev,suid" \
        "${base}/mnt" || die "mounting unionfs on ${base}/mnt failed"
    mounted+=("${base}/mnt")
}

# Runs pjdfstest on `target` and writes target.log (its output),
# target.tsv (test, pass|fail|skip, first line of the failure message) and
# target.seconds (wall time).
run_target() {
    local target=$1
    local config log_file tsv_file started finished
    prepare_target "${target}"
    config=${scratch}/config-${target}.toml
    if [[ ${target} == plain ]]; then
        write_config "${config}" false
    else
        write_config "${config}" true
    fi
    cp "${config}" "${results_dir}/${target}.toml"
    log_file=${results_dir}/${target}.log
    tsv_file=${results_dir}/${target}.tsv

    # pjdfstest binds Unix sockets 55 bytes below the test directory (two
    # 11-byte temporary directories and a 32-byte name), and a socket path
    # must fit in sun_path: 107 bytes and a NUL.
    if [[ ${#test_directory} -gt ${MAX_TEST_DIRECTORY_LENGTH} ]]; then
        die "test directory ${test_directory} is longer than ${MAX_TEST_DIRECTORY_LENGTH} bytes, so pjdfstest's socket paths would not fit in sun_path; set TMPDIR to a shorter directory"
    fi
    log "running pjdfstest on ${target} (${test_directory})"
    started=$(date +%s.%N)
    # pjdfstest exits non-zero whenever a test fails, so the parsed results
    # decide the outcome instead. Timeouts and crashes show as a missing
    # summary line.
    NO_COLOR=1 RUST_BACKTRACE=0 timeout --kill-after=30 "${PJDFSTEST_TIMEOUT:-300}" \
        "${PJDFSTEST_BIN}" -c "${config}" -p "${test_directory}" -- "${patterns[@]}" \
        >"${log_file}" 2>&1 || true
    finished=$(date +%s.%N)
    awk -v a="${started}" -v b="${finished}" 'BEGIN { printf "%.1f\n", b - a }' \
        >"${results_dir}/${target}.seconds"

    if ! grep -q '^Summary: ' "${log_file}"; then
        tail -n 20 "${log_file}" >&2
        die "pjdfstest on ${target} ended without its summary line (timed out or crashed); its last lines are above, the whole output is in ${log_file}"
    fi
    parse_log "${log_file}" >"${tsv_file}"

    if [[ -n ${target_mount} ]]; then
        unmount_one "${target_mount}" || die "unmounting ${target_mount} failed"
        mounted=("${mounted[@]:0:${#mounted[@]}-1}")
    fi
}

# Prints one line per test from pjdfstest's output: name, pass|fail|skip and,
# for a failure, the first line of its panic message.
parse_log() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '
        function flush() {
            if (name != "") print name "\t" status "\t" message
            name = ""
        }
        /^[A-Za-z0-9_:]+ +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/ {
            flush()
            name = $1
            result = $0
            sub(/^[^ ]+ +/, "", result)
            if (result == "ok" || result == "PASSED UNEXPECTEDLY") status = "pass"
            else if (result == "skipped") status = "skip"
            else status = "fail"
            message = ""
            next
        }
        /^\t/ && name != "" && status == "fail" && message == "" {
            message = substr($0, 2)
            gsub(/\t/, " ", message)
        }
        END { flush() }
    '
}

count_status() {
    local target=$1 status=$2
    awk -F'\t' -v s="${status}" '$2 == s { n++ } END { print n + 0 }' "${results_dir}/${target}.tsv"
}

# Prints the Markdown table of results per target.
print_table() {
    local target pass fail skip
    printf '| target | tests run | passed | failed | skipped | seconds |\n'
    printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
    for target in "${TARGETS[@]}"; do
        pass=$(count_status "${target}" pass)
        fail=$(count_status "${target}" fail)
        skip=$(count_status "${target}" skip)
        printf '| %s | %d | %d | %d | %d | %s |\n' "$(describe_target "${target}")" \
            $((pass + fail)) "${pass}" "${fail}" "${skip}" "$(cat "${results_dir}/${target}.seconds")"
    done
}

describe_target() {
    case $1 in
        plain) printf 'plain directory (%s)' "$(findmnt -n -o FSTYPE --target "${scratch}")" ;;
        overlay) printf 'kernel overlayfs, empty lower layer' ;;
        unionfs) printf 'unionfs, empty lower layer' ;;
        unionfs-lower) printf 'unionfs, in a lower-layer directory' ;;
    esac
}

# Compares the unionfs targets with kernel overlayfs and the known failures.
# Prints one line per unionfs failure: target, test, listed|new, the result
# of the same test on kernel overlayfs, and the listed reason or the failure
# message. Returns 1 when any failure is not listed.
check_failures() {
    local -A known=() overlay_status=() failed_anywhere=()
    local name reason status message target line
    local new_failures=0

    while IFS= read -r line; do
        [[ ${line} =~ ^[[:space:]]*(#|$) ]] && continue
        read -r name reason <<<"${line}"
        [[ -n ${reason} ]] || die "${KNOWN_FAILURES_FILE}: '${name}' has no reason; write one after the test name"
        known[${name}]=${reason}
    done <"${KNOWN_FAILURES_FILE}"

    while IFS=$'\t' read -r name status message; do
        overlay_status[${name}]=${status}
    done <"${results_dir}/overlay.tsv"

    for target in unionfs unionfs-lower; do
        while IFS=$'\t' read -r name status message; do
            [[ ${status} == fail ]] || continue
            failed_anywhere[${name}]=1
            if [[ -n ${known[${name}]:-} ]]; then
                printf '%s\t%s\tlisted\t%s\t%s\n' "${target}" "${name}" \
                    "${overlay_status[${name}]:-not run}" "${known[${name}]}"
            else
                printf '%s\t%s\tnew\t%s\t%s\n' "${target}" "${name}" \
                    "${overlay_status[${name}]:-not run}" "${message}"
                new_failures=$((new_failures + 1))
            fi
        done <"${results_dir}/${target}.tsv"
    done

    # Entries that no longer fail only warn, so that a fix does not break CI.
    # A filtered run skips this check, because it leaves most listed tests out.
    if [[ ${#patterns[@]} -eq 0 ]]; then
        for name in "${!known[@]}"; do
            if [[ -z ${failed_anywhere[${name}]:-} ]]; then
                log "warning: ${name} is listed in ${KNOWN_FAILURES_FILE##*/} but passed on unionfs (or did not run); remove it"
            fi
        done
    fi

    [[ ${new_failures} -eq 0 ]]
}

# Prints the unionfs failures that are not listed, then counts of the listed ones.
print_failures() {
    local failures_file=$1
    local target
    if awk -F'\t' '$3 == "new" { found = 1 } END { exit !found }' "${failures_file}"; then
        printf 'unionfs failures not listed in tests/%s:\n' "${KNOWN_FAILURES_FILE##*/}"
        awk -F'\t' '$3 == "new" {
            printf "  %-14s %s (kernel overlayfs: %s)\n      %s\n", $1, $2, $4, $5
        }' "${failures_file}"
    else
        printf 'unionfs fails no test that is not listed in tests/%s.\n' "${KNOWN_FAILURES_FILE##*/}"
    fi
    for target in unionfs unionfs-lower; do
        printf 'listed failures on %s: %d\n' "${target}" \
            "$(awk -F'\t' -v t="${target}" '$1 == t && $3 == "listed" { n++ } END { print n + 0 }' "${failures_file}")"
    done
}

write_environment() {
    {
        printf 'date: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf 'kernel: %s\n' "$(uname -r)"
        # Only changes to src/ alter the binary under test.
        printf 'commit: %s%s\n' "$(git -C "${REPO_ROOT}" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
            "$(git -C "${REPO_ROOT}" diff --quiet HEAD -- src 2>/dev/null || echo ' (with uncommitted changes in src/)')"
        printf 'pjdfstest: %s\n' "$("${PJDFSTEST_BIN}" --version)"
        printf 'layers on: %s\n' "$(findmnt -n -o FSTYPE --target "${scratch}")"
        printf 'naptime: %s s\n' "${NAPTIME}"
        if [[ ${#patterns[@]} -gt 0 ]]; then
            printf 'patterns: %s\n' "${patterns[*]}"
        fi
    } >"${results_dir}/environment.txt"
}

main() {
    parse_args "$@"
    require_environment
    install_pjdfstest
    ensure_test_user
    find_unionfs
    trap cleanup_on_exit EXIT
    setup_scratch
    rm -f "${results_dir}"/*.{log,tsv,toml,seconds} "${results_dir}"/{summary.md,failures.tsv}

    local target status=0
    for target in "${TARGETS[@]}"; do
        run_target "${target}"
    done
    write_environment

    local failures_file=${results_dir}/failures.tsv
    check_failures >"${failures_file}" || status=1

    {
        sed 's/^/    /' "${results_dir}/environment.txt"
        printf '\n'
        print_table
    } | tee "${results_dir}/summary.md"
    printf '\n'
    print_failures "${failures_file}"
    printf 'Full results: %s\n' "${results_dir}"

    if [[ ${status} -ne 0 ]]; then
        log "error: unionfs fails tests that are not listed in ${KNOWN_FAILURES_FILE#"${REPO_ROOT}"/}; see the list above and the logs in ${results_dir}. Fix unionfs, or list a test with its reason when the failure cannot be fixed."
    fi
    return "${status}"
}

main "$@"
