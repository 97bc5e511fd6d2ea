//! A container layer written through unionfs, exported and imported
//! again, gives the same merged view over the same image layer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fixture::{self, Mount, Scratch};
use crate::snapshot;
use crate::support::{export, import};

/// Builds an image layer with files, directories, links and xattrs.
fn image_layer(root: &Path) {
    fixture::write(root, "etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    fixture::write(root, "etc/motd", "welcome\n");
    fixture::write(root, "usr/share/doc/a/README", "a\n");
    fixture::write(root, "usr/share/doc/b/README", "b\n");
    fixture::write(root, "var/log/old.log", "old\n");
    fixture::write(root, "opt/app/config", "x=1\n");
    fixture::symlink(root, "bin/sh", "busybox");
    fixture::write(root, "bin/busybox", "#!binary\n");
    xattr::set(root.join("etc/motd"), "user.origin", b"image").unwrap();
    fixture::age(root);
}

/// Changes the merged view as a container would.
fn container_changes(merged: &Path) {
    std::fs::write(merged.join("etc/motd"), "changed\n").unwrap();
    std::fs::remove_file(merged.join("var/log/old.log")).unwrap();
    std::fs::remove_dir_all(merged.join("usr/share/doc/a")).unwrap();
    std::fs::remove_dir_all(merged.join("opt/app")).unwrap();
    std::fs::create_dir(merged.join("opt/app")).unwrap();
    std::fs::write(merged.join("opt/app/new"), "fresh\n").unwrap();
    std::fs::set_permissions(
        merged.join("etc/passwd"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(merged.join("bin/busybox"), Some(1000), Some(1000)).unwrap();
    std::fs::create_dir_all(merged.join("home/user")).unwrap();
    std::fs::write(merged.join("home/user/data"), "data\n").unwrap();
    std::fs::hard_link(
        merged.join("home/user/data"),
        merged.join("home/user/data2"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/home/user/data", merged.join("home/link")).unwrap();
    xattr::set(merged.join("home/user/data"), "user.tag", b"v").unwrap();
    std::fs::remove_file(merged.join("bin/sh")).unwrap();
}

/// Returns `time` rounded down to whole seconds, so that a time set during
/// the test never reads as earlier than the test's start.
fn floor_to_second(time: SystemTime) -> SystemTime {
    let seconds = time.duration_since(UNIX_EPOCH).unwrap().as_secs();
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn merged_view(
    scratch: &Scratch,
    name: &str,
    layers: &[PathBuf],
    started: SystemTime,
) -> snapshot::Tree {
    let root = scratch.dir.path().join(name);
    let mut mount = Mount::unionfs(&root, None, None, layers, &["dev", "suid"]);
    let view = snapshot::tree(&root, started);
    mount.unmount();
    view
}

#[test]
fn round_trip_same_merged_view() {
    let scratch = Scratch::new();
    let image = scratch.path("image");
    image_layer(&image);
    let started = floor_to_second(SystemTime::now());

    let upper = scratch.path("upper");
    let work = scratch.path("work");
    let merged = scratch.dir.path().join("merged");
    let mut mount = Mount::unionfs(
        &merged,
        Some(&upper),
        Some(&work),
        std::slice::from_ref(&image),
        &["dev", "suid"],
    );
    container_changes(&merged);
    mount.unmount();

    let tar = scratch.dir.path().join("container.tar.gz");
    export(&upper, &tar, &[], &[]);
    let imported = scratch.dir.path().join("imported");
    import(&tar, &imported, &[]);

    let original = merged_view(
        &scratch,
        "view-original",
        &[upper.clone(), image.clone()],
        started,
    );
    let again = merged_view(
        &scratch,
        "view-imported",
        &[imported.clone(), image.clone()],
        started,
    );
    snapshot::assert_same(&again, &original, "merged view over the imported layer");
    assert!(original.contains_key(Path::new("opt/app/new")));
    assert!(
        !original.contains_key(Path::new("opt/app/config")),
        "opaque directory lost"
    );
    assert!(
        !original.contains_key(Path::new("usr/share/doc/a")),
        "whiteout lost"
    );
}
