//! The runtime directory `/run/unionfs` as a boundary: a user who could
//! write there before must not steer the root daemon's pid file onto a
//! host file. Each case runs in a private mount namespace with its own
//! tmpfs on /run, so the host's runtime directory is never touched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::fixture::{self, Scratch, unionfs_bin};

/// Runs `script` with `sh` in a new mount namespace whose /run is a fresh
/// tmpfs; returns its stdout. `$UNIONFS`, `$LAYERS`, `$MNT` and `$VICTIM`
/// are set.
fn in_private_run(scratch: &Scratch, script: &str) -> String {
    let layers = format!(
        "{}:{}",
        scratch.path("upper").display(),
        scratch.path("lower").display()
    );
    let victim = scratch.dir.path().join("victim");
    fixture::run(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-ec"])
            .arg(format!("mount -t tmpfs tmpfs /run\n{script}"))
            .env("UNIONFS", unionfs_bin())
            .env("LAYERS", layers)
            .env("MNT", scratch.path("mnt"))
            .env("VICTIM", victim),
    )
}

fn scratch_with_victim() -> Scratch {
    let scratch = Scratch::new();
    fixture::write(&scratch.path("lower"), "file", "lower\n");
    scratch.path("upper");
    fs::write(scratch.dir.path().join("victim"), "host data\n").unwrap();
    fs::set_permissions(
        scratch.dir.path().join("victim"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    scratch
}

/// Directories others may write, full of symlinks to a host file under
/// every name the pid file could take: the mount works, the host file
/// stays as it was, and the directories end up 0755.
#[test]
fn planted_pid_file_symlinks_ignored() {
    let scratch = scratch_with_victim();
    let modes = in_private_run(
        &scratch,
        r#"mkdir -m 0777 /run/unionfs /run/unionfs/fuse
for minor in $(seq 0 1023); do ln -s "$VICTIM" /run/unionfs/fuse/0-$minor; done
"$UNIONFS" mount "$LAYERS" "$MNT"
cat "$MNT/file" >/dev/null
"$UNIONFS" umount "$MNT"
stat -c '%a %F' /run/unionfs /run/unionfs/fuse"#,
    );
    assert_eq!(
        fs::read_to_string(scratch.dir.path().join("victim")).unwrap(),
        "host data\n",
        "the daemon wrote through a planted symlink"
    );
    assert_eq!(modes, "755 directory\n755 directory\n");
}

/// A pid directory another user made is not used: the mount still works
/// and writes nothing there while it is live.
#[test]
fn foreign_pid_dir_refused() {
    let scratch = scratch_with_victim();
    let listing = in_private_run(
        &scratch,
        r#"mkdir -m 0755 /run/unionfs
mkdir -m 0777 /run/unionfs/fuse
chown 65534:65534 /run/unionfs/fuse
"$UNIONFS" mount "$LAYERS" "$MNT"
cat "$MNT/file"
ls -A /run/unionfs/fuse
"$UNIONFS" umount "$MNT""#,
    );
    assert_eq!(
        listing, "lower\n",
        "a pid file was written into a foreign directory"
    );
}
