//! Hostile layer content: symlinks pointing out of the layers, directories
//! swapped for symlinks behind the daemon's back, and hard links to files
//! outside. The daemon must never read, create or change anything outside
//! the layers and the work dir; each test checks a directory outside them
//! is untouched.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fixture::{self, Mount, Scratch, errno};

/// One path's type and mode, owner, size, mtime, ctime, inode and content.
type Print = (PathBuf, u32, u32, u64, i64, i64, i64, Vec<u8>);

/// Every path under `root` with its type, mode, owner, size, times and
/// content, to detect any change.
fn fingerprint(root: &Path) -> Vec<Print> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let content = if meta.is_file() {
                fs::read(entry.path()).unwrap()
            } else {
                Vec::new()
            };
            let times = (
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            );
            (
                entry.path().to_path_buf(),
                meta.mode(),
                meta.uid(),
                meta.size(),
                times.0,
                times.1,
                meta.ino() as i64,
                content,
            )
        })
        .collect()
}

/// A scratch area with an `outside` directory holding a secret, a lower
/// layer built by `fill`, and a unionfs mount over it.
struct Setup {
    // Fields drop in order: the mount must go before its directories.
    mount: Mount,
    scratch: Scratch,
    outside: PathBuf,
    before: Vec<Print>,
}

impl Setup {
    fn new(fill: impl Fn(&Path, &Path)) -> Setup {
        let scratch = Scratch::new();
        let outside = scratch.path("outside");
        fixture::write(&outside, "secret", "host data\n");
        fixture::mkdir(&outside, "sub");
        let lower = scratch.path("lower");
        fill(&lower, &outside);
        let before = fingerprint(&outside);
        let upper = scratch.path("upper");
        let work = scratch.path("work");
        let mount = Mount::unionfs(
            &scratch.dir.path().join("mnt"),
            Some(&upper),
            Some(&work),
            &[lower],
            &[],
        );
        Setup {
            scratch,
            outside,
            before,
            mount,
        }
    }

    fn mnt(&self, relative: &str) -> PathBuf {
        self.mount.root.join(relative)
    }

    fn layer(&self, name: &str) -> PathBuf {
        self.scratch.dir.path().join(name)
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(
            fingerprint(&self.outside),
            self.before,
            "a directory outside the layers changed"
        );
    }
}

#[test]
fn symlinks_to_host_stay_links() {
    let setup = Setup::new(|lower, outside| {
        fixture::symlink(lower, "abs", &outside.join("secret").display().to_string());
        let climbs = "../".repeat(lower.components().count())
            + &outside.join("secret").display().to_string()[1..];
        fixture::symlink(lower, "rel", &climbs);
        fixture::symlink(lower, "dirlink", &outside.display().to_string());
        fixture::symlink(lower, "d/nested", "../../outside/sub");
    });

    assert_eq!(
        errno(std::os::unix::fs::lchown(
            setup.mnt("abs"),
            Some(1),
            Some(1)
        )),
        0
    );
    let time = nix::sys::time::TimeSpec::new(1_000_000, 0);
    let touched = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &setup.mnt("rel"),
        &time,
        &time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
    assert_eq!(touched, Ok(()));
    assert_eq!(
        errno(fs::rename(setup.mnt("dirlink"), setup.mnt("moved"))),
        0
    );
    assert_eq!(
        errno(std::os::unix::fs::lchown(
            setup.mnt("d/nested"),
            Some(2),
            Some(2)
        )),
        0
    );
    assert_eq!(errno(fs::remove_file(setup.mnt("abs"))), 0);
    assert_eq!(errno(fs::hard_link(setup.mnt("rel"), setup.mnt("rel2"))), 0);

    let upper = setup.layer("upper");
    let kept = fs::symlink_metadata(upper.join("rel")).unwrap();
    assert!(
        kept.file_type().is_symlink(),
        "the copy-up of a symlink is a symlink"
    );
    assert_eq!(
        fs::symlink_metadata(upper.join("d/nested")).unwrap().uid(),
        2
    );
    setup.assert_outside_untouched();
}

#[test]
fn parent_swapped_for_symlink_is_refused() {
    let setup = Setup::new(|lower, _| fixture::write(lower, "dir/sub/file", "lower\n"));
    assert_eq!(
        fs::read_to_string(setup.mnt("dir/sub/file")).unwrap(),
        "lower\n"
    );
    // Behind the daemon's back, the upper layer gets a symlink where the
    // copy-up of `dir` will want to put a directory.
    std::os::unix::fs::symlink(&setup.outside, setup.layer("upper").join("dir")).unwrap();

    let written = fs::OpenOptions::new()
        .append(true)
        .open(setup.mnt("dir/sub/file"))
        .and_then(|mut f| f.write_all(b"x"));
    assert!(
        written.is_err(),
        "the copy-up must not go through the planted symlink"
    );
    assert_eq!(errno(fs::write(setup.mnt("dir/new"), "x")), libc::EEXIST);
    setup.assert_outside_untouched();
}

#[test]
fn upper_dir_swapped_keeps_its_fd() {
    let setup = Setup::new(|lower, _| fixture::write(lower, "dir/old", "old\n"));
    fs::write(setup.mnt("dir/first"), "first\n").unwrap();
    let upper = setup.layer("upper");
    fs::rename(upper.join("dir"), upper.join("dir.real")).unwrap();
    std::os::unix::fs::symlink(&setup.outside, upper.join("dir")).unwrap();

    fs::write(setup.mnt("dir/second"), "second\n").unwrap();
    assert_eq!(
        fs::read_to_string(upper.join("dir.real/second")).unwrap(),
        "second\n"
    );
    assert_eq!(errno(fs::remove_file(setup.mnt("dir/first"))), 0);
    assert!(
        upper
            .join("dir.real")
            .join("first")
            .symlink_metadata()
            .is_err()
    );
    setup.assert_outside_untouched();
}

#[test]
fn work_dir_swapped_keeps_its_fd() {
    let setup = Setup::new(|lower, _| fixture::write(lower, "a", "lower a\n"));
    let work = setup.layer("work");
    fs::rename(work.join("work"), work.join("work.real")).unwrap();
    std::os::unix::fs::symlink(&setup.outside, work.join("work")).unwrap();

    fs::OpenOptions::new()
        .append(true)
        .open(setup.mnt("a"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(
        fs::read_to_string(setup.layer("upper").join("a")).unwrap(),
        "lower a\nmore\n"
    );
    assert_eq!(errno(fs::remove_file(setup.mnt("a"))), 0);
    setup.assert_outside_untouched();
}

#[test]
fn lower_hard_link_to_host_file_unchanged() {
    let setup = Setup::new(|lower, outside| {
        fs::hard_link(outside.join("secret"), lower.join("linked")).unwrap()
    });
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(setup.mnt("linked"))
        .unwrap();
    file.write_all(b"container data\n").unwrap();
    drop(file);
    assert_eq!(
        fs::read_to_string(setup.mnt("linked")).unwrap(),
        "host data\ncontainer data\n"
    );
    assert_eq!(
        fs::read_to_string(setup.outside.join("secret")).unwrap(),
        "host data\n"
    );
    let (lower_ino, outside_ino) = (
        fs::metadata(setup.layer("lower").join("linked"))
            .unwrap()
            .ino(),
        fs::metadata(setup.outside.join("secret")).unwrap().ino(),
    );
    assert_eq!(
        lower_ino, outside_ino,
        "the lower layer still links the host file"
    );
    setup.assert_outside_untouched();
}
