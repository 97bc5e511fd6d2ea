//! Names: length limits, unusual bytes, directory positions, whiteout
//! names, and renames that kernel overlayfs restricts.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::Command;

use nix::fcntl::RenameFlags;

use crate::fixture::{self, Mount, Pair, Scratch, errno, name};

fn bytes_name(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

fn repeated(byte: u8, len: usize) -> OsString {
    bytes_name(&vec![byte; len])
}

fn rename2(root: &Path, from: &OsStr, to: &OsStr, flags: RenameFlags) -> i32 {
    errno(
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &root.join(from),
            nix::fcntl::AT_FDCWD,
            &root.join(to),
            flags,
        )
        .map_err(std::io::Error::from),
    )
}

fn sorted_listing(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    names
}

#[test]
fn names_of_255_bytes() {
    let lower_name = repeated(b'l', 255);
    let moved_lower = repeated(b'm', 255);
    let pair = Pair::new(1, |_, root| {
        fs::write(root.join(repeated(b'l', 255)), "lower 255\n").unwrap();
        fs::write(root.join(repeated(b'k', 255)), "lower 255 to move\n").unwrap();
        fixture::age(root);
    });
    let (created, renamed) = (repeated(b'a', 255), repeated(b'b', 255));
    pair.both("create 255", |root| {
        errno(fs::write(root.join(&created), "new\n"))
    });
    pair.both("stat 255", |root| {
        fs::symlink_metadata(root.join(&created))
            .map(|meta| meta.len())
            .ok()
    });
    pair.both("rename 255 to 255", |root| {
        errno(fs::rename(root.join(&created), root.join(&renamed)))
    });
    pair.both("remove 255", |root| {
        errno(fs::remove_file(root.join(&renamed)))
    });
    pair.both("remove lower 255", |root| {
        errno(fs::remove_file(root.join(&lower_name)))
    });
    pair.both("stat removed lower 255", |root| {
        errno(fs::symlink_metadata(root.join(&lower_name)))
    });
    pair.both("rename lower 255", |root| {
        errno(fs::rename(
            root.join(repeated(b'k', 255)),
            root.join(&moved_lower),
        ))
    });
    pair.both("mkdir 255", |root| {
        errno(fs::create_dir(root.join(repeated(b'd', 255))))
    });
    pair.both("listing", sorted_listing);
    pair.finish();
}

#[test]
fn names_of_256_bytes_rejected() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "short", "short\n");
        fixture::age(root);
    });
    let long = repeated(b'x', 256);
    // One table, so a failure shows every operation's errno at once.
    pair.both("errno of each operation on a 256-byte name", |root| {
        let path = root.join(&long);
        let short = root.join("short");
        vec![
            ("create", errno(fs::write(&path, "x"))),
            ("stat", errno(fs::symlink_metadata(&path))),
            ("mkdir", errno(fs::create_dir(&path))),
            ("symlink", errno(std::os::unix::fs::symlink("short", &path))),
            ("rename to", errno(fs::rename(&short, &path))),
            ("rename from", errno(fs::rename(&path, root.join("other")))),
            ("link", errno(fs::hard_link(&short, &path))),
            ("unlink", errno(fs::remove_file(&path))),
            ("rmdir", errno(fs::remove_dir(&path))),
        ]
    });
    pair.finish();
}

#[test]
fn names_with_odd_bytes() {
    let lower_names: [&[u8]; 3] = [b"lower\nnewline", b"lower-\xff\xfe", b"caf\xe9"];
    let pair = Pair::new(1, |_, root| {
        for name in lower_names {
            fs::write(root.join(bytes_name(name)), name).unwrap();
        }
        fixture::age(root);
    });
    let created: [&[u8]; 3] = [b"new\nline", b"new-\x80\x81", b"tab\tand space "];
    for name in created {
        pair.both(&format!("create {:?}", bytes_name(name)), |root| {
            errno(fs::write(root.join(bytes_name(name)), name))
        });
    }
    pair.both("listing", sorted_listing);
    for name in lower_names.iter().chain(created.iter()) {
        pair.both(&format!("read {:?}", bytes_name(name)), |root| {
            fs::read(root.join(bytes_name(name))).ok()
        });
    }
    pair.both("rename lower newline name", |root| {
        errno(fs::rename(
            root.join(bytes_name(b"lower\nnewline")),
            root.join(bytes_name(b"moved\n\xff")),
        ))
    });
    pair.both("remove lower non-UTF-8 name", |root| {
        errno(fs::remove_file(root.join(bytes_name(b"lower-\xff\xfe"))))
    });
    pair.both("remove created newline name", |root| {
        errno(fs::remove_file(root.join(bytes_name(b"new\nline"))))
    });
    pair.both("listing after changes", sorted_listing);
    pair.finish();
}

/// A directory stream of libc's `opendir`, closed on drop.
struct DirStream(*mut libc::DIR);

impl DirStream {
    fn open(path: &Path) -> DirStream {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: opendir with a valid NUL-terminated path.
        let dir = unsafe { libc::opendir(path.as_ptr()) };
        assert!(
            !dir.is_null(),
            "opendir: {}",
            std::io::Error::last_os_error()
        );
        DirStream(dir)
    }

    /// Returns the position before the next entry and the entry's name, or
    /// `None` at the end.
    fn next(&mut self) -> Option<(i64, OsString)> {
        // SAFETY: the stream is open; readdir's entry is copied out before
        // the next call on the stream.
        unsafe {
            let position = libc::telldir(self.0);
            let entry = libc::readdir(self.0);
            if entry.is_null() {
                return None;
            }
            let name = CStr::from_ptr((*entry).d_name.as_ptr());
            Some((position, bytes_name(name.to_bytes())))
        }
    }

    /// Reads up to `count` entries (all when `None`), skipping `.` and `..`.
    fn read(&mut self, count: Option<usize>) -> Vec<(i64, OsString)> {
        let mut entries = Vec::new();
        while count.is_none_or(|count| entries.len() < count) {
            let Some(entry) = self.next() else { break };
            if entry.1 != "." && entry.1 != ".." {
                entries.push(entry);
            }
        }
        entries
    }

    fn seek(&mut self, position: i64) {
        // SAFETY: seekdir to a position telldir returned for this stream.
        unsafe { libc::seekdir(self.0, position) }
    }

    fn rewind(&mut self) {
        // SAFETY: the stream is open.
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: closes the stream opened in `open`, once.
        unsafe { libc::closedir(self.0) };
    }
}

fn names_of(entries: &[(i64, OsString)]) -> Vec<OsString> {
    entries.iter().map(|(_, name)| name.clone()).collect()
}

/// Counts the names that occur more than once.
fn duplicates(names: &[OsString]) -> usize {
    names.len() - names.iter().collect::<BTreeSet<_>>().len()
}

/// Creates empty files `{prefix}{index}` in `dir` of a layer, one for each
/// index in `range`, with the index padded to four digits.
fn many_files(root: &Path, dir: &str, prefix: &str, range: std::ops::Range<usize>) {
    let dir = root.join(dir);
    fs::create_dir_all(&dir).unwrap();
    for index in range {
        fs::write(dir.join(format!("{prefix}{index:04}")), "").unwrap();
    }
}

/// Three layers sharing directory `d`: each adds 1,000 names of its own and
/// all hold 200 shared names.
fn three_layer_dir() -> Pair {
    Pair::with_upper(
        2,
        |index, root| {
            many_files(root, "d", &format!("lower{index}-"), 0..1000);
            many_files(root, "d", "shared-", 0..200);
            fixture::age(root);
        },
        |upper| {
            many_files(upper, "d", "upper-", 0..1000);
            many_files(upper, "d", "shared-", 0..200);
        },
    )
}

/// Results of seekdir, telldir and rewinddir on one merged directory.
#[derive(Debug, PartialEq, Eq)]
struct Positions {
    sorted: Vec<OsString>,
    duplicates: usize,
    /// seekdir to each probed position gives the rest of the first listing.
    seek_matches: Vec<bool>,
    /// rewinddir gives the first listing again, in the same order.
    rewind_matches: bool,
}

#[test]
fn seekdir_and_rewinddir_on_merged_dir() {
    let pair = three_layer_dir();
    let positions = pair.both("seekdir, telldir, rewinddir", |root| {
        let mut stream = DirStream::open(&root.join("d"));
        let first = stream.read(None);
        let names = names_of(&first);
        let probes = [1, first.len() / 3, first.len() / 2, first.len() - 1];
        let seek_matches = probes
            .iter()
            .map(|&index| {
                stream.seek(first[index].0);
                names_of(&stream.read(None)) == names[index..]
            })
            .collect();
        stream.rewind();
        let again = names_of(&stream.read(None));
        let mut sorted = names.clone();
        sorted.sort();
        Positions {
            sorted,
            duplicates: duplicates(&names),
            seek_matches,
            rewind_matches: again == names,
        }
    });
    assert_eq!(positions.sorted.len(), 3200, "names listed");
    assert_eq!(positions.duplicates, 0, "names listed twice");
    assert_eq!(positions.seek_matches, [true; 4], "listing after seekdir");
    assert!(positions.rewind_matches, "listing after rewinddir");
    pair.finish();
}

/// Results of a listing during which names were added.
#[derive(Debug, PartialEq, Eq)]
struct Growing {
    duplicates: usize,
    /// Names present before the additions that the listing never showed.
    missed: Vec<OsString>,
    /// The listing after rewinddir, sorted.
    rewound: Vec<OsString>,
    rewound_duplicates: usize,
}

#[test]
fn readdir_while_entries_added() {
    let pair = three_layer_dir();
    let growing = pair.both("add names during readdir", |root| {
        let dir = root.join("d");
        let before = sorted_listing(&dir);
        let mut stream = DirStream::open(&dir);
        let mut seen = names_of(&stream.read(Some(before.len() / 2)));
        for index in 0..300 {
            fs::write(dir.join(format!("added-{index:04}")), "").unwrap();
        }
        seen.extend(names_of(&stream.read(None)));
        let seen_set: BTreeSet<&OsString> = seen.iter().collect();
        let missed = before
            .iter()
            .filter(|name| !seen_set.contains(name))
            .cloned()
            .collect();
        stream.rewind();
        let mut rewound = names_of(&stream.read(None));
        rewound.sort();
        Growing {
            duplicates: duplicates(&seen),
            missed,
            rewound_duplicates: duplicates(&rewound),
            rewound,
        }
    });
    assert_eq!(growing.duplicates, 0, "names listed twice");
    assert_eq!(growing.missed, Vec::<OsString>::new(), "names never listed");
    assert_eq!(growing.rewound.len(), 3500, "names listed after rewinddir");
    assert_eq!(
        growing.rewound_duplicates, 0,
        "names listed twice after rewinddir"
    );
    pair.finish();
}

/// What one reader saw while another started over in the same directory.
#[derive(Debug, PartialEq, Eq)]
struct Interleaved {
    first_duplicates: usize,
    first_missed: Vec<OsString>,
    second_duplicates: usize,
    second_missed: Vec<OsString>,
}

#[test]
fn readers_interleaved_with_changes_keep_their_listings() {
    let pair = three_layer_dir();
    let seen = pair.both("two readers, names added and removed between", |root| {
        let dir = root.join("d");
        let before = sorted_listing(&dir);
        let mut first = DirStream::open(&dir);
        let mut first_seen = names_of(&first.read(Some(before.len() / 3)));
        fs::write(dir.join("added-early"), "").unwrap();
        fs::remove_file(dir.join("lower1-0999")).unwrap();
        let mut second = DirStream::open(&dir);
        let mut second_seen = names_of(&second.read(Some(before.len() / 2)));
        fs::write(dir.join("added-late"), "").unwrap();
        first_seen.extend(names_of(&first.read(None)));
        second_seen.extend(names_of(&second.read(None)));
        let missed = |seen: &[OsString]| -> Vec<OsString> {
            let seen: BTreeSet<&OsString> = seen.iter().collect();
            before
                .iter()
                .filter(|name| *name != "lower1-0999" && !seen.contains(name))
                .cloned()
                .collect()
        };
        Interleaved {
            first_duplicates: duplicates(&first_seen),
            first_missed: missed(&first_seen),
            second_duplicates: duplicates(&second_seen),
            second_missed: missed(&second_seen),
        }
    });
    assert_eq!(seen.first_duplicates, 0, "names the first reader saw twice");
    assert_eq!(seen.first_missed, Vec::<OsString>::new(), "first reader");
    assert_eq!(
        seen.second_duplicates, 0,
        "names the second reader saw twice"
    );
    assert_eq!(seen.second_missed, Vec::<OsString>::new(), "second reader");
    pair.finish();
}

#[test]
fn listing_5000_names_across_layers() {
    let pair = Pair::with_upper(
        2,
        |index, root| {
            match index {
                0 => many_files(root, "big", "n", 1500..3500),
                _ => {
                    many_files(root, "big", "n", 3000..5000);
                    many_files(root, "big", "n", 0..100);
                }
            }
            fixture::age(root);
        },
        |upper| many_files(upper, "big", "n", 0..2000),
    );
    let names = pair.both("list big", |root| {
        let names: Vec<OsString> = fs::read_dir(root.join("big"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        (names.len(), duplicates(&names))
    });
    assert_eq!(names.0, 5000, "names listed");
    assert_eq!(names.1, 0, "names listed twice");
    pair.both("sorted listing of big", |root| {
        sorted_listing(&root.join("big"))
    });
    pair.finish();
}

/// A unionfs mount over `lowers` layers filled by `fill`, for behaviour
/// kernel overlayfs has no counterpart for.
fn union_only(lowers: usize, fill: impl Fn(usize, &Path)) -> (Scratch, Mount) {
    let scratch = Scratch::new();
    let lower_paths: Vec<_> = (0..lowers)
        .map(|index| scratch.path(&format!("lower{index}")))
        .collect();
    for (index, path) in lower_paths.iter().enumerate() {
        fill(index, path);
    }
    let upper = scratch.path("upper");
    let work = scratch.path("work");
    let root = scratch.dir.path().join("merged");
    let mount = Mount::unionfs(&root, Some(&upper), Some(&work), &lower_paths, &[]);
    (scratch, mount)
}

#[test]
fn whiteout_prefix_reserved() {
    let (scratch, mut mount) = union_only(1, |_, root| {
        fixture::write(root, "file", "lower\n");
    });
    let root = mount.root.clone();
    assert_eq!(
        errno(fs::write(root.join(".wh.foo"), "x")),
        libc::EPERM,
        "create .wh.foo"
    );
    assert_eq!(
        errno(fs::create_dir(root.join(".wh.dir"))),
        libc::EPERM,
        "mkdir .wh.dir"
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("file", root.join(".wh.link"))),
        libc::EPERM,
        "symlink .wh.link"
    );
    assert_eq!(
        errno(
            nix::unistd::mkfifo(
                &root.join(".wh.fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o600)
            )
            .map_err(std::io::Error::from)
        ),
        libc::EPERM,
        "mkfifo .wh.fifo"
    );
    assert_eq!(
        errno(fs::hard_link(root.join("file"), root.join(".wh.hard"))),
        libc::EPERM,
        "link .wh.hard"
    );
    assert_eq!(
        errno(fs::rename(root.join("file"), root.join(".wh.file"))),
        libc::EPERM,
        "rename to .wh.file"
    );
    assert_eq!(
        errno(fs::symlink_metadata(root.join(".wh.foo"))),
        libc::ENOENT,
        "stat .wh.foo"
    );
    assert_eq!(
        sorted_listing(&root),
        [OsString::from("file")],
        "listing after the rejected creations"
    );
    mount.unmount();
    assert_eq!(
        sorted_listing(&scratch.dir.path().join("upper")),
        Vec::<OsString>::new(),
        "the upper layer after the rejected creations"
    );
}

#[test]
fn aufs_whiteout_hides_lower_names() {
    let (_scratch, mut mount) = union_only(2, |index, root| match index {
        0 => {
            fixture::write(root, ".wh.hidden", "");
            fixture::write(root, ".wh.hidden-dir", "");
            fixture::write(root, ".wh.same-layer", "");
            fixture::write(root, "same-layer", "beside its own whiteout\n");
            fixture::write(root, "kept", "kept\n");
        }
        _ => {
            fixture::write(root, "hidden", "hidden\n");
            fixture::write(root, "hidden-dir/inner", "inner\n");
            fixture::write(root, "visible", "visible\n");
        }
    });
    let root = mount.root.clone();
    let listing = sorted_listing(&root);
    for name in ["kept", "same-layer", "visible"] {
        assert!(
            listing.contains(&OsString::from(name)),
            "{name} must be listed"
        );
    }
    for name in [
        "hidden",
        "hidden-dir",
        ".wh.hidden",
        ".wh.hidden-dir",
        ".wh.same-layer",
    ] {
        assert!(
            !listing.contains(&OsString::from(name)),
            "{name} must not be listed"
        );
    }
    for name in ["hidden", "hidden-dir", ".wh.hidden", "hidden-dir/inner"] {
        assert_eq!(
            errno(fs::symlink_metadata(root.join(name))),
            libc::ENOENT,
            "stat {name}"
        );
    }
    assert_eq!(
        fs::read_to_string(root.join("same-layer")).ok(),
        Some("beside its own whiteout\n".to_string()),
        "a .wh. file hides only lower layers, not its own"
    );

    assert_eq!(
        errno(fs::write(root.join("hidden"), "new\n")),
        0,
        "create hidden"
    );
    assert_eq!(
        fs::read_to_string(root.join("hidden")).ok(),
        Some("new\n".to_string()),
        "the new file, not the lower one"
    );
    assert_eq!(
        errno(fs::create_dir(root.join("hidden-dir"))),
        0,
        "mkdir hidden-dir"
    );
    assert_eq!(
        sorted_listing(&root.join("hidden-dir")),
        Vec::<OsString>::new(),
        "the new directory must not show the hidden lower one's entries"
    );
    mount.unmount();
}

#[test]
fn rename_lower_dir_exdev_then_mv() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "dir/a", "a\n");
        fixture::write(root, "dir/sub/b", "b\n");
        fixture::write(root, "merged/c", "c\n");
        fixture::age(root);
    });
    pair.both("add to merged", |root| {
        errno(fs::write(root.join("merged/new"), "new\n"))
    });
    for dir in ["dir", "merged"] {
        pair.both(&format!("rename {dir}"), |root| {
            errno(fs::rename(
                root.join(dir),
                root.join(format!("{dir}-renamed")),
            ))
        });
    }
    for dir in ["dir", "merged"] {
        pair.both(&format!("mv {dir}"), |root| {
            let output = Command::new("mv")
                .arg(root.join(dir))
                .arg(root.join(format!("{dir}-moved")))
                .output()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        });
    }
    pair.finish();
}

#[test]
fn rename_exchange_file_and_dir() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "file", "lower file\n");
        fixture::write(root, "lower-dir/x", "x\n");
        fixture::age(root);
    });
    pair.both("make upper-only dir", |root| {
        (
            errno(fs::create_dir(root.join("upper-dir"))),
            errno(fs::write(root.join("upper-dir/inner"), "inner\n")),
        )
    });
    pair.both("exchange file and lower dir", |root| {
        rename2(
            root,
            name("file"),
            name("lower-dir"),
            RenameFlags::RENAME_EXCHANGE,
        )
    });
    pair.both("exchange file and upper-only dir", |root| {
        rename2(
            root,
            name("file"),
            name("upper-dir"),
            RenameFlags::RENAME_EXCHANGE,
        )
    });
    pair.both("read through the exchanged names", |root| {
        (
            fs::read_to_string(root.join("upper-dir")).ok(),
            fs::read_to_string(root.join("file/inner")).ok(),
        )
    });
    pair.finish();
}

#[test]
fn rename_noreplace_dir() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "lower-dir/x", "x\n");
        fixture::age(root);
    });
    pair.both("make upper-only dirs", |root| {
        (
            errno(fs::create_dir(root.join("first"))),
            errno(fs::create_dir(root.join("second"))),
        )
    });
    let noreplace = RenameFlags::RENAME_NOREPLACE;
    pair.both("noreplace onto existing dir", |root| {
        rename2(root, name("first"), name("second"), noreplace)
    });
    pair.both("noreplace onto lower dir", |root| {
        rename2(root, name("first"), name("lower-dir"), noreplace)
    });
    pair.both("noreplace onto free name", |root| {
        rename2(root, name("first"), name("third"), noreplace)
    });
    pair.both("noreplace of lower dir", |root| {
        rename2(root, name("lower-dir"), name("fourth"), noreplace)
    });
    pair.finish();
}

#[test]
fn rename_onto_own_hard_link() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "lower", "lower\n");
        fixture::age(root);
    });
    pair.both("make links", |root| {
        let created = errno(fs::write(root.join("new"), "new\n"));
        let linked = errno(fs::hard_link(root.join("new"), root.join("new-link")));
        let lower_linked = errno(fs::hard_link(root.join("lower"), root.join("lower-link")));
        (created, linked, lower_linked)
    });
    for (from, to) in [("new", "new-link"), ("lower", "lower-link")] {
        pair.both(&format!("rename {from} onto {to}"), |root| {
            errno(fs::rename(root.join(from), root.join(to)))
        });
    }
    pair.both("listing", sorted_listing);
    pair.finish();
}

#[test]
fn rename_onto_lower_hard_link() {
    // Kernel overlayfs (index off) gives each lower name its own inode, so
    // this rename removes `hl1` there. unionfs shows both names as one inode
    // (fuser makes the FUSE node id the st_ino), and POSIX says a rename
    // between two names of one file does nothing, which the kernel's VFS
    // enforces before unionfs sees the request.
    let scratch = crate::fixture::Scratch::new();
    let lower = scratch.path("lower");
    fixture::write(&lower, "hl1", "linked in the layer\n");
    fs::hard_link(lower.join("hl1"), lower.join("hl2")).unwrap();
    let upper = scratch.path("upper");
    let work = scratch.path("work");
    let mount = crate::fixture::Mount::unionfs(
        &scratch.dir.path().join("mnt"),
        Some(&upper),
        Some(&work),
        &[lower],
        &[],
    );

    assert_eq!(
        errno(fs::rename(mount.root.join("hl1"), mount.root.join("hl2"))),
        0
    );
    assert_eq!(
        sorted_listing(&mount.root),
        sorted_listing(&scratch.dir.path().join("lower"))
    );
    assert_eq!(
        fs::read_to_string(mount.root.join("hl1")).unwrap(),
        "linked in the layer\n"
    );
    assert_eq!(
        fs::read_dir(&upper).unwrap().count(),
        0,
        "nothing is written to the upper layer"
    );
}

#[test]
fn rename_onto_non_empty_dir() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "lower-full/x", "x\n");
        fixture::write(root, "file", "file\n");
        fixture::age(root);
    });
    // Kernel overlayfs marks a directory opaque before it tries to move it
    // into a merged directory and keeps the mark when the move fails, so the
    // rename onto an upper-only directory happens in an upper-only parent.
    pair.both("make upper-only dirs", |root| {
        (
            errno(fs::create_dir(root.join("source"))),
            errno(fs::create_dir_all(root.join("area/source"))),
            errno(fs::create_dir(root.join("area/upper-full"))),
            errno(fs::write(root.join("area/upper-full/y"), "y\n")),
        )
    });
    pair.both("rename dir onto lower-full", |root| {
        errno(fs::rename(root.join("source"), root.join("lower-full")))
    });
    pair.both("rename dir onto upper-full", |root| {
        errno(fs::rename(
            root.join("area/source"),
            root.join("area/upper-full"),
        ))
    });
    pair.both("rename file onto dir", |root| {
        errno(fs::rename(root.join("file"), root.join("lower-full")))
    });
    pair.both("rename dir onto file", |root| {
        errno(fs::rename(root.join("source"), root.join("file")))
    });
    pair.finish();
}
