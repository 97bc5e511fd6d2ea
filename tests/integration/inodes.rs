//! Inode numbers of the merged view: stable across copy-up and across the
//! kernel forgetting inodes, unique across layers on different
//! filesystems, and the same in readdir as in stat.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixture::{self, Mount, Pair, Scratch, errno};

/// Makes the kernel drop its dentry and inode caches, so it forgets every
/// unused FUSE inode and looks names up again.
fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
        .ino()
}

fn append(path: &Path, data: &[u8]) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(data))
        .unwrap_or_else(|err| panic!("cannot append to {}: {err}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("cannot chmod {}: {err}", path.display()));
}

/// Returns, for each step after the first, whether `steps` still shows the
/// first step's number.
fn unchanged(steps: &[u64]) -> Vec<bool> {
    steps[1..].iter().map(|ino| *ino == steps[0]).collect()
}

#[test]
fn ino_stable_across_copy_up() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "file", "lower\n");
        fixture::write(root, "dir/child", "child\n");
        fixture::write(root, "forgotten", "lower\n");
        fixture::age(root);
    });
    // Each check returns whether st_ino is unchanged after copy-up and
    // after drop_caches, in that order.
    let file = pair.both("file", |root| {
        let path = root.join("file");
        let before = ino(&path);
        append(&path, b"more\n");
        let after = ino(&path);
        drop_caches();
        unchanged(&[before, after, ino(&path)])
    });
    assert_eq!(
        file,
        [true, true],
        "file st_ino after copy-up, after drop_caches"
    );

    let dir = pair.both("dir", |root| {
        let path = root.join("dir");
        let before = ino(&path);
        chmod(&path, 0o700);
        let after = ino(&path);
        drop_caches();
        unchanged(&[before, after, ino(&path)])
    });
    assert_eq!(
        dir,
        [true, true],
        "dir st_ino after copy-up, after drop_caches"
    );

    let child = pair.both("child of a copied-up dir", |root| {
        let path = root.join("dir/child");
        let before = ino(&path);
        append(&path, b"more\n");
        let after = ino(&path);
        drop_caches();
        unchanged(&[before, after, ino(&path)])
    });
    assert_eq!(
        child,
        [true, true],
        "dir/child st_ino after copy-up, after drop_caches"
    );

    let forgotten = pair.both("looked up, forgotten, copied up", |root| {
        let path = root.join("forgotten");
        let before = ino(&path);
        drop_caches();
        chmod(&path, 0o600);
        let after = ino(&path);
        drop_caches();
        unchanged(&[before, after, ino(&path)])
    });
    assert_eq!(
        forgotten,
        [true, true],
        "forgotten st_ino after copy-up, after drop_caches"
    );
    pair.finish();
}

/// Unmounts a tmpfs when dropped, lazily so that a failing test leaves no
/// busy mount behind.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        fixture::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
                .arg(path),
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Returns the real inode numbers of every entry under `root`.
fn real_inos(root: &Path) -> Vec<u64> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|entry| entry.unwrap().metadata().unwrap().ino())
        .collect()
}

/// Returns the groups of merged paths under `root` that share one st_ino.
fn shared_inos(root: &Path) -> Vec<Vec<PathBuf>> {
    let mut by_ino: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(root).unwrap().to_path_buf();
        by_ino
            .entry(entry.metadata().unwrap().ino())
            .or_default()
            .push(relative);
    }
    let mut shared: Vec<Vec<PathBuf>> = by_ino
        .into_values()
        .filter(|paths| paths.len() > 1)
        .collect();
    shared.sort();
    shared
}

#[test]
fn ino_unique_across_filesystems() {
    let scratch = Scratch::new();
    let first_tmpfs = Tmpfs::mount(&scratch.dir.path().join("tmpfs-a"));
    let second_tmpfs = Tmpfs::mount(&scratch.dir.path().join("tmpfs-b"));
    let lowers = vec![
        first_tmpfs.path.join("layer"),
        scratch.path("disk-layer"),
        second_tmpfs.path.join("layer"),
    ];
    for (index, lower) in lowers.iter().enumerate() {
        for file in 0..40 {
            fixture::write(
                lower,
                &format!("layer{index}-{file}"),
                &format!("{index}/{file}\n"),
            );
            fixture::write(
                lower,
                &format!("common/layer{index}-{file}"),
                &format!("common {index}/{file}\n"),
            );
        }
        fixture::write(lower, "everywhere", &format!("layer {index}\n"));
    }
    let first = real_inos(&lowers[0]);
    let collisions = real_inos(&lowers[2])
        .into_iter()
        .filter(|ino| first.contains(ino))
        .count();
    assert!(
        collisions > 10,
        "the two tmpfs layers must reuse each other's inode numbers for this test"
    );

    let upper = scratch.path("upper");
    let work = scratch.path("work");
    let root = scratch.dir.path().join("merged");
    let mut mount = Mount::unionfs(&root, Some(&upper), Some(&work), &lowers, &[]);

    assert_eq!(
        shared_inos(&root),
        Vec::<Vec<PathBuf>>::new(),
        "distinct merged objects share st_ino"
    );

    append(&root.join("layer0-1"), b"copied up\n");
    append(&root.join("common/layer2-3"), b"copied up\n");
    fs::write(root.join("new-in-upper"), "new\n").unwrap();
    fs::create_dir(root.join("new-dir")).unwrap();
    drop_caches();
    assert_eq!(
        shared_inos(&root),
        Vec::<Vec<PathBuf>>::new(),
        "distinct merged objects share st_ino after copy-ups and drop_caches"
    );

    mount.unmount();
    drop(second_tmpfs);
    drop(first_tmpfs);
}

/// Lists the names in merged directory `dir` whose readdir d_ino differs
/// from their stat st_ino, `.` and `..` included (`..` not at the root).
fn d_ino_mismatches(root: &Path, dir: &str) -> Vec<String> {
    let path = root.join(dir);
    let mut listing = nix::dir::Dir::open(
        &path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
    let mut mismatches = Vec::new();
    for entry in listing.iter() {
        let entry = entry.unwrap();
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if dir.is_empty() && name == ".." {
            continue;
        }
        let st_ino = ino(&path.join(name));
        if entry.ino() != st_ino {
            mismatches.push(format!("{dir}/{}", name.to_string_lossy()));
        }
    }
    mismatches.sort();
    mismatches
}

#[test]
fn readdir_ino_matches_stat() {
    let pair = Pair::with_upper(
        2,
        |index, root| {
            match index {
                0 => {
                    fixture::write(root, "merged/from-lower0", "l0\n");
                    fixture::write(root, "merged/copied", "to copy up\n");
                    fixture::write(root, "merged/sub/deep", "deep\n");
                    fixture::write(root, "lower-only/x", "x\n");
                    fixture::write(root, "lower-only/sub/y", "y\n");
                    fixture::symlink(root, "lower-only/link", "x");
                }
                _ => {
                    fixture::write(root, "merged/from-lower1", "l1\n");
                    fixture::write(root, "merged/shadowed", "lower1\n");
                    fixture::write(root, "merged/sub/deeper", "deeper\n");
                }
            }
            fixture::age(root);
        },
        |upper| {
            fixture::write(upper, "merged/from-upper", "u\n");
            fixture::write(upper, "merged/shadowed", "upper\n");
            fixture::write(upper, "upper-only/z", "z\n");
            fixture::mkdir(upper, "upper-only/empty");
        },
    );
    // Checked on unionfs alone: in the root, kernel overlayfs (Linux 6.18)
    // lists `merged` with the upper directory's inode number as d_ino, while
    // stat shows the lower directory's.
    let dirs = [
        "",
        "merged",
        "merged/sub",
        "upper-only",
        "lower-only",
        "lower-only/sub",
    ];
    for dir in dirs {
        assert_eq!(
            d_ino_mismatches(&pair.union.root, dir),
            Vec::<String>::new(),
            "d_ino differs from st_ino in {dir:?}"
        );
    }

    pair.both("copy up and link", |root| {
        append(&root.join("merged/copied"), b"more\n");
        errno(fs::hard_link(
            root.join("lower-only/x"),
            root.join("upper-only/x-link"),
        ))
    });
    drop_caches();
    for dir in dirs {
        assert_eq!(
            d_ino_mismatches(&pair.union.root, dir),
            Vec::<String>::new(),
            "d_ino differs from st_ino in {dir:?} after copy-up and drop_caches"
        );
    }
    pair.finish();
}

#[test]
fn hard_links_share_ino() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "lower", "lower data\n");
        fixture::age(root);
    });
    pair.both("create and link", |root| {
        let created = fs::write(root.join("new"), "new data\n");
        let linked = fs::hard_link(root.join("new"), root.join("new-link"));
        let lower_linked = fs::hard_link(root.join("lower"), root.join("lower-link"));
        (errno(created), errno(linked), errno(lower_linked))
    });
    for (name, link) in [("new", "new-link"), ("lower", "lower-link")] {
        let shared = pair.both(&format!("{name} and {link} share st_ino"), |root| {
            ino(&root.join(name)) == ino(&root.join(link))
        });
        assert!(shared, "{name} and {link} must share st_ino");

        pair.both(&format!("write through {link}, read {name}"), |root| {
            append(&root.join(link), b"through the link\n");
            fs::read_to_string(root.join(name)).unwrap()
        });
        pair.both(&format!("nlink of {name}"), |root| {
            fs::symlink_metadata(root.join(name)).unwrap().nlink()
        });
    }

    drop_caches();
    for (name, link) in [("new", "new-link"), ("lower", "lower-link")] {
        let shared = pair.both(&format!("{name} and {link} after drop_caches"), |root| {
            ino(&root.join(name)) == ino(&root.join(link))
        });
        assert!(
            shared,
            "{name} and {link} must share st_ino after drop_caches"
        );
        pair.both(&format!("read {link} after drop_caches"), |root| {
            fs::read_to_string(root.join(link)).unwrap()
        });
    }
    pair.finish();
}
