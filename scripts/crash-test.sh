#!/usr/bin/env bash
# Kills the unionfs daemon with SIGKILL at random moments during a workload
# of copy-ups, appends with fsync, renames, unlinks, rmdirs and creations,
# then checks after each kill that kernel overlayfs accepts the upper layer,
# that it shows the state before or after the interrupted operation, and
# that the next mount sweeps the work dir (tests/reliability/crash.rs).
#
# Usage: sudo scripts/crash-test.sh [--soak] [TRIALS]
#   default: 30 trials (as CI runs them), --soak: 300, TRIALS: that many.
# UNIONFS_SEED=N repeats a run; the seed and a report print at the end.
# Needs root, /dev/fuse and kernel overlayfs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

usage() {
    echo "usage: $0 [--soak] [TRIALS]" >&2
    exit 2
}

if [[ $(id -u) -ne 0 ]]; then
    echo "crash-test.sh: the test mounts filesystems and needs root; run it with sudo" >&2
    exit 1
fi

while [[ $# -gt 0 ]]; do
    case $1 in
        --soak) export UNIONFS_SOAK=1 ;;
        -h | --help) usage ;;
        *[!0-9]* | '') echo "crash-test.sh: invalid trial count '$1': give a whole number" >&2; usage ;;
        *) export UNIONFS_CRASH_TRIALS=$1 ;;
    esac
    shift
done

cargo test --release --test reliability crash::sigkill_during_workload -- --nocapture --exact
