//! Ecosystem tests: OCI layer import and export, `unionfs run --image` on
//! an OCI image layout, and other tools reading what unionfs writes
//! (`podman import`, `umoci unpack`).
//!
//! They need root (owners, device nodes, `trusted.*` xattrs, mounts) and
//! `/dev/fuse`. The tool tests need podman, runc and umoci from Debian's
//! packages (`scripts/deps.sh` installs them). The podman mount_program
//! test is `scripts/podman-test.sh`.

#[path = "../integration/fixture.rs"]
mod fixture;
#[path = "../integration/snapshot.rs"]
mod snapshot;

mod image;
mod import;
mod roundtrip;
mod support;
mod tools;
