//! Differential tests: the same operations on unionfs and on kernel
//! overlayfs over identical layers give the same results, merged views and
//! upper layers.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::fixture::{self, Pair, errno};

/// Two lower layers with files, directories, symlinks, hard links, a FIFO,
/// a sparse file, a whiteout and an opaque directory.
pub fn standard(index: usize, root: &Path) {
    match index {
        0 => {
            fixture::write(root, "a.txt", "a from lower0\n");
            fixture::write(root, "dir/x.txt", "x\n");
            fixture::write(root, "dir/sub/y.txt", "y\n");
            fixture::write(root, "shadowed.txt", "lower0\n");
            fixture::symlink(root, "link", "a.txt");
            fixture::whiteout(root, "gone");
            fixture::opaque(root, "opq");
            fixture::write(root, "opq/top.txt", "top\n");
        }
        _ => {
            fixture::write(root, "shadowed.txt", "lower1\n");
            fixture::write(root, "gone", "hidden by lower0's whiteout\n");
            fixture::write(root, "dir/z.txt", "z\n");
            fixture::write(root, "opq/hidden.txt", "hidden by the opaque dir\n");
            fixture::write(root, "only1/deep/file", "deep\n");
            fixture::write(root, "hl1", "hard linked\n");
            fs::hard_link(root.join("hl1"), root.join("hl2")).unwrap();
            let sparse = fs::File::create(root.join("sparse")).unwrap();
            sparse.set_len(16 << 20).unwrap();
            std::os::unix::fs::FileExt::write_at(&sparse, b"data in the middle", 8 << 20).unwrap();
            nix::unistd::mkfifo(
                &root.join("fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o640),
            )
            .unwrap();
            fs::set_permissions(root.join("dir/z.txt"), fs::Permissions::from_mode(0o444)).unwrap();
        }
    }
    fixture::age(root);
}

fn pair() -> Pair {
    Pair::new(2, standard)
}

#[test]
fn view_matches_kernel() {
    pair().finish();
}

#[test]
fn append_copies_up() {
    let pair = pair();
    pair.both("append", |root| {
        errno(
            fs::OpenOptions::new()
                .append(true)
                .open(root.join("dir/z.txt"))
                .and_then(|mut file| file.write_all(b"more\n")),
        )
    });
    pair.finish();
}

#[test]
fn truncating_open_keeps_metadata() {
    let pair = pair();
    pair.both("open O_TRUNC", |root| {
        errno(
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(root.join("a.txt")),
        )
    });
    pair.finish();
}

#[test]
fn sparse_copy_up_stays_sparse() {
    let pair = pair();
    let written = pair.both("write into sparse", |root| {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(root.join("sparse"))
            .unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"!", 0)
            .map(drop)
            .map_err(|e| e.raw_os_error())
    });
    assert_eq!(written, Ok(()));
    let view = pair.union_view();
    assert!(
        view[Path::new("sparse")].sparse,
        "the copied-up file must keep its holes"
    );
    pair.finish();
}

#[test]
fn unlink_writes_whiteouts() {
    let pair = pair();
    for name in [
        "a.txt",
        "dir/z.txt",
        "shadowed.txt",
        "link",
        "fifo",
        "hl1",
        "missing",
        "gone",
    ] {
        pair.both(&format!("unlink {name}"), |root| {
            errno(fs::remove_file(root.join(name)))
        });
    }
    pair.finish();
}

#[test]
fn rmdir_needs_merged_empty() {
    let pair = pair();
    pair.both("rmdir non-empty", |root| {
        errno(fs::remove_dir(root.join("only1/deep")))
    });
    pair.both("rm deep/file", |root| {
        errno(fs::remove_file(root.join("only1/deep/file")))
    });
    pair.both("rmdir deep", |root| {
        errno(fs::remove_dir(root.join("only1/deep")))
    });
    pair.both("rmdir only1", |root| {
        errno(fs::remove_dir(root.join("only1")))
    });
    pair.both("rmdir file", |root| {
        errno(fs::remove_dir(root.join("a.txt")))
    });
    pair.finish();
}

#[test]
fn open_directory_survives_rmdir() {
    use std::os::unix::fs::MetadataExt;
    let pair = pair();
    pair.both("fstat removed dirs", |root| {
        fs::remove_file(root.join("only1/deep/file")).unwrap();
        fs::create_dir(root.join("fresh")).unwrap();
        let mut seen = Vec::new();
        for name in ["only1/deep", "fresh"] {
            let dir = fs::File::open(root.join(name)).unwrap();
            fs::remove_dir(root.join(name)).unwrap();
            let meta = dir.metadata().unwrap();
            seen.push(format!(
                "{name}: dir {} nlink {}",
                meta.is_dir(),
                meta.nlink()
            ));
        }
        seen.join("; ")
    });
    pair.finish();
}

#[test]
fn remove_tree_then_recreate() {
    let pair = pair();
    pair.both("rm -r dir", |root| {
        errno(fs::remove_dir_all(root.join("dir")))
    });
    pair.both("mkdir dir", |root| errno(fs::create_dir(root.join("dir"))));
    pair.both("create dir/x.txt", |root| {
        errno(fs::write(root.join("dir/new.txt"), "new\n"))
    });
    pair.both("mkdir gone", |root| {
        errno(fs::create_dir(root.join("gone")))
    });
    pair.finish();
}

#[test]
fn create_over_whiteout_file() {
    let pair = pair();
    pair.both("rm a.txt", |root| {
        errno(fs::remove_file(root.join("a.txt")))
    });
    pair.both("create a.txt", |root| {
        errno(fs::write(root.join("a.txt"), "again\n"))
    });
    pair.both("symlink over whiteout", |root| {
        errno(
            fs::remove_file(root.join("shadowed.txt"))
                .and_then(|()| std::os::unix::fs::symlink("x", root.join("shadowed.txt"))),
        )
    });
    pair.finish();
}

#[test]
fn chmod_chown_utimes_copy_up() {
    let pair = pair();
    pair.both("chmod file", |root| {
        errno(fs::set_permissions(
            root.join("dir/x.txt"),
            fs::Permissions::from_mode(0o600),
        ))
    });
    pair.both("chown file", |root| {
        errno(std::os::unix::fs::chown(
            root.join("dir/sub/y.txt"),
            Some(1000),
            Some(1000),
        ))
    });
    pair.both("chmod dir", |root| {
        errno(fs::set_permissions(
            root.join("only1"),
            fs::Permissions::from_mode(0o700),
        ))
    });
    pair.both("lchown symlink", |root| {
        errno(std::os::unix::fs::lchown(
            root.join("link"),
            Some(7),
            Some(8),
        ))
    });
    pair.both("utimes", |root| {
        let time = nix::sys::time::TimeSpec::new(1_000_000_000, 5);
        errno(
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &root.join("hl2"),
                &time,
                &time,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(std::io::Error::from),
        )
    });
    pair.finish();
}

#[test]
fn mkdir_mode_0555_and_files() {
    let pair = pair();
    pair.both("mkdir 0555", |root| {
        errno(fs::DirBuilder::new().mode(0o555).create(root.join("ro")))
    });
    pair.both("create 0444", |root| {
        errno(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(root.join("dir/ro.txt")),
        )
    });
    pair.both("mkfifo", |root| {
        errno(
            nix::unistd::mkfifo(
                &root.join("dir/pipe"),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(std::io::Error::from),
        )
    });
    pair.finish();
}

#[test]
fn rename_files_and_dirs() {
    let pair = pair();
    pair.both("rename lower file", |root| {
        errno(fs::rename(root.join("a.txt"), root.join("dir/a2.txt")))
    });
    pair.both("rename onto lower file", |root| {
        errno(fs::rename(
            root.join("dir/x.txt"),
            root.join("shadowed.txt"),
        ))
    });
    pair.both("rename lower dir", |root| {
        errno(fs::rename(root.join("only1"), root.join("only2")))
    });
    pair.both("mkdir new", |root| {
        errno(fs::create_dir(root.join("newdir")))
    });
    pair.both("fill new", |root| {
        errno(fs::write(root.join("newdir/f"), "f\n"))
    });
    pair.both("rename upper dir", |root| {
        errno(fs::rename(root.join("newdir"), root.join("moved")))
    });
    pair.both("rename symlink", |root| {
        errno(fs::rename(root.join("link"), root.join("link2")))
    });
    pair.finish();
}

#[test]
fn rename_dir_onto_emptied_lower_dir() {
    let pair = pair();
    pair.both("empty dir/sub", |root| {
        errno(fs::remove_file(root.join("dir/sub/y.txt")))
    });
    pair.both("mkdir src", |root| errno(fs::create_dir(root.join("src"))));
    pair.both("fill src", |root| {
        errno(fs::write(root.join("src/f"), "f\n"))
    });
    pair.both("rename onto emptied", |root| {
        errno(fs::rename(root.join("src"), root.join("dir/sub")))
    });
    pair.finish();
}

#[test]
fn rename_noreplace_and_exchange() {
    let pair = pair();
    let rename2 = |root: &Path, from: &str, to: &str, flags: nix::fcntl::RenameFlags| {
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
    };
    pair.both("noreplace onto existing", |root| {
        rename2(
            root,
            "a.txt",
            "shadowed.txt",
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
    });
    pair.both("noreplace onto free", |root| {
        rename2(
            root,
            "a.txt",
            "free.txt",
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
    });
    pair.both("exchange files", |root| {
        rename2(
            root,
            "free.txt",
            "dir/x.txt",
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
    });
    pair.both("exchange with missing", |root| {
        rename2(
            root,
            "free.txt",
            "nothing",
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
    });
    pair.finish();
}

#[test]
fn hard_links_share_inode() {
    let pair = pair();
    pair.both("link lower file", |root| {
        errno(fs::hard_link(root.join("a.txt"), root.join("a-link")))
    });
    pair.both("write through link", |root| {
        errno(fs::write(root.join("a-link"), "changed\n"))
    });
    pair.both("read other name", |root| {
        fs::read_to_string(root.join("a.txt")).unwrap()
    });
    pair.finish();
}

#[test]
fn xattrs_copy_up() {
    let pair = pair();
    pair.both("set user xattr", |root| {
        errno(xattr::set(root.join("dir/x.txt"), "user.test", b"value"))
    });
    pair.both("set on dir", |root| {
        errno(xattr::set(root.join("only1"), "user.dir", b"d"))
    });
    pair.both("remove missing", |root| {
        errno(xattr::remove(root.join("a.txt"), "user.nothing"))
    });
    pair.both("get", |root| {
        xattr::get(root.join("dir/x.txt"), "user.test").unwrap()
    });
    pair.both("list", |root| {
        xattr::list(root.join("dir/x.txt"))
            .unwrap()
            .collect::<Vec<_>>()
    });
    pair.finish();
}

#[test]
fn readdir_lists_each_name_once() {
    let pair = pair();
    let listing = |root: &Path, dir: &str| {
        let mut names: Vec<String> = fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    for dir in ["", "dir", "opq", "only1"] {
        pair.both(&format!("list {dir:?}"), |root| listing(root, dir));
    }
    pair.finish();
}
