#!/usr/bin/env bash
# Runs the whole test suite on real mounts: installs what the tests need,
# builds, and runs the unit and integration tests, then pjdfstest. Needs root
# and /dev/fuse.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: the tests mount filesystems and need root; run it with sudo" >&2
    exit 1
fi

scripts/deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --release --locked
# mount(8) runs `mount -t fuse.unionfs` through mount.fuse3, which finds
# `unionfs` on the system path.
install -m 0755 target/release/unionfs /usr/local/bin/unionfs
cargo test --release --locked -- "$@"

# podman with unionfs as containers-storage's mount_program (about 10 s).
UNIONFS_BIN="$repo/target/release/unionfs" scripts/podman-test.sh

# POSIX conformance: pjdfstest on the layers' filesystem, kernel overlayfs and
# unionfs in one run (about 30 s, plus 1 to 3 minutes to build pjdfstest the
# first time). It fails on a unionfs failure not listed in
# tests/pjdfstest-known-failures.txt. See docs/testing.md.
UNIONFS_BIN="$repo/target/release/unionfs" scripts/pjdfstest.sh
