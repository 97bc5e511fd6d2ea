//! `unionfs layer import` and `export`: whiteout formats, metadata, safe
//! unpacking, and reproducible output.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use tar::EntryType;

use crate::fixture::Scratch;
use crate::support::*;

/// Returns a layer that uses every whiteout form and every entry type.
fn sample_layer() -> TarBuilder {
    let mut tar = TarBuilder::new();
    tar.dir("./")
        .dir("etc/")
        .file_with(
            "etc/secret",
            "s3cret\n",
            1234,
            5678,
            0o4750,
            &[("user.note", b"kept"), ("trusted.overlay.redirect", b"/x")],
        )
        .file("etc/.wh.hostname", "")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", "")
        .file("opaque/kept", "kept\n")
        .file(".wh.replaced", "")
        .dir("replaced/")
        .file("replaced/new", "new\n")
        .symlink("etc/link", "../../../outside/target")
        .hard_link("etc/secret-link", "etc/secret")
        .raw("fifo", EntryType::Fifo, 0o644, b"", None)
        .device("null", EntryType::Char, 1, 3)
        .file(".wh..wh.plnk", "")
        .file("implicit/parent/file", "made\n");
    tar
}

#[test]
fn import_overlay_format() {
    let scratch = Scratch::new();
    let tar = sample_layer().write(&scratch.dir.path().join("layer.tar"));
    let dir = scratch.dir.path().join("layer");
    import(&tar, &dir, &[]);

    assert!(
        is_whiteout(&dir.join("etc/hostname")),
        "etc/hostname is not a 0/0 device"
    );
    assert!(!dir.join("etc/.wh.hostname").exists());
    assert_eq!(
        xattr_of(&dir.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dir.join("opaque/.wh..wh..opq").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("opaque/kept")).unwrap(),
        "kept\n"
    );
    // A directory written where the same layer put a whiteout replaces
    // the lower directory, so it is opaque.
    assert_eq!(
        xattr_of(&dir.join("replaced"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("replaced/new")).unwrap(),
        "new\n"
    );
    assert!(!dir.join(".wh..wh.plnk").exists(), "AUFS metadata was kept");
    assert_eq!(
        std::fs::read_to_string(dir.join("implicit/parent/file")).unwrap(),
        "made\n"
    );
}

#[test]
fn import_keeps_metadata() {
    let scratch = Scratch::new();
    let tar = sample_layer().write(&scratch.dir.path().join("layer.tar"));
    let dir = scratch.dir.path().join("layer");
    import(&tar, &dir, &[]);

    let secret = std::fs::symlink_metadata(dir.join("etc/secret")).unwrap();
    assert_eq!(secret.uid(), 1234);
    assert_eq!(secret.gid(), 5678);
    assert_eq!(secret.mode() & 0o7777, 0o4750, "setuid bit or mode lost");
    assert_eq!(secret.mtime(), ENTRY_TIME as i64);
    assert_eq!(secret.mtime_nsec(), 123_456_789);
    assert_eq!(
        xattr_of(&dir.join("etc/secret"), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(
        xattr_of(&dir.join("etc/secret"), "trusted.overlay.redirect"),
        None,
        "overlay xattr from the tar was set"
    );
    let link = std::fs::symlink_metadata(dir.join("etc/secret-link")).unwrap();
    assert_eq!(
        link.ino(),
        secret.ino(),
        "hard link does not share the inode"
    );
    assert_eq!(
        std::fs::read_link(dir.join("etc/link")).unwrap(),
        Path::new("../../../outside/target")
    );
    let etc = std::fs::symlink_metadata(dir.join("etc")).unwrap();
    assert_eq!(
        etc.mtime(),
        ENTRY_TIME as i64,
        "directory time changed by its entries"
    );
    assert_eq!(etc.mode() & 0o7777, 0o755);
    let null = std::fs::symlink_metadata(dir.join("null")).unwrap();
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(dir.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let root = std::fs::symlink_metadata(&dir).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o755);
}

#[test]
fn import_keep_aufs() {
    let scratch = Scratch::new();
    let tar = sample_layer().write(&scratch.dir.path().join("layer.tar"));
    let dir = scratch.dir.path().join("layer");
    import(&tar, &dir, &["--keep-aufs"]);

    assert!(dir.join("etc/.wh.hostname").is_file());
    assert!(!dir.join("etc/hostname").exists());
    assert!(dir.join("opaque/.wh..wh..opq").is_file());
    assert_eq!(
        xattr_of(&dir.join("opaque"), "trusted.overlay.opaque"),
        None
    );
    assert!(dir.join(".wh.replaced").is_file());
}

#[test]
fn import_gzip_same_as_plain() {
    let scratch = Scratch::new();
    let data = sample_layer().finish();
    let plain = write_file(&scratch.dir.path().join("layer.tar"), &data);
    let gzipped = write_file(&scratch.dir.path().join("layer.tar.gz"), &gzip(&data));
    let (a, b) = (scratch.dir.path().join("a"), scratch.dir.path().join("b"));
    // Directories the tar does not list get the time of the import.
    let started = std::time::SystemTime::now();
    import(&plain, &a, &[]);
    import(&gzipped, &b, &[]);
    crate::snapshot::assert_same(
        &crate::snapshot::layer(&b, started),
        &crate::snapshot::layer(&a, started),
        "layer from the gzip tar",
    );
}

/// Runs an import that must fail; checks the message, that no layer
/// directory was left, and that nothing outside changed.
fn assert_rejected(tar: &mut TarBuilder, fragment: &str) {
    let scratch = Scratch::new();
    let outside = scratch.path("outside");
    std::fs::write(outside.join("target"), "untouched\n").unwrap();
    let tar = tar.write(&scratch.dir.path().join("bad.tar"));
    let dir = scratch.dir.path().join("layer");
    let output = Command::new(unionfs_bin())
        .args(["layer", "import"])
        .arg(&tar)
        .arg(&dir)
        .current_dir(scratch.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "import succeeded or crashed: {stderr}"
    );
    assert!(stderr.contains(fragment), "{fragment:?} not in {stderr:?}");
    assert!(!dir.exists(), "a failed import left {}", dir.display());
    let names: Vec<_> = std::fs::read_dir(scratch.dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "extra files beside the layer: {names:?}");
    let outside_names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside_names.len(),
        1,
        "files written outside: {outside_names:?}"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("target")).unwrap(),
        "untouched\n"
    );
}

#[test]
fn import_rejects_parent_components() {
    assert_rejected(
        TarBuilder::new().file("../outside/escape", "x"),
        "'..' components",
    );
    assert_rejected(
        TarBuilder::new()
            .dir("a/")
            .file("a/../../outside/escape", "x"),
        "'..' components",
    );
}

#[test]
fn import_rejects_absolute_names() {
    let scratch_outside = std::env::temp_dir().join(format!("unionfs-abs-{}", std::process::id()));
    let name = format!("{}/escape", scratch_outside.display());
    assert_rejected(TarBuilder::new().file(&name, "x"), "absolute names");
    assert!(!scratch_outside.exists());
}

#[test]
fn import_rejects_symlink_parents() {
    // The tar's own symlink, pointing out of the layer, used as a parent.
    assert_rejected(
        TarBuilder::new()
            .symlink("link", "../outside")
            .file("link/escape", "x"),
        "its parent link is a symlink",
    );
    assert_rejected(
        TarBuilder::new()
            .symlink("abs", "/tmp")
            .file("abs/unionfs-escape", "x"),
        "its parent abs is a symlink",
    );
    // Replacing the target of an earlier symlink: the name is replaced,
    // the target untouched.
    assert_rejected(
        TarBuilder::new()
            .symlink("dir", "../outside")
            .file("dir/target", "overwritten\n"),
        "is a symlink",
    );
    // A whiteout placed through a symlink parent.
    assert_rejected(
        TarBuilder::new()
            .symlink("link", "../outside")
            .file("link/.wh.target", ""),
        "is a symlink",
    );
}

#[test]
fn import_rejects_outside_hard_links() {
    assert_rejected(
        TarBuilder::new().hard_link("h", "../outside/target"),
        "'..' components",
    );
    assert_rejected(
        TarBuilder::new().hard_link("h", "/etc/passwd"),
        "absolute names",
    );
    assert_rejected(
        TarBuilder::new()
            .symlink("s", "../outside")
            .hard_link("h", "s/target"),
        "is a symlink or not a directory",
    );
    assert_rejected(
        TarBuilder::new().hard_link("h", "missing"),
        "is not in the layer",
    );
    assert_rejected(
        TarBuilder::new().dir("d/").hard_link("h", "d"),
        "a hard link to a directory",
    );
}

#[test]
fn import_rejects_bad_whiteouts() {
    assert_rejected(
        TarBuilder::new().file(".wh..", ""),
        "names no deletable entry",
    );
    assert_rejected(
        TarBuilder::new().dir("d/").file("d/.wh.", ""),
        "names no deletable entry",
    );
}

#[test]
fn import_rejects_bad_input() {
    let scratch = Scratch::new();
    let garbage = write_file(&scratch.dir.path().join("garbage.tar"), &[0x42; 700]);
    let output = layer(&[Path::new("import"), &garbage, &scratch.dir.path().join("g")]);
    assert_eq!(output.status.code(), Some(1), "garbage accepted");

    let zstd = write_file(
        &scratch.dir.path().join("layer.tar.zst"),
        &[0x28, 0xb5, 0x2f, 0xfd, 0, 0],
    );
    let output = layer(&[Path::new("import"), &zstd, &scratch.dir.path().join("z")]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("zstd"),
        "zstd not named"
    );

    let truncated = sample_layer().finish();
    let truncated = write_file(
        &scratch.dir.path().join("short.tar.gz"),
        &gzip(&truncated)[..200],
    );
    let output = layer(&[
        Path::new("import"),
        &truncated,
        &scratch.dir.path().join("t"),
    ]);
    assert_eq!(output.status.code(), Some(1), "truncated gzip accepted");
    assert!(!scratch.dir.path().join("t").exists());

    let missing = layer(&[
        Path::new("import"),
        &scratch.dir.path().join("none.tar"),
        &scratch.dir.path().join("m"),
    ]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("none.tar"),
        "missing file not named"
    );

    let busy = scratch.path("busy");
    std::fs::write(busy.join("file"), "x").unwrap();
    let tar = sample_layer().write(&scratch.dir.path().join("ok.tar"));
    let output = layer(&[Path::new("import"), &tar, &busy]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not empty"));
}

/// Fills `root` with every format a unionfs upper layer contains.
fn container_layer(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/config"), "a=1\n").unwrap();
    std::os::unix::fs::symlink("config", root.join("etc/link")).unwrap();
    std::fs::hard_link(root.join("etc/config"), root.join("etc/config2")).unwrap();
    crate::fixture::whiteout(root, "etc/removed");
    crate::fixture::opaque(root, "var/cache");
    std::fs::write(root.join("var/cache/fresh"), "f\n").unwrap();
    xattr::set(root.join("etc/config"), "user.origin", b"test").unwrap();
    std::fs::create_dir_all(root.join(".wh..wh.unionfs-work/work")).unwrap();
    crate::fixture::age(root);
}

#[test]
fn export_whiteout_names_and_order() {
    let scratch = Scratch::new();
    let layer = scratch.path("layer");
    container_layer(&layer);
    let tar = scratch.dir.path().join("layer.tar");
    export(&layer, &tar, &[], &[]);
    let entries = tar_entries(&std::fs::read(&tar).unwrap());
    let names: Vec<&str> = entries.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "etc/",
            "etc/config",
            "etc/config2",
            "etc/link",
            "etc/.wh.removed",
            "var/",
            "var/cache/",
            "var/cache/.wh..wh..opq",
            "var/cache/fresh",
        ]
    );
    assert_eq!(
        entries[2].1,
        EntryType::Link,
        "second name of a hard link is not a link entry"
    );
    assert_eq!(
        entries[4].1,
        EntryType::Regular,
        "whiteout is not a regular file"
    );
}

#[test]
fn export_reproducible() {
    let scratch = Scratch::new();
    let layer = scratch.path("layer");
    container_layer(&layer);
    let first = export(&layer, &scratch.dir.path().join("a.tar"), &[], &[]);
    let second = export(&layer, &scratch.dir.path().join("b.tar"), &[], &[]);
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(scratch.dir.path().join("a.tar")).unwrap(),
        std::fs::read(scratch.dir.path().join("b.tar")).unwrap()
    );

    // A copy elsewhere, made at another time, gives the same bytes.
    let copy = scratch.dir.path().join("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&layer)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let copied = export(&copy, &scratch.dir.path().join("c.tar"), &[], &[]);
    assert_eq!(copied, first, "a copy of the layer exports differently");

    let gz_a = export(&layer, &scratch.dir.path().join("a.tar.gz"), &[], &[]);
    let gz_b = export(&copy, &scratch.dir.path().join("b.tgz"), &[], &[]);
    assert_eq!(gz_a, gz_b, "gzip output differs");
    assert_ne!(gz_a, first);
}

#[test]
fn export_clamps_mtime() {
    let scratch = Scratch::new();
    let layer = scratch.path("layer");
    container_layer(&layer);
    std::fs::write(layer.join("etc/new"), "now\n").unwrap();
    let clamp = crate::fixture::LAYER_TIME as u64 + 10;
    let by_env = export(
        &layer,
        &scratch.dir.path().join("env.tar"),
        &[],
        &[("SOURCE_DATE_EPOCH", &clamp.to_string())],
    );
    let by_flag = export(
        &layer,
        &scratch.dir.path().join("flag.tar"),
        &["--clamp-mtime", &clamp.to_string()],
        &[],
    );
    assert_eq!(by_env, by_flag);
    let entries = tar_entries(&std::fs::read(scratch.dir.path().join("env.tar")).unwrap());
    for (name, _, mtime) in &entries {
        assert!(
            *mtime <= clamp,
            "{name} has mtime {mtime} after the clamp {clamp}"
        );
    }
    let new = entries
        .iter()
        .find(|(name, _, _)| name == "etc/new")
        .unwrap();
    assert_eq!(new.2, clamp);
    let old = entries
        .iter()
        .find(|(name, _, _)| name == "etc/config")
        .unwrap();
    assert_eq!(
        old.2,
        crate::fixture::LAYER_TIME as u64,
        "a time before the clamp changed"
    );

    let output = Command::new(unionfs_bin())
        .args(["layer", "export"])
        .arg(&layer)
        .arg(scratch.dir.path().join("bad.tar"))
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SOURCE_DATE_EPOCH"));
    assert!(!scratch.dir.path().join("bad.tar").exists());
}

#[test]
fn export_import_same_layer() {
    let scratch = Scratch::new();
    let layer = scratch.path("layer");
    container_layer(&layer);
    std::fs::remove_dir_all(layer.join(".wh..wh.unionfs-work")).unwrap();
    let tar = scratch.dir.path().join("layer.tar");
    export(&layer, &tar, &[], &[]);
    let imported = scratch.dir.path().join("imported");
    import(&tar, &imported, &[]);
    let started = std::time::SystemTime::now();
    crate::snapshot::assert_same(
        &crate::snapshot::layer(&imported, started),
        &crate::snapshot::layer(&layer, started),
        "imported layer",
    );
}

#[test]
fn export_rejects_other_compression() {
    let scratch = Scratch::new();
    let dir = scratch.path("layer");
    for name in ["layer.tar.zst", "layer.tar.xz"] {
        let out = scratch.dir.path().join(name);
        let output = layer(&[Path::new("export"), &dir, &out]);
        assert_eq!(output.status.code(), Some(2), "{name} accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(name),
            "{name} not named"
        );
        assert!(!out.exists(), "{name} was written");
    }
}
