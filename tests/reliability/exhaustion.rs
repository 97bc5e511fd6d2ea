//! Exhaustion and faults: a full upper filesystem during copy-up, a daemon
//! out of file descriptors, layers removed or made unreadable while
//! mounted, the mount detached behind the daemon's back, and processes
//! killed in the middle of a write. Each gives a clear errno, no panic,
//! and a mount that keeps serving (or a daemon that exits cleanly).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::fixture::{Scratch, errno, is_mounted, wait_for};
use crate::support::{self, DAEMON_TIMEOUT, Daemon, LoopExt4, names_in, tmpfs};

/// Writes `len` bytes of a repeating pattern to `path`.
fn write_pattern(path: &Path, len: usize) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
    let mut file = fs::File::create(path)?;
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n])?;
        left -= n;
    }
    file.sync_all()
}

/// Runs the ENOSPC case with the upper layer and work dir under `fs_root`
/// (a small filesystem of `capacity` bytes) and the lower layer on the
/// scratch dir's filesystem.
fn copy_up_enospc(scratch: &Scratch, fs_root: &Path, capacity: usize) {
    let lower = scratch.path("lower");
    let big = capacity / 2;
    write_pattern(&lower.join("big"), big).unwrap();
    let lower_content = fs::read(lower.join("big")).unwrap();
    let upper = fs_root.join("upper");
    let work = fs_root.join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&scratch.dir.path().join("mnt"), &options, &log, None);
    let mnt = daemon.mountpoint.clone();

    // Fill the upper filesystem through the mount until it is full.
    let filled = write_pattern(&mnt.join("filler"), 2 * capacity);
    assert_eq!(errno(filled), libc::ENOSPC, "filling the upper filesystem");

    let appended = OpenOptions::new()
        .append(true)
        .open(mnt.join("big"))
        .and_then(|mut file| file.write_all(b"tail\n"));
    assert_eq!(
        errno(appended),
        libc::ENOSPC,
        "copy-up on a full filesystem"
    );
    assert_eq!(
        fs::read(mnt.join("big")).unwrap(),
        lower_content,
        "the merged view shows the whole lower file after the failed copy-up"
    );
    assert_eq!(
        fs::read(lower.join("big")).unwrap(),
        lower_content,
        "the lower file is intact"
    );
    assert!(
        !upper.join("big").exists(),
        "a partial copy is visible in the upper layer"
    );
    assert_eq!(
        names_in(&work.join("work")),
        Vec::<std::ffi::OsString>::new(),
        "the failed copy-up left staging files"
    );

    fs::remove_file(mnt.join("filler")).unwrap();
    // ext4 reuses blocks freed in its running journal transaction only
    // after a commit, so the first retry may still see ENOSPC.
    let started = std::time::Instant::now();
    let mut last = None;
    let copied = wait_for(Duration::from_secs(10), || {
        let appended = OpenOptions::new()
            .append(true)
            .open(mnt.join("big"))
            .and_then(|mut file| file.write_all(b"tail\n"));
        last = appended.as_ref().err().map(|err| err.to_string());
        appended.is_ok()
    });
    assert!(
        copied,
        "the copy-up still fails once space is freed: {last:?}"
    );
    println!(
        "copy-up worked {:?} after the space was freed",
        started.elapsed()
    );
    let mut expected = lower_content.clone();
    expected.extend_from_slice(b"tail\n");
    assert_eq!(fs::read(mnt.join("big")).unwrap(), expected);
    assert_eq!(fs::read(upper.join("big")).unwrap(), expected);

    assert!(daemon.is_running(), "the daemon died");
    daemon.assert_no_panic();
    daemon.unmount();
}

#[test]
fn enospc_on_tmpfs_upper() {
    let scratch = Scratch::new();
    let small = scratch.dir.path().join("small");
    let capacity = 8 << 20;
    let _tmpfs = tmpfs(&small, &format!("size={capacity}"));
    copy_up_enospc(&scratch, &small, capacity);
}

#[test]
fn enospc_on_loop_ext4_upper() {
    let scratch = Scratch::new();
    let small = scratch.dir.path().join("small");
    let _ext4 = LoopExt4::new(&scratch.dir.path().join("ext4.img"), 32, &small);
    copy_up_enospc(&scratch, &small, 32 << 20);
}

/// A tmpfs upper layer with few inodes: creations fail with ENOSPC, and
/// work again once a name is removed.
#[test]
fn inode_exhaustion_on_upper() {
    let scratch = Scratch::new();
    let small = scratch.dir.path().join("small");
    let _tmpfs = tmpfs(&small, "size=8m,nr_inodes=64");
    for dir in ["upper", "work"] {
        fs::create_dir(small.join(dir)).unwrap();
    }
    let lower = scratch.path("lower");
    fs::write(lower.join("lower-file"), "lower\n").unwrap();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        small.join("upper").display(),
        small.join("work").display()
    );
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&scratch.dir.path().join("mnt"), &options, &log, None);
    let mnt = daemon.mountpoint.clone();

    let mut created = 0;
    let failure = loop {
        match fs::create_dir(mnt.join(format!("d{created}"))) {
            Ok(()) => created += 1,
            Err(err) => break err,
        }
        assert!(created < 1000, "64 inodes allowed 1000 directories");
    };
    assert_eq!(
        failure.raw_os_error(),
        Some(libc::ENOSPC),
        "mkdir: {failure}"
    );
    assert_eq!(
        errno(fs::remove_file(mnt.join("lower-file"))),
        libc::ENOSPC,
        "a whiteout needs an inode too"
    );
    assert_eq!(
        fs::read_to_string(mnt.join("lower-file")).unwrap(),
        "lower\n"
    );

    fs::remove_dir(mnt.join("d0")).unwrap();
    fs::remove_dir(mnt.join("d1")).unwrap();
    fs::create_dir(mnt.join("again")).expect("mkdir works once an inode is free");
    assert!(daemon.is_running(), "the daemon died");
    daemon.assert_no_panic();
    daemon.unmount();
}

/// Builds a lower layer with `files` files and `dirs` directories.
fn many_names(scratch: &Scratch, files: usize, dirs: usize) -> PathBuf {
    let lower = scratch.path("lower");
    for index in 0..files {
        fs::write(lower.join(format!("f{index}")), format!("{index}\n")).unwrap();
    }
    for index in 0..dirs {
        fs::create_dir(lower.join(format!("d{index}"))).unwrap();
        fs::write(lower.join(format!("d{index}/inner")), format!("{index}\n")).unwrap();
    }
    lower
}

fn layer_options(scratch: &Scratch, lower: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        scratch.path("upper").display(),
        scratch.path("work").display()
    )
}

/// Counts each errno (0 for success) of `results`.
fn tally(results: impl IntoIterator<Item = i32>) -> BTreeMap<i32, usize> {
    let mut counts = BTreeMap::new();
    for code in results {
        *counts.entry(code).or_default() += 1;
    }
    counts
}

/// With `RLIMIT_NOFILE` at 64, holding 150 files open makes the daemon
/// return EMFILE (and nothing else); once they are closed, every file
/// opens, reads and copies up again.
#[test]
fn fd_limit_gives_emfile_then_recovers() {
    let scratch = Scratch::new();
    let lower = many_names(&scratch, 150, 0);
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &layer_options(&scratch, &lower),
        &log,
        Some(64),
    );
    let mnt = daemon.mountpoint.clone();

    let mut held = Vec::new();
    let mut codes = Vec::new();
    for index in 0..150 {
        match fs::File::open(mnt.join(format!("f{index}"))) {
            Ok(file) => {
                held.push(file);
                codes.push(0);
            }
            Err(err) => codes.push(err.raw_os_error().unwrap_or(-1)),
        }
    }
    let counts = tally(codes);
    assert!(
        counts.keys().all(|code| [0, libc::EMFILE].contains(code)),
        "opens under the descriptor limit: errno counts {counts:?}"
    );
    assert!(
        counts.contains_key(&libc::EMFILE),
        "the limit was never hit: {counts:?}"
    );
    assert!(
        daemon.is_running(),
        "the daemon died at the descriptor limit"
    );
    drop(held);

    // The kernel sends RELEASE after close(2) returns; give it a moment.
    let recovered = wait_for(Duration::from_secs(5), || {
        fs::read_to_string(mnt.join("f149")).is_ok()
    });
    assert!(
        recovered,
        "the mount did not recover after the files were closed"
    );
    for index in 0..150 {
        let path = mnt.join(format!("f{index}"));
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{index}\n"));
        let appended = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(b"more\n"));
        assert_eq!(errno(appended), 0, "copy-up of f{index} after the limit");
    }
    daemon.assert_no_panic();
    daemon.unmount();
}

/// A walk of 200 directories, one at a time as `find` does, under
/// `RLIMIT_NOFILE` 64. The caller never holds more than one file open, so
/// the mount must keep serving, as kernel overlayfs does under any limit.
#[test]
fn fd_limit_directory_walk() {
    let scratch = Scratch::new();
    let lower = many_names(&scratch, 0, 200);
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &layer_options(&scratch, &lower),
        &log,
        Some(64),
    );
    let mnt = daemon.mountpoint.clone();

    let codes: Vec<i32> = (0..200)
        .map(|index| errno(fs::read_to_string(mnt.join(format!("d{index}/inner")))))
        .collect();
    let fds = support::open_fds(daemon.pid());
    let counts = tally(codes);
    assert!(daemon.is_running(), "the daemon died during the walk");
    daemon.assert_no_panic();
    assert_eq!(
        counts,
        BTreeMap::from([(0, 200)]),
        "reading d0/inner .. d199/inner one at a time: errno counts (0 is success); \
         the daemon holds {fds} descriptors afterwards"
    );
    daemon.unmount();
}

/// A lower layer removed while mounted: its names fail with ENOENT, the
/// other layers keep serving, and the daemon unmounts cleanly. The upper
/// layer removed: writes fail with ENOENT and nothing crashes.
#[test]
fn layers_removed_while_mounted() {
    let scratch = Scratch::new();
    let lower1 = scratch.path("lower1");
    let lower2 = scratch.path("lower2");
    fs::write(lower1.join("one"), "one\n").unwrap();
    fs::write(lower2.join("two"), "two\n").unwrap();
    fs::create_dir(lower2.join("dir")).unwrap();
    fs::write(lower2.join("dir/inner"), "inner\n").unwrap();
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        lower1.display(),
        lower2.display(),
        scratch.path("upper").display(),
        scratch.path("work").display()
    );
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(&scratch.dir.path().join("mnt"), &options, &log, None);
    let mnt = daemon.mountpoint.clone();
    assert_eq!(fs::read_to_string(mnt.join("two")).unwrap(), "two\n");

    fs::remove_dir_all(&lower2).unwrap();
    for name in ["two", "dir/inner"] {
        let read = errno(fs::read_to_string(mnt.join(name)));
        assert!(
            read == libc::ENOENT || read == libc::ESTALE,
            "reading {name} of a removed layer gave errno {read}"
        );
    }
    assert_eq!(fs::read_to_string(mnt.join("one")).unwrap(), "one\n");
    fs::write(mnt.join("new"), "new\n").unwrap();

    fs::remove_dir_all(scratch.dir.path().join("upper")).unwrap();
    let written = errno(fs::write(mnt.join("after"), "x"));
    assert_eq!(
        written,
        libc::ENOENT,
        "creating a file in a removed upper layer"
    );
    let copied = errno(
        OpenOptions::new()
            .append(true)
            .open(mnt.join("one"))
            .and_then(|mut file| file.write_all(b"x")),
    );
    assert!(
        copied != 0,
        "a copy-up into a removed upper layer succeeded"
    );
    assert_eq!(
        fs::read_to_string(lower1.join("one")).unwrap(),
        "one\n",
        "the lower layer is unchanged"
    );

    assert!(daemon.is_running(), "the daemon died");
    daemon.assert_no_panic();
    daemon.unmount();
}

/// Layers made unreadable (mode 000) while mounted: the daemon runs as
/// root and holds each layer open, so it keeps serving; permission checks
/// apply to the merged view's own modes.
#[test]
fn layers_made_unreadable_while_mounted() {
    let scratch = Scratch::new();
    let lower = scratch.path("lower");
    fs::create_dir(lower.join("dir")).unwrap();
    fs::write(lower.join("dir/file"), "lower\n").unwrap();
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &layer_options(&scratch, &lower),
        &log,
        None,
    );
    let mnt = daemon.mountpoint.clone();
    for path in [lower.join("dir"), lower.clone(), scratch.path("upper")] {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    }

    assert_eq!(fs::read_to_string(mnt.join("dir/file")).unwrap(), "lower\n");
    fs::write(mnt.join("dir/new"), "new\n").unwrap();
    assert_eq!(fs::read_to_string(mnt.join("dir/new")).unwrap(), "new\n");

    for path in [scratch.path("upper"), lower.clone(), lower.join("dir")] {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(daemon.is_running(), "the daemon died");
    daemon.assert_no_panic();
    daemon.unmount();
}

/// `umount -l` behind the daemon's back: a process with a file open keeps
/// reading it, and the daemon exits cleanly once that file is closed.
#[test]
fn lazy_unmount_behind_daemon() {
    let scratch = Scratch::new();
    let lower = many_names(&scratch, 3, 0);
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &layer_options(&scratch, &lower),
        &log,
        None,
    );
    let mnt = daemon.mountpoint.clone();
    let mut held = fs::File::open(mnt.join("f1")).unwrap();

    fixture_umount_lazy(&mnt);
    assert!(!is_mounted(&mnt), "umount -l must detach the mount");
    let mut content = String::new();
    held.read_to_string(&mut content).unwrap();
    assert_eq!(
        content, "1\n",
        "an open file keeps working after the detach"
    );
    assert!(daemon.is_running(), "the daemon must serve its last user");

    drop(held);
    let exited = wait_for(DAEMON_TIMEOUT, || !daemon.is_running());
    assert!(exited, "the daemon did not exit after its last user left");
    let status = daemon.child.wait().unwrap();
    let log = daemon.log_text();
    let tail: Vec<&str> = log.lines().rev().take(8).collect();
    assert!(
        status.success(),
        "the daemon exited with {status}; its log ends with (newest first):\n{}",
        tail.join("\n")
    );
    daemon.assert_no_panic();
}

fn fixture_umount_lazy(mnt: &Path) {
    crate::fixture::run(Command::new("umount").arg("-l").arg(mnt));
}

/// Processes killed in the middle of writes (by SIGKILL from outside, and
/// one that kills itself between two writes) leave the mount serving other
/// users, and the mount unmounts without being busy.
#[test]
fn writer_killed_mid_write() {
    let scratch = Scratch::new();
    let lower = many_names(&scratch, 2, 0);
    fs::set_permissions(scratch.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &layer_options(&scratch, &lower),
        &log,
        None,
    );
    let mnt = daemon.mountpoint.clone();

    for round in 0..5 {
        let mut writer = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", mnt.join(format!("big{round}")).display()))
            .args(["bs=1M", "count=4000", "status=none"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + 40 * round));
        writer.kill().unwrap();
        writer.wait().unwrap();
    }
    let script = "printf first >> \"$1\"; kill -KILL $$; printf never >> \"$1\"";
    let status = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(mnt.join("f0"))
        .status()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_eq!(fs::read_to_string(mnt.join("f0")).unwrap(), "0\nfirst");

    let other = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(mnt.join("f1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&other.stdout),
        "1\n",
        "another user reads through the mount: {}",
        String::from_utf8_lossy(&other.stderr)
    );
    assert!(daemon.is_running(), "the daemon died");
    daemon.assert_no_panic();
    let unmounted = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(
        unmounted.success(),
        "the mount stayed busy after the killed writers"
    );
    daemon.unmount();
}
