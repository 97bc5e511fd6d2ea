//! Reliability and security tests on real mounts: hostile layer content,
//! daemon crashes, resource exhaustion and faults, races, bad input, and
//! the container launcher as a boundary. They need root, `/dev/fuse`,
//! kernel overlayfs, loop devices and the busybox root filesystem from
//! `scripts/rootfs.sh busybox`. `docs/threat-model.md` lists every case.
//!
//! Each test is bounded for CI; `UNIONFS_SOAK=1` runs the long modes
//! (`scripts/crash-test.sh` and `scripts/stress.sh` set it).

#[path = "../integration/fixture.rs"]
mod fixture;
#[path = "../integration/snapshot.rs"]
mod snapshot;

#[path = "../launcher/fixture.rs"]
mod launcher_fixture;
mod support;

mod boundary;
mod crash;
mod exhaustion;
mod hostile;
mod input;
mod limits;
mod rundir;
mod stress;
