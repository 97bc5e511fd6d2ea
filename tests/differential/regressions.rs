//! Fixed cases, each a difference the random runs found (minimized), or a
//! check that the harness itself compares what it should. Each replays on
//! fresh copies of its layer stack and must show no difference.
//!
//! The `split_*` tests open one name of a lower hard-linked file for
//! writing, which gives that name its own upper copy while the other names
//! keep the lower file. They check that writes and truncates through the
//! descriptor show through that name, and that the other names keep the
//! lower file's attributes, also when they are hidden.

use std::collections::HashSet;

use crate::case::Case;
use crate::harness;
use crate::layers;
use crate::ops::{HoldMode, Op};

fn replay(text: &str) {
    let case = Case::parse(text).unwrap_or_else(|err| panic!("invalid case: {err}"));
    if let Some(failure) = harness::replay(&case) {
        panic!(
            "unionfs differs from kernel overlayfs: {}\n{}\ncase as run:\n{}",
            failure.signature, failure.report, failure.case
        );
    }
}

/// The text form round-trips, so a printed case replays as printed.
#[test]
fn case_text_round_trips() {
    let text = "\
format aufs
lower 0
  dir d 0755 1000:1000 user.a=v1
  file d/f 4755 0:0 9000 7 0+100,8192+50 user.b=v2
  symlink l ../x
  link d/g d/f
  fifo p 0644 65534:65534
  whiteout w
  opaque o
upper
  whiteout d/h
ops
  create a 0644 excl
  write d/f append 0 100 3
  fallocate d/f punch-hole 4096 4096
  utimes d now 1600000000.000000123
  setxattr d user.a v3 replace
  rename a d/f exchange
  readdir-changing . 2 1 new0 -
  hold 1 d/f rdwr
  write-held 1 10 10 5
  chown l 4294967295 1000
";
    let case = Case::parse(text).unwrap();
    assert_eq!(case.to_string(), text);
}

/// A stack with every kind of lower entry and each operation once.
#[test]
fn every_operation_once() {
    replay(
        "
format overlay
lower 0
  dir dir 0755 0:0
  file dir/a 0644 1000:1000 5000 1 full user.a=v1
  link dir/b dir/a
  file sparse 0600 0:0 131072 2 0+100,65536+4096
  symlink l dir/a
  fifo p 0644 0:0
  whiteout gone
  opaque o
  file o/new 0644 0:0 10 3 full
lower 1
  file gone 0644 0:0 10 4 full
  file o/old 0644 0:0 10 5 full
  dir dir 0700 0:0
  file dir/c 0644 0:0 100 6 full
upper
ops
  create new 0644 excl
  write dir/a plain 100 10 7
  write sparse trunc 0 10 8
  write dir/c append 0 10 9
  truncate dir/b 3
  fallocate new allocate 0 8192
  chmod dir 0700
  chown l 1000 1000
  utimes dir/c 1600000000.5 omit
  setxattr dir user.b v2 any
  removexattr dir/a user.a
  link dir/c c2
  symlink nowhere s
  mkdir d2 0755
  rmdir o
  unlink gone
  rename dir/c d2/c plain
  rename new c2 exchange
  rename d2 o noreplace
  mkfifo f2 0600
  readdir dir 2 1
  readdir-changing . 3 1 new0 l
  read sparse 0 100
  hold 0 dir/b rdonly
  write dir/b plain 0 10 11
  read-held 0 0 100
  stat-held 0
  close 0
",
    );
}

/// Data written through a descriptor opened for writing on one name of a
/// lower hard-linked file must show through that name.
#[test]
fn split_hard_link_write_shows() {
    replay(
        "
format overlay
lower 0
  file dir/a 0644 0:0 0 1 full
  link dir/b dir/a
upper
ops
  hold 0 dir/a rdwr
  write-held 0 0 10 81
",
    );
}

/// ftruncate through a descriptor opened for writing on one name of a
/// lower hard-linked file shows through that name, and the other name
/// keeps the lower file's link count, as kernel overlayfs reports it.
#[test]
fn split_hard_link_ftruncate_shows() {
    replay(
        "
format overlay
lower 0
  file a 0644 1000:0 1 535 full
  link f/b a
upper
ops
  hold 2 f/b rdwr
  chown d 0 4294967295
  truncate-held 2 55
",
    );
}

/// Names made by link(2) in a new upper directory, next to a file renamed
/// into it, report a d_ino equal to their st_ino.
#[test]
fn readdir_d_ino_after_link() {
    replay(
        "
format overlay
lower 0
  dir a 1777 65534:65534
lower 1
  file c/b 2755 65534:65534 12345 545 full
lower 2
  file y 4755 1000:1000 77305 741 none
upper
ops
  mkdir a/c 0555
  rename y a/c/sub plain
  link c/b a/c/x
  readdir a/c 7 4
",
    );
}

/// As above, for ftruncate on the descriptor.
#[test]
fn split_hidden_hard_link_ftruncate() {
    replay(
        "
format overlay
lower 0
  symlink d dangling/target
lower 1
  file x 0644 0:0 100 1 full
  link d x
upper
ops
  hold 0 x rdwr
  truncate-held 0 4000
",
    );
}

/// The harness leaves out the cases it avoids, and only those: renaming
/// one name of a lower hard-linked file onto another (the difference the
/// README documents) and a directory onto a non-empty directory.
#[test]
fn avoided_renames_are_skipped() {
    let case = Case::parse(
        "
format overlay
lower 0
  file a 0644 0:0 10 1 full
  link b a
  dir d 0755 0:0
  dir e 0755 0:0
  file e/f 0644 0:0 10 2 full
upper
ops
  rename a b plain
  rename a b exchange
  mkdir n 0755
  mkdir m 0755
  create m/x 0644 excl
  rename n m plain
  rename a b noreplace
  rename d e2 plain
",
    )
    .unwrap();
    let mut totals = harness::Totals::default();
    let failure = harness::replay_counting(&case, &mut totals);
    assert!(failure.is_none(), "{}", failure.unwrap().report);
    assert_eq!(totals.skipped, 3, "skipped operations");
    assert_eq!(totals.operations, 5, "operations run");
}

/// ext4 changes this file's block count (so its sparse-ness) when its
/// delayed allocations are written back, so the remount check must compare
/// with a merged view taken after writeback.
#[test]
fn sparse_file_after_writeback() {
    replay(
        "
format overlay
lower 0
upper
  file c/c 0444 0:0 0 153 full user.b=v43
ops
  write c/c trunc 12288 1 896
  fallocate c/c keep-size 0 100
  write c/c plain 0 20000 820
  fallocate c/c zero-range 24753 4096
",
    );
}

/// fstat and reads through a descriptor opened on a lower hard-linked file
/// are left out, whether the other names are visible or hidden, and only
/// those: after a write splits one name off, unionfs keeps such descriptors
/// on the inode the other names share (README, "Behaviour").
#[test]
fn avoided_held_descriptors_are_skipped() {
    let case = Case::parse(
        "
format overlay
lower 0
  file x 0644 0:0 100 1 full
  link hidden x
  file single 0644 0:0 100 2 full
upper
ops
",
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let lower = root.path().join("lower");
    let upper = root.path().join("upper");
    layers::build(&lower, &case.lowers[0], layers::Format::Overlay);
    std::fs::create_dir(&upper).unwrap();
    let view = crate::view::tree(&lower, std::time::SystemTime::now());
    let mut shared = HashSet::new();

    harness::track_shared(
        &Op::Hold {
            slot: 0,
            path: "x".into(),
            mode: HoldMode::ReadWrite,
        },
        &view,
        &upper,
        &mut shared,
    );
    harness::track_shared(
        &Op::Hold {
            slot: 1,
            path: "single".into(),
            mode: HoldMode::ReadWrite,
        },
        &view,
        &upper,
        &mut shared,
    );

    let stat = |slot| Op::StatHeld { slot };
    let read = |slot| Op::ReadHeld {
        slot,
        offset: 0,
        length: 10,
    };
    assert!(harness::avoided(&stat(0), &view, &upper, &shared).is_some());
    assert!(harness::avoided(&read(0), &view, &upper, &shared).is_some());
    assert!(harness::avoided(&stat(1), &view, &upper, &shared).is_none());
    assert!(harness::avoided(&read(1), &view, &upper, &shared).is_none());
    let write = Op::WriteHeld {
        slot: 0,
        offset: 0,
        length: 1,
        seed: 1,
    };
    assert!(
        harness::avoided(&write, &view, &upper, &shared).is_none(),
        "writes stay checked"
    );
}

/// A directory listed right after one of its names was split off a lower
/// hard-linked file shows that name's own inode number in d_ino.
#[test]
fn readdir_after_split_hard_link() {
    replay(
        "
format aufs
lower 0
lower 1
  file x/e/sub 0755 1000:0 5000 788 full
  link sub/y x/e/sub
lower 2
lower 3
upper
ops
  hold 1 sub/y rdwr
  readdir sub 0 2
",
    );
}
