//! Sizes at the kernel's limits: paths near PATH_MAX, directories 1,000
//! levels deep, a directory with 100,000 entries (1,000,000 with
//! `UNIONFS_SOAK=1`) and 500 layers, the maximum kernel overlayfs stacks.
//! Each works as it does under kernel overlayfs, or fails with the errno
//! the kernel returns. Names of 255 bytes and names with newlines or bytes
//! that are not UTF-8 are covered in tests/integration/names.rs.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::fixture::{self, Mount, Pair, Scratch, errno};
use crate::support::{self, setting};

/// The kernel's maximum length of a path, terminating NUL included.
const PATH_MAX: usize = 4096;

/// Creates `dir/` `depth` times below `root` through directory fds, so no
/// path ever nears PATH_MAX, and writes `leaf` at the bottom.
fn deep_tree(root: &Path, depth: usize, leaf: &str) {
    let mut fd: OwnedFd =
        nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..depth {
        nix::sys::stat::mkdirat(fd.as_fd(), "dir", Mode::from_bits_truncate(0o755)).unwrap();
        fd = openat(
            fd.as_fd(),
            "dir",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    let file = openat(
        fd.as_fd(),
        "leaf",
        OFlag::O_CREAT | OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    fs::File::from(file).write_all(leaf.as_bytes()).unwrap();
}

/// Opens `dir/` `depth` times below `root`; returns the deepest fd.
fn descend(root: &Path, depth: usize) -> std::io::Result<OwnedFd> {
    let mut fd: OwnedFd =
        nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
    for _ in 0..depth {
        fd = openat(
            fd.as_fd(),
            "dir",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )?;
    }
    Ok(fd)
}

/// Appends to the leaf 1,000 levels down (copying up 1,000 directories),
/// reads it back, then removes the whole tree with `rm -rf`, on both
/// unionfs and kernel overlayfs; the views and upper layers must match.
#[test]
fn directories_1000_deep() {
    let depth = 1000;
    let pair = Pair::new(1, |_, root| {
        deep_tree(root, depth, "deep\n");
        fixture::age(root);
    });
    pair.both("append at depth 1000", |root| {
        let dir = descend(root, depth).unwrap();
        let file = openat(
            dir.as_fd(),
            "leaf",
            OFlag::O_WRONLY | OFlag::O_APPEND,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .map(fs::File::from)
        .and_then(|mut file| file.write_all(b"more\n"));
        errno(file)
    });
    pair.both("read at depth 1000", |root| {
        let dir = descend(root, depth).unwrap();
        let file = openat(dir.as_fd(), "leaf", OFlag::O_RDONLY, Mode::empty()).unwrap();
        std::io::read_to_string(fs::File::from(file)).unwrap()
    });
    pair.both("mkdir at depth 1001", |root| {
        let dir = descend(root, depth).unwrap();
        errno(
            nix::sys::stat::mkdirat(dir.as_fd(), "dir", Mode::from_bits_truncate(0o755))
                .map_err(std::io::Error::from),
        )
    });
    pair.both("rm -rf of the tree", |root| {
        Command::new("rm")
            .arg("-rf")
            .arg(root.join("dir"))
            .status()
            .unwrap()
            .success()
    });
    pair.finish();
}

/// A path of exactly PATH_MAX - 1 bytes works; one more byte gives
/// ENAMETOOLONG, from the kernel, on both filesystems.
#[test]
fn paths_near_path_max() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "lower-file", "lower\n");
        fixture::age(root);
    });
    // Components of 200 bytes, created one level at a time through fds.
    let component = "c".repeat(200);
    pair.both("paths near PATH_MAX", |root| {
        let prefix = root.as_os_str().len() + 1;
        let mut relative = PathBuf::new();
        while prefix + relative.as_os_str().len() + 201 + 1 < PATH_MAX - 1 {
            relative.push(&component);
            fs::create_dir(root.join(&relative)).unwrap();
        }
        // Fill up to PATH_MAX - 1 bytes with a last name.
        let used = prefix + relative.as_os_str().len() + 1;
        let last = "f".repeat(PATH_MAX - 1 - used);
        let longest = root.join(&relative).join(&last);
        assert_eq!(longest.as_os_str().len(), PATH_MAX - 1);
        let too_long = root.join(&relative).join(format!("{last}g"));
        vec![
            ("create at PATH_MAX - 1", errno(fs::write(&longest, "x"))),
            (
                "stat at PATH_MAX - 1",
                errno(fs::symlink_metadata(&longest)),
            ),
            ("create at PATH_MAX", errno(fs::write(&too_long, "x"))),
            ("stat at PATH_MAX", errno(fs::symlink_metadata(&too_long))),
            ("rename to PATH_MAX", errno(fs::rename(&longest, &too_long))),
            (
                "rename lower file to PATH_MAX - 1",
                errno(fs::rename(root.join("lower-file"), &longest)),
            ),
        ]
    });
    pair.finish();
}

/// Counts the entries of `dir` with `getdents64`, without sorting them.
fn count_entries(dir: &Path) -> usize {
    let mut count = 0;
    for entry in fs::read_dir(dir).unwrap() {
        entry.unwrap();
        count += 1;
    }
    count
}

/// A lower directory with 100,000 entries (1,000,000 in soak) on a tmpfs:
/// listing, lookups, creation and removal in it work, and the counts match
/// kernel overlayfs.
#[test]
fn directory_with_many_entries() {
    let entries = setting("UNIONFS_BIG_DIR_ENTRIES", 100_000, 1_000_000) as usize;
    let scratch = Scratch::new();
    let layers = scratch.path("layers");
    let _tmpfs = support::tmpfs(&layers, "size=2g,nr_inodes=2000000");
    for name in ["lower/big", "upper", "work", "kernel-upper", "kernel-work"] {
        fs::create_dir_all(layers.join(name)).unwrap();
    }
    let big = fs::File::open(layers.join("lower/big")).unwrap();
    for index in 0..entries {
        let fd = openat(
            big.as_fd(),
            format!("f{index:07}").as_str(),
            OFlag::O_CREAT | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        drop(fd);
    }
    let lower = layers.join("lower");
    let union = Mount::unionfs(
        &scratch.dir.path().join("union"),
        Some(&layers.join("upper")),
        Some(&layers.join("work")),
        std::slice::from_ref(&lower),
        &[],
    );
    let kernel = Mount::overlay(
        &scratch.dir.path().join("kernel"),
        Some(&layers.join("kernel-upper")),
        Some(&layers.join("kernel-work")),
        &[lower],
    );

    for mount in [&union, &kernel] {
        let big = mount.root.join("big");
        fs::write(big.join("new"), "new\n").unwrap();
        fs::remove_file(big.join("f0000000")).unwrap();
        fs::remove_file(big.join(format!("f{:07}", entries - 1))).unwrap();
        assert!(big.join(format!("f{:07}", entries / 2)).exists());
    }
    let counted = count_entries(&union.root.join("big"));
    assert_eq!(counted, count_entries(&kernel.root.join("big")));
    assert_eq!(counted, entries - 1, "entries listed through unionfs");
}

/// 500 layers, the most kernel overlayfs stacks: every layer's file and a
/// directory merged from all of them show as the kernel shows them, and
/// writes land in the upper layer.
#[test]
fn five_hundred_layers() {
    let count = 500;
    let scratch = Scratch::new();
    // Short relative names: 500 absolute paths exceed the 4 KiB of options
    // that mount(2) passes to kernel overlayfs.
    let base = scratch.dir.path();
    let names: Vec<String> = (0..count).map(|index| format!("{index}")).collect();
    for (index, name) in names.iter().enumerate() {
        fixture::write(
            &base.join(name),
            &format!("f{index}"),
            &format!("{index}\n"),
        );
        fixture::write(&base.join(name), "shared/file", &format!("layer {index}\n"));
        fixture::write(&base.join(name), &format!("shared/only{index}"), "x\n");
    }
    let lowers: Vec<PathBuf> = names.iter().map(|name| base.join(name)).collect();
    for dir in ["upper", "work"] {
        fs::create_dir(base.join(dir)).unwrap();
    }
    let mut union = Mount::unionfs(
        &base.join("mnt"),
        Some(&base.join("upper")),
        Some(&base.join("work")),
        &lowers,
        &[],
    );
    assert_eq!(support::names_in(&union.root).len(), count + 1);
    assert_eq!(
        fs::read_to_string(union.root.join("shared/file")).unwrap(),
        "layer 0\n",
        "the topmost layer's file wins"
    );
    assert_eq!(
        support::names_in(&union.root.join("shared")).len(),
        count + 1
    );
    fs::OpenOptions::new()
        .append(true)
        .open(union.root.join(format!("f{}", count - 1)))
        .unwrap()
        .write_all(b"written\n")
        .unwrap();
    fs::remove_file(union.root.join("shared/only250")).unwrap();
    let view = support::read_view(&union.root).unwrap();
    union.unmount();

    let kernel_root = base.join("kernel");
    fs::create_dir(&kernel_root).unwrap();
    fs::create_dir(base.join("kernel-work")).unwrap();
    let lowerdir = names.join(":");
    fixture::run(
        Command::new("mount")
            .current_dir(base)
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={lowerdir},upperdir=upper,workdir=kernel-work"
            ))
            .arg(&kernel_root),
    );
    let _kernel = support::Mounted(kernel_root.clone());
    let kernel_view = support::read_view(&kernel_root).unwrap();
    if let Some(diff) = support::difference(&view, &kernel_view) {
        panic!("500 layers: unionfs and kernel overlayfs differ: {diff}");
    }
}
