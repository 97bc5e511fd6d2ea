//! Copy-up: what a lower object keeps when it gains an upper copy, which
//! objects get copied, how much data moves, and what happens to hard links
//! and to descriptors opened before the copy.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::fixture::{self, Kind, Mount, Pair, errno};
use crate::snapshot;

/// Access and modification times with nanoseconds, as `(seconds, nanoseconds)`.
#[derive(Debug, PartialEq, Eq)]
struct Times {
    atime: (i64, i64),
    mtime: (i64, i64),
}

/// The metadata a copy-up must keep, for one object.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    times: Times,
}

fn lstat(path: &Path) -> FileStat {
    nix::sys::stat::lstat(path)
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
}

fn times(path: &Path) -> Times {
    let stat = lstat(path);
    Times {
        atime: (stat.st_atime, stat.st_atime_nsec),
        mtime: (stat.st_mtime, stat.st_mtime_nsec),
    }
}

fn meta(path: &Path) -> Meta {
    let stat = lstat(path);
    Meta {
        kind: stat.st_mode & libc::S_IFMT,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev,
        times: times(path),
    }
}

/// Opens `path` for writing and closes it without writing, which copies a
/// lower file up and changes nothing else.
fn open_for_write(path: &Path) -> i32 {
    errno(fs::OpenOptions::new().write(true).open(path))
}

fn append(path: &Path, data: &[u8]) -> i32 {
    errno(
        fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut file| file.write_all(data)),
    )
}

fn set_times(path: &Path, atime: TimeSpec, mtime: TimeSpec) -> i32 {
    errno(
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(std::io::Error::from),
    )
}

/// Relative paths of everything under `root`, sorted.
fn relative_paths(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| {
            entry
                .unwrap()
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_path_buf()
        })
        .collect()
}

/// Returns `len` bytes of a fixed pattern, so both copies of a layer hold
/// the same data and the test can recompute it.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

const MIB: u64 = 1 << 20;

/// Creates a sparse file of 200 MiB at `path` holding `prefix` at offset 0
/// and a short marker at 100 MiB.
fn sparse_file(path: &Path, prefix: &[u8]) {
    let file = fs::File::create(path).unwrap();
    file.set_len(200 * MIB).unwrap();
    file.write_all_at(prefix, 0).unwrap();
    file.write_all_at(b"marker at 100 MiB", 100 * MIB).unwrap();
}

#[test]
fn copy_up_keeps_metadata() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "d/f", "payload\n");
        let file = root.join("d/f");
        std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4750)).unwrap();
        xattr::set(&file, "user.color", b"blue").unwrap();
        fixture::run(Command::new("setcap").arg("cap_net_raw+ep").arg(&file));
        fixture::age(root);
    });
    let capability = pair.both("security.capability before copy-up", |root| {
        xattr::get(root.join("d/f"), "security.capability").unwrap()
    });
    assert!(
        capability.is_some(),
        "the lower file must carry security.capability"
    );

    pair.both("open for write", |root| open_for_write(&root.join("d/f")));

    pair.both("security.capability after copy-up", |root| {
        xattr::get(root.join("d/f"), "security.capability").unwrap()
    });
    pair.both("user xattr after copy-up", |root| {
        xattr::get(root.join("d/f"), "user.color").unwrap()
    });
    pair.both("merged metadata after copy-up", |root| {
        meta(&root.join("d/f"))
    });
    let union_upper = pair.upper(Kind::Unionfs);
    let kernel_upper = pair.upper(Kind::Overlay);
    assert_eq!(
        meta(&union_upper.join("d/f")),
        meta(&kernel_upper.join("d/f")),
        "upper copy of d/f: unionfs (left) and kernel overlayfs (right) differ"
    );
    assert_eq!(
        times(&union_upper.join("d")),
        times(&kernel_upper.join("d")),
        "times of the copied-up parent d: unionfs (left) and kernel overlayfs (right) differ"
    );
    assert_eq!(
        times(&union_upper.join("d")),
        times(&pair.lower(Kind::Unionfs, 0).join("d")),
        "the copied-up parent d must keep the lower directory's times"
    );
    pair.finish();
}

#[test]
fn special_files_copy_up() {
    let names = ["symlink", "fifo", "null", "socket"];
    let pair = Pair::new(1, |_, root| {
        fixture::symlink(root, "symlink", "target");
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        nix::sys::stat::mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        drop(std::os::unix::net::UnixListener::bind(root.join("socket")).unwrap());
        fixture::age(root);
    });

    for name in names {
        pair.both(&format!("lchown {name}"), |root| {
            errno(std::os::unix::fs::lchown(
                root.join(name),
                Some(4321),
                Some(8765),
            ))
        });
    }
    for name in names {
        pair.both(&format!("metadata of {name} after lchown"), |root| {
            meta(&root.join(name))
        });
        assert_eq!(
            meta(&pair.upper(Kind::Unionfs).join(name)),
            meta(&pair.upper(Kind::Overlay).join(name)),
            "upper copy of {name}: unionfs (left) and kernel overlayfs (right) differ"
        );
    }

    let atime = TimeSpec::new(1_100_000_000, 11);
    let mtime = TimeSpec::new(1_200_000_000, 22);
    for name in names {
        pair.both(&format!("touch -h {name}"), |root| {
            set_times(&root.join(name), atime, mtime)
        });
        pair.both(&format!("metadata of {name} after touch -h"), |root| {
            meta(&root.join(name))
        });
    }
    pair.finish();
}

#[test]
fn read_only_file_copies_up() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "ro.txt", "read-only\n");
        fs::set_permissions(root.join("ro.txt"), fs::Permissions::from_mode(0o444)).unwrap();
        fixture::age(root);
    });
    pair.both("append as root", |root| {
        append(&root.join("ro.txt"), b"more\n")
    });
    pair.both("read back", |root| fs::read(root.join("ro.txt")).unwrap());
    pair.both("mode after copy-up", |root| meta(&root.join("ro.txt")).mode);
    pair.finish();
}

#[test]
fn dir_attrs_copy_up_dir_only() {
    let pair = Pair::new(1, |_, root| {
        for dir in ["chmodded", "chowned", "touched"] {
            fixture::write(root, &format!("{dir}/a"), "a\n");
            fixture::write(root, &format!("{dir}/sub/b"), "b\n");
        }
        fixture::age(root);
    });
    pair.both("chmod dir", |root| {
        errno(fs::set_permissions(
            root.join("chmodded"),
            fs::Permissions::from_mode(0o700),
        ))
    });
    pair.both("chown dir", |root| {
        errno(std::os::unix::fs::chown(
            root.join("chowned"),
            Some(99),
            Some(98),
        ))
    });
    pair.both("touch dir", |root| {
        set_times(
            &root.join("touched"),
            TimeSpec::new(1_300_000_000, 33),
            TimeSpec::new(1_300_000_000, 44),
        )
    });

    let union_upper = relative_paths(&pair.upper(Kind::Unionfs));
    let kernel_upper = relative_paths(&pair.upper(Kind::Overlay));
    assert_eq!(
        union_upper, kernel_upper,
        "upper layer entries: unionfs (left) and kernel overlayfs (right) differ"
    );
    for dir in ["chmodded", "chowned", "touched"] {
        assert!(
            relative_paths(&pair.upper(Kind::Unionfs).join(dir)).is_empty(),
            "changing the attributes of {dir} must not copy up its children"
        );
    }
    pair.finish();
}

#[test]
fn deep_copy_up_copies_parents() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "a/b/c/file", "deep\n");
        for (dir, mode, owner) in [("a", 0o751, 11), ("a/b", 0o705, 12), ("a/b/c", 0o700, 13)] {
            let path = root.join(dir);
            std::os::unix::fs::chown(&path, Some(owner), Some(owner + 10)).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        fixture::age(root);
    });
    pair.both("append to a/b/c/file", |root| {
        append(&root.join("a/b/c/file"), b"more\n")
    });
    for dir in ["a", "a/b", "a/b/c"] {
        let union = meta(&pair.upper(Kind::Unionfs).join(dir));
        let kernel = meta(&pair.upper(Kind::Overlay).join(dir));
        assert_eq!(
            union, kernel,
            "upper copy of parent {dir}: unionfs (left) and kernel overlayfs (right) differ"
        );
        let lower = meta(&pair.lower(Kind::Unionfs, 0).join(dir));
        assert_eq!(
            union, lower,
            "upper copy of parent {dir} must keep the lower directory's metadata"
        );
    }
    pair.finish();
}

#[test]
fn concurrent_opens_share_one_copy() {
    const FILES: usize = 6;
    let pair = Pair::new(1, |_, root| {
        let data = pattern(16 * MIB as usize);
        for index in 0..FILES {
            fs::write(root.join(format!("f{index}")), &data).unwrap();
        }
        fixture::age(root);
    });
    for index in 0..FILES {
        let name = format!("f{index}");
        pair.both(&format!("two appenders on {name}"), |root| {
            let path = root.join(&name);
            let opened = Arc::new(Barrier::new(2));
            let first_wrote = Arc::new(Barrier::new(2));
            let writers: Vec<_> = ["first\n", "second\n"]
                .into_iter()
                .enumerate()
                .map(|(turn, line)| {
                    let (path, opened, first_wrote) =
                        (path.clone(), opened.clone(), first_wrote.clone());
                    std::thread::spawn(move || {
                        opened.wait();
                        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                        // Both opens race; the writes are ordered so that the
                        // result is the same on both filesystems.
                        if turn == 1 {
                            first_wrote.wait();
                        }
                        file.write_all(line.as_bytes()).unwrap();
                        if turn == 0 {
                            first_wrote.wait();
                        }
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            let data = fs::read(&path).unwrap();
            let tail = data[data.len().saturating_sub(13)..].to_vec();
            (data.len(), String::from_utf8_lossy(&tail).into_owned())
        });
    }
    pair.finish();
}

#[test]
fn open_fd_reads_copied_up_data() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "read-first", "old contents\n");
        fixture::write(root, "unread", "old contents\n");
        fixture::age(root);
    });
    let reads = pair.both("read through fds opened before copy-up", |root| {
        let mut read_first = fs::File::open(root.join("read-first")).unwrap();
        let unread = fs::File::open(root.join("unread")).unwrap();
        let mut before = String::new();
        read_first.read_to_string(&mut before).unwrap();

        fs::write(root.join("read-first"), "new\n").unwrap();
        fs::write(root.join("unread"), "new\n").unwrap();

        let mut buf = [0u8; 64];
        let len = read_first.read_at(&mut buf, 0).unwrap();
        let after_read = String::from_utf8_lossy(&buf[..len]).into_owned();
        let len = unread.read_at(&mut buf, 0).unwrap();
        let after_unread = String::from_utf8_lossy(&buf[..len]).into_owned();
        (before, after_read, after_unread)
    });
    assert_eq!(reads.1, "new\n", "an fd that read before the copy-up");
    assert_eq!(reads.2, "new\n", "an fd that never read before the copy-up");
    pair.finish();
}

#[test]
fn truncating_open_copies_no_data() {
    let prefix = pattern(MIB as usize);
    let pair = Pair::new(1, |_, root| {
        sparse_file(&root.join("big"), &prefix);
        sparse_file(&root.join("doomed"), &prefix);
        fixture::age(root);
    });
    let lower = pair.lower(Kind::Unionfs, 0);
    let before = [meta(&lower.join("big")), meta(&lower.join("doomed"))];

    pair.both("open O_TRUNC", |root| {
        errno(
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(root.join("big")),
        )
    });
    pair.both("unlink lower file", |root| {
        errno(fs::remove_file(root.join("doomed")))
    });

    let upper = pair.upper(Kind::Unionfs);
    let copy = lstat(&upper.join("big"));
    assert_eq!(copy.st_size, 0, "size of the O_TRUNC copy");
    assert_eq!(copy.st_blocks, 0, "blocks of the O_TRUNC copy");
    let whiteout = lstat(&upper.join("doomed"));
    assert_eq!(
        whiteout.st_mode & libc::S_IFMT,
        libc::S_IFCHR,
        "upper entry of the unlinked file must be a whiteout device"
    );
    assert_eq!(whiteout.st_rdev, 0, "whiteout device number");

    // The lower files keep their atime only if no data was read from them.
    let after = [meta(&lower.join("big")), meta(&lower.join("doomed"))];
    assert_eq!(after[0], before[0], "lower big after the O_TRUNC open");
    assert_eq!(after[1], before[1], "lower doomed after the unlink");
    let mut head = vec![0u8; prefix.len()];
    fs::File::open(lower.join("big"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head == prefix, "lower big's data must not change");
    pair.finish();
}

#[test]
fn sparse_copy_up_of_200_mib() {
    let pair = Pair::new(1, |_, root| {
        sparse_file(&root.join("sparse"), b"head");
        fixture::age(root);
    });
    pair.both("write one byte", |root| {
        errno(
            fs::OpenOptions::new()
                .write(true)
                .open(root.join("sparse"))
                .and_then(|file| file.write_all_at(b"!", 0)),
        )
    });
    let union = lstat(&pair.upper(Kind::Unionfs).join("sparse"));
    let kernel = lstat(&pair.upper(Kind::Overlay).join("sparse"));
    assert_eq!(union.st_size, kernel.st_size, "size of the upper copy");
    // Kernel overlayfs copies 1 MiB from each data extent it finds, so its
    // copy may take more blocks than the data needs; never fewer.
    assert!(
        union.st_blocks <= kernel.st_blocks,
        "unionfs's upper copy takes {} blocks, kernel overlayfs's {}",
        union.st_blocks,
        kernel.st_blocks
    );
    assert!(
        (union.st_blocks as u64) * 512 < union.st_size as u64,
        "unionfs's upper copy must stay sparse"
    );
    pair.finish();
}

#[test]
fn copy_up_leaves_lower_times() {
    let pair = Pair::new(1, |_, root| {
        fs::write(root.join("file"), pattern(64 * 1024)).unwrap();
        fixture::age(root);
    });
    pair.both("append", |root| append(&root.join("file"), b"more\n"));
    assert_eq!(
        meta(&pair.lower(Kind::Unionfs, 0).join("file")),
        meta(&pair.lower(Kind::Overlay, 0).join("file")),
        "lower file after copy-up: unionfs's (left) and kernel overlayfs's (right) differ"
    );
    pair.finish();
}

/// Returns the paths, prefixed by layer label, of the real non-directories
/// in `roots` whose inode number is `ino`. All layers of a pair share one
/// filesystem, so an inode number identifies one real object.
fn ino_sources(roots: &[(&str, PathBuf)], ino: u64) -> Vec<String> {
    let mut sources = Vec::new();
    for (label, root) in roots {
        for path in relative_paths(root) {
            let meta = fs::symlink_metadata(root.join(&path)).unwrap();
            if meta.ino() == ino && !meta.file_type().is_dir() {
                sources.push(format!("{label}/{}", path.display()));
            }
        }
    }
    sources.sort();
    sources
}

/// Returns, for the merged names `hl1` and `hl2`, the data, the link count
/// and the real objects that their inode numbers come from.
fn hard_link_state(root: &Path, layers: &[(&str, PathBuf)]) -> Vec<(String, u64, Vec<String>)> {
    ["hl1", "hl2"]
        .into_iter()
        .map(|name| {
            let path = root.join(name);
            let meta = fs::symlink_metadata(&path).unwrap();
            (
                fs::read_to_string(&path).unwrap(),
                meta.nlink(),
                ino_sources(layers, meta.ino()),
            )
        })
        .collect()
}

fn layers_of(pair: &Pair, kind: Kind) -> Vec<(&'static str, PathBuf)> {
    vec![("upper", pair.upper(kind)), ("lower0", pair.lower(kind, 0))]
}

#[test]
fn hard_link_pair_splits_on_write() {
    let mut pair = Pair::new(1, |_, root| {
        fixture::write(root, "hl1", "shared data\n");
        fs::hard_link(root.join("hl1"), root.join("hl2")).unwrap();
        fixture::age(root);
    });
    let union_layers = layers_of(&pair, Kind::Unionfs);
    let kernel_layers = layers_of(&pair, Kind::Overlay);
    let inos = pair.both("st_ino of both names before the write", |root| {
        let first = fs::symlink_metadata(root.join("hl1")).unwrap().ino();
        let second = fs::symlink_metadata(root.join("hl2")).unwrap().ino();
        first == second
    });
    assert!(inos, "hl1 and hl2 must share st_ino before any write");

    pair.both("write through hl2", |root| {
        errno(fs::write(root.join("hl2"), "written through hl2\n"))
    });
    pair.both("read hl1", |root| {
        fs::read_to_string(root.join("hl1")).unwrap()
    });
    pair.both("read hl2", |root| {
        fs::read_to_string(root.join("hl2")).unwrap()
    });
    let union = hard_link_state(&pair.union.root, &union_layers);
    let kernel = hard_link_state(&pair.kernel.root, &kernel_layers);
    assert_eq!(
        union, kernel,
        "hl1 and hl2 (data, nlink, st_ino source): unionfs (left) and kernel overlayfs (right) differ"
    );
    pair.assert_same_view();

    pair.union.unmount();
    pair.kernel.unmount();
    let union_upper = snapshot::layer(&pair.upper(Kind::Unionfs), pair.started);
    let kernel_upper = snapshot::layer(&pair.upper(Kind::Overlay), pair.started);
    snapshot::assert_same(&union_upper, &kernel_upper, "upper layer");

    let remount = |kind: Kind| {
        let side = pair.upper(kind).parent().unwrap().to_path_buf();
        let lowers = [pair.lower(kind, 0)];
        let (upper, work, root) = (pair.upper(kind), side.join("work"), side.join("remount"));
        match kind {
            Kind::Unionfs => Mount::unionfs(&root, Some(&upper), Some(&work), &lowers, &[]),
            Kind::Overlay => Mount::overlay(&root, Some(&upper), Some(&work), &lowers),
        }
    };
    let mut union_mount = remount(Kind::Unionfs);
    let mut kernel_mount = remount(Kind::Overlay);
    let union = hard_link_state(&union_mount.root, &union_layers);
    let kernel = hard_link_state(&kernel_mount.root, &kernel_layers);
    assert_eq!(
        union, kernel,
        "hl1 and hl2 after remount: unionfs (left) and kernel overlayfs (right) differ"
    );
    snapshot::assert_same(
        &snapshot::tree(&union_mount.root, pair.started),
        &snapshot::tree(&kernel_mount.root, pair.started),
        "merged view after remount",
    );
    union_mount.unmount();
    kernel_mount.unmount();
}
