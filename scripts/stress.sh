#!/usr/bin/env bash
# Runs many threads of random operations (copy-ups, renames, unlinks,
# mkdir and rmdir, links, truncations, reads) on the same few names of one
# unionfs mount, with a watchdog for deadlocks, then checks the daemon's
# log for panics and mounts the upper layer under kernel overlayfs
# (tests/reliability/stress.rs). The symlink-swap races of
# tests/reliability/hostile.rs run for the same soak time.
#
# Usage: sudo scripts/stress.sh [--soak] [SECONDS] [--threads N]
#   default: 10 s (as CI runs it), --soak: 300 s, SECONDS: that long.
# UNIONFS_SEED=N repeats a run. Needs root, /dev/fuse and kernel overlayfs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

usage() {
    echo "usage: $0 [--soak] [SECONDS] [--threads N]" >&2
    exit 2
}

if [[ $(id -u) -ne 0 ]]; then
    echo "stress.sh: the test mounts filesystems and needs root; run it with sudo" >&2
    exit 1
fi

while [[ $# -gt 0 ]]; do
    case $1 in
        --soak) export UNIONFS_SOAK=1 ;;
        --threads)
            [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "stress.sh: --threads needs a whole number" >&2; usage; }
            export UNIONFS_STRESS_THREADS=$2
            shift
            ;;
        -h | --help) usage ;;
        *[!0-9]* | '') echo "stress.sh: invalid duration '$1': give whole seconds" >&2; usage ;;
        *)
            export UNIONFS_STRESS_SECONDS=$1
            export UNIONFS_RACE_SECONDS=$1
            ;;
    esac
    shift
done

cargo test --release --test reliability -- --nocapture \
    stress::threads_race_on_few_names \
    hostile::upper_dir_swapped_for_symlink_during_copy_ups \
    hostile::work_dir_swapped_for_symlink_during_copy_ups \
    hostile::lower_dir_swapped_for_symlink_during_reads
