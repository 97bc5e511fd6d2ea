//! AUFS and OCI whiteouts: `.wh.NAME` files and `.wh..wh..opq` in lower
//! layers read like their overlay equivalents, and `-o whiteout=aufs`
//! writes them. Kernel overlayfs, given the overlay-format equivalent of
//! each stack, is the oracle for the merged view.

use std::fs;
use std::path::Path;

use crate::fixture::{self, Kind, Pair, Setup, errno};
use crate::snapshot;

/// Two lower layers; `kind` selects the whiteout format: AUFS for the
/// unionfs side, overlay for the kernel side.
fn layers(kind: Kind, index: usize, root: &Path) {
    let aufs = kind == Kind::Unionfs;
    match index {
        0 => {
            fixture::write(root, "kept.txt", "kept\n");
            fixture::write(root, "dir/top.txt", "top\n");
            if aufs {
                fixture::write(root, ".wh.gone.txt", "");
                fixture::write(root, "dir/.wh.hidden.txt", "");
                fixture::write(root, "opq/.wh..wh..opq", "");
                fixture::write(root, ".wh.gonedir", "");
            } else {
                fixture::whiteout(root, "gone.txt");
                fixture::whiteout(root, "dir/hidden.txt");
                fixture::opaque(root, "opq");
                fixture::whiteout(root, "gonedir");
            }
            fixture::write(root, "opq/new.txt", "new\n");
        }
        _ => {
            fixture::write(root, "gone.txt", "hidden\n");
            fixture::write(root, "dir/hidden.txt", "hidden\n");
            fixture::write(root, "dir/shown.txt", "shown\n");
            fixture::write(root, "opq/old.txt", "hidden by the opaque dir\n");
            fixture::write(root, "gonedir/f", "hidden\n");
        }
    }
    fixture::age(root);
}

fn pair(union_options: &[&str]) -> Pair {
    Pair::build(Setup {
        lowers: 2,
        fill: &layers,
        union_options,
        ..Setup::default()
    })
}

#[test]
fn aufs_lowers_read_like_overlay() {
    let pair = pair(&[]);
    pair.assert_same_view();
    pair.both("stat whiteout name", |root| {
        errno(fs::metadata(root.join(".wh.gone.txt")))
    });
    pair.both("rm dir/shown.txt", |root| {
        errno(fs::remove_file(root.join("dir/shown.txt")))
    });
    pair.both("rmdir emptied dir", |root| {
        errno(
            fs::remove_file(root.join("dir/top.txt"))
                .and_then(|()| fs::remove_dir(root.join("dir"))),
        )
    });
    pair.both("recreate gone.txt", |root| {
        errno(fs::write(root.join("gone.txt"), "back\n"))
    });
    pair.both("mkdir gonedir", |root| {
        errno(fs::create_dir(root.join("gonedir")))
    });
    pair.finish_with(false);
}

#[test]
fn aufs_format_written_on_request() {
    let mut pair = pair(&["whiteout=aufs"]);
    pair.both("rm kept.txt", |root| {
        errno(fs::remove_file(root.join("kept.txt")))
    });
    pair.both("rm dir tree", |root| {
        errno(fs::remove_dir_all(root.join("dir")))
    });
    pair.both("mkdir dir again", |root| {
        errno(fs::create_dir(root.join("dir")))
    });
    pair.both("rename opq/new.txt", |root| {
        errno(fs::rename(root.join("opq/new.txt"), root.join("moved.txt")))
    });
    pair.assert_same_view();
    let expected = pair.union_view();

    pair.union.unmount();
    let upper = pair.upper(Kind::Unionfs);
    for marker in [".wh.kept.txt", ".wh.new.txt", "dir/.wh..wh..opq"] {
        let path = if marker == ".wh.new.txt" {
            upper.join("opq").join(marker)
        } else {
            upper.join(marker)
        };
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|err| panic!("{} missing: {err}", path.display()));
        assert!(meta.is_file(), "{} must be a regular file", path.display());
    }
    let devices = walkdir::WalkDir::new(&upper)
        .into_iter()
        .filter(|entry| {
            std::os::unix::fs::FileTypeExt::is_char_device(&entry.as_ref().unwrap().file_type())
        })
        .count();
    assert_eq!(
        devices, 0,
        "no overlay whiteout devices in an AUFS-format upper layer"
    );

    let lowers = [pair.lower(Kind::Unionfs, 0), pair.lower(Kind::Unionfs, 1)];
    let work = pair.upper(Kind::Unionfs).with_extension("work2");
    let root = upper.with_extension("remounted");
    let remounted = fixture::Mount::unionfs(&root, Some(&upper), Some(&work), &lowers, &[]);
    snapshot::assert_same(
        &snapshot::tree(&remounted.root, pair.started),
        &expected,
        "remounted AUFS-format stack",
    );
}

#[test]
fn reserved_names_stay_hidden() {
    let pair = pair(&[]);
    let union = &pair.union.root;
    assert_eq!(errno(fs::write(union.join(".wh.new"), "")), libc::EPERM);
    assert_eq!(
        errno(fs::create_dir(union.join(".wh..wh..opq"))),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::metadata(union.join(".wh.gone.txt"))),
        libc::ENOENT
    );
    assert_eq!(
        errno(fs::rename(
            union.join("kept.txt"),
            union.join(".wh.kept.txt")
        )),
        libc::EPERM
    );
    let names: Vec<String> = fs::read_dir(union.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["new.txt".to_string()]);
}
