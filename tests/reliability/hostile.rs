//! Hostile layer content beyond tests/integration/safety.rs: a symlink
//! swapped in for a directory while copy-ups run under it, many hard links
//! to a host file, device nodes, setuid files and file capabilities under
//! each mount option, and reserved names planted in lower layers.
//!
//! The daemon must never read, create, change or remove anything outside
//! the layers and the work dir; each test fingerprints a directory outside
//! them before and after.

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};

use crate::fixture::{self, Kind, Mount, Pair, Scratch, errno};
use crate::support::{self, Daemon, setting};

/// One path's type and mode, owner, size, times, inode, content and xattrs.
type Print = (
    PathBuf,
    u32,
    u32,
    u64,
    i64,
    i64,
    u64,
    Vec<u8>,
    Vec<OsString>,
);

/// Returns every path under `root` with what a change would alter.
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
            let mut xattrs: Vec<OsString> = xattr::list(entry.path()).unwrap().collect();
            xattrs.sort();
            (
                entry.path().to_path_buf(),
                meta.mode(),
                meta.uid(),
                meta.size(),
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                meta.ino(),
                content,
                xattrs,
            )
        })
        .collect()
}

/// Creates a directory outside the layers, with a secret file and a
/// subdirectory.
fn outside(scratch: &Scratch) -> PathBuf {
    let outside = scratch.path("outside");
    fixture::write(&outside, "secret", "host data\n");
    fixture::mkdir(&outside, "sub");
    outside
}

fn options(scratch: &Scratch, extra: &str) -> String {
    let path = |name: &str| scratch.path(name).display().to_string();
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        path("lower"),
        path("upper"),
        path("work")
    );
    if !extra.is_empty() {
        options.push(',');
        options.push_str(extra);
    }
    options
}

/// Swaps `a` and `b` atomically.
fn exchange(a: &Path, b: &Path) -> nix::Result<()> {
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
}

/// Runs copy-ups under `dir/sub/` through the mount while another thread
/// keeps exchanging the real directory `swapped` with a symlink to the
/// outside directory. Returns how many copy-ups succeeded and how many
/// swaps were made.
fn race_copy_ups(scratch: &Scratch, swapped: PathBuf, files: usize) -> (usize, usize) {
    let outside = scratch.dir.path().join("outside");
    let decoy = scratch.dir.path().join("decoy");
    std::os::unix::fs::symlink(&outside, &decoy).unwrap();
    let mnt = scratch.dir.path().join("mnt");
    let seconds = setting("UNIONFS_RACE_SECONDS", 3, 60);
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    // Work through a descriptor of `dir/sub` taken before the swaps start:
    // a path would be resolved again, and once the merged view shows the
    // swapped-in symlink, this process (not the daemon) would follow it.
    let sub_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let sub = nix::fcntl::open(&mnt.join("dir/sub"), sub_flags, Mode::empty()).unwrap();
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if exchange(&swapped, &decoy).is_ok() {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
            // An odd number of swaps leaves the symlink in place; swap back.
            if fs::symlink_metadata(&swapped).is_ok_and(|meta| meta.file_type().is_symlink()) {
                exchange(&swapped, &decoy).unwrap();
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut copied = 0;
    let mut index = 0;
    let at = |name: String, flags: OFlag| {
        nix::fcntl::openat(
            &sub,
            name.as_str(),
            flags | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o644),
        )
    };
    while Instant::now() < deadline {
        index += 1;
        let appended = at(
            format!("f{}", index % files),
            OFlag::O_WRONLY | OFlag::O_APPEND,
        )
        .map(fs::File::from)
        .and_then(|mut file| {
            file.write_all(b"container\n")
                .map_err(|err| nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(0)))
        });
        copied += usize::from(appended.is_ok());
        if let Ok(fd) = at(
            format!("new{index}"),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
        ) {
            let _ = fs::File::from(fd).write_all(b"new\n");
        }
        let victim = format!("f{}", (index + 7) % files);
        let _ = nix::unistd::unlinkat(
            &sub,
            victim.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    (copied, swaps.load(Ordering::Relaxed))
}

/// Lower layer with `dir/sub/f0` .. `f{files-1}`.
fn race_layers(files: usize) -> Scratch {
    let scratch = Scratch::new();
    let lower = scratch.path("lower");
    for index in 0..files {
        fixture::write(&lower, &format!("dir/sub/f{index}"), "lower\n");
    }
    scratch.path("upper");
    scratch.path("work");
    scratch
}

#[test]
fn upper_dir_swapped_for_symlink_during_copy_ups() {
    let files = 200;
    let scratch = race_layers(files);
    let outside = outside(&scratch);
    let before = fingerprint(&outside);
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &options(&scratch, ""),
        &log,
        None,
    );
    // The first copy-up creates upper/dir/sub, which the swapper then
    // exchanges with the symlink again and again.
    fs::write(scratch.dir.path().join("mnt/dir/sub/first"), "first\n").unwrap();

    let swapped = scratch.dir.path().join("upper/dir");
    let (copied, swaps) = race_copy_ups(&scratch, swapped, files);
    println!("upper swap race: {copied} copy-ups, {swaps} swaps");

    assert!(daemon.is_running(), "the daemon died during the race");
    daemon.assert_no_panic();
    assert_eq!(
        fingerprint(&outside),
        before,
        "the daemon changed the directory outside the layers"
    );
    assert!(swaps > 0, "the swapper never swapped");
    daemon.unmount();
}

#[test]
fn work_dir_swapped_for_symlink_during_copy_ups() {
    let files = 200;
    let scratch = race_layers(files);
    let outside = outside(&scratch);
    let before = fingerprint(&outside);
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &options(&scratch, ""),
        &log,
        None,
    );

    let swapped = scratch.dir.path().join("work/work");
    let (copied, swaps) = race_copy_ups(&scratch, swapped, files);
    println!("work dir swap race: {copied} copy-ups, {swaps} swaps");

    assert!(daemon.is_running(), "the daemon died during the race");
    daemon.assert_no_panic();
    assert_eq!(
        fingerprint(&outside),
        before,
        "the daemon changed the directory outside the layers"
    );
    assert!(copied > 0, "no copy-up succeeded");
    daemon.unmount();
}

#[test]
fn lower_dir_swapped_for_symlink_during_reads() {
    let files = 200;
    let scratch = race_layers(files);
    let outside = outside(&scratch);
    let before = fingerprint(&outside);
    let log = scratch.dir.path().join("daemon.log");
    let mut daemon = Daemon::start(
        &scratch.dir.path().join("mnt"),
        &options(&scratch, ""),
        &log,
        None,
    );

    let swapped = scratch.dir.path().join("lower/dir/sub");
    let (copied, swaps) = race_copy_ups(&scratch, swapped, files);
    println!("lower swap race: {copied} copy-ups, {swaps} swaps");
    assert!(daemon.is_running(), "the daemon died during the race");
    daemon.assert_no_panic();
    assert_eq!(
        fingerprint(&outside),
        before,
        "the daemon changed the directory outside the layers"
    );
    daemon.unmount();
}

/// 100 names in the lower layer are hard links to one host file. Writing,
/// truncating, chmod, chown, utimes and setxattr through each name change
/// only that name's copy in the upper layer.
#[test]
fn many_lower_hard_links_to_host_file() {
    let scratch = Scratch::new();
    let outside = outside(&scratch);
    let lower = scratch.path("lower");
    let names = 100;
    for index in 0..names {
        fs::hard_link(outside.join("secret"), lower.join(format!("link{index}"))).unwrap();
    }
    let before = fingerprint(&outside);
    let mount = Mount::unionfs(
        &scratch.dir.path().join("mnt"),
        Some(&scratch.path("upper")),
        Some(&scratch.path("work")),
        std::slice::from_ref(&lower),
        &[],
    );
    let mnt = |index: usize| mount.root.join(format!("link{index}"));

    for index in 0..names {
        let path = mnt(index);
        let result = match index % 6 {
            0 => OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(format!("container {index}\n").as_bytes())),
            1 => OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_len(2)),
            2 => fs::set_permissions(&path, fs::Permissions::from_mode(0o600)),
            3 => std::os::unix::fs::chown(&path, Some(1000), Some(1000)),
            4 => xattr::set(&path, "user.container", b"x"),
            _ => fs::File::open(&path).and_then(|file| {
                file.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1))
            }),
        };
        assert_eq!(errno(result), 0, "change {} through link{index}", index % 6);
    }

    for index in 0..names {
        let content = fs::read_to_string(mnt(index)).unwrap();
        let expected = match index % 6 {
            0 => format!("host data\ncontainer {index}\n"),
            1 => "ho".to_string(),
            _ => "host data\n".to_string(),
        };
        assert_eq!(content, expected, "content of link{index}");
    }
    assert_eq!(
        fingerprint(&outside),
        before,
        "a change through a lower hard link reached the host file"
    );
    assert_eq!(
        fs::metadata(outside.join("secret")).unwrap().nlink(),
        1 + names as u64,
        "the lower layer's links to the host file must stay"
    );
}

/// A lower layer with a character device (1,3, like /dev/null), a setuid
/// root copy of `id`, and a copy of `cat` with `cap_dac_read_search`, each
/// copied up by a metadata change through a mount with `extra` options.
struct Privileged {
    // Fields drop in order: the mount must go before its directories.
    mount: Mount,
    scratch: Scratch,
}

/// Copies `program` from the host's PATH into `dir` as `name`.
fn copy_program(program: &str, dir: &Path, name: &str) {
    let found = String::from_utf8(
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    fs::copy(found.trim(), dir.join(name)).unwrap();
}

impl Privileged {
    fn new(extra: &[&str]) -> Privileged {
        let scratch = Scratch::new();
        // uid 65534 runs programs from the mount inside the scratch dir.
        fs::set_permissions(scratch.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let lower = scratch.path("lower");
        nix::sys::stat::mknod(
            &lower.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        copy_program("id", &lower, "setuid-id");
        fs::set_permissions(lower.join("setuid-id"), fs::Permissions::from_mode(0o4755)).unwrap();
        copy_program("cat", &lower, "cap-cat");
        fixture::run(
            Command::new("setcap")
                .arg("cap_dac_read_search+ep")
                .arg(lower.join("cap-cat")),
        );
        fixture::write(&lower, "unreadable", "root only\n");
        fs::set_permissions(lower.join("unreadable"), fs::Permissions::from_mode(0o600)).unwrap();
        let mount = Mount::unionfs(
            &scratch.dir.path().join("mnt"),
            Some(&scratch.path("upper")),
            Some(&scratch.path("work")),
            &[lower],
            extra,
        );
        // Copy everything up by a change that leaves the privileges alone:
        // new timestamps (user xattrs are not allowed on device nodes).
        let time = nix::sys::time::TimeSpec::new(1_000_000, 0);
        for name in ["null", "setuid-id", "cap-cat"] {
            nix::sys::stat::utimensat(
                AT_FDCWD,
                &mount.root.join(name),
                &time,
                &time,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        Privileged { mount, scratch }
    }

    fn upper(&self, name: &str) -> PathBuf {
        self.scratch.dir.path().join("upper").join(name)
    }

    /// Runs `program ARGS` from the mount as uid and gid 65534.
    fn run_as_nobody(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(self.mount.root.join(program))
            .args(args)
            .output()
            .unwrap()
    }

    fn assert_attributes_kept(&self) {
        let null = fs::symlink_metadata(self.upper("null")).unwrap();
        assert_eq!(
            (null.mode() & libc::S_IFMT, null.rdev()),
            (libc::S_IFCHR, nix::sys::stat::makedev(1, 3)),
            "the device node's copy-up"
        );
        assert_eq!(
            fs::metadata(self.upper("setuid-id")).unwrap().mode() & 0o7777,
            0o4755,
            "the setuid file's copy-up keeps its mode"
        );
        let capability = xattr::get(self.upper("cap-cat"), "security.capability").unwrap();
        let expected = xattr::get(
            self.scratch.dir.path().join("lower/cap-cat"),
            "security.capability",
        )
        .unwrap();
        assert!(capability.is_some(), "the copy-up lost security.capability");
        assert_eq!(
            capability, expected,
            "the copy-up changed security.capability"
        );
    }
}

#[test]
fn privileged_files_inert_by_default() {
    let setup = Privileged::new(&[]);
    setup.assert_attributes_kept();

    assert_eq!(
        errno(fs::File::open(setup.mount.root.join("null"))),
        libc::EACCES,
        "opening a device node through a nodev mount"
    );
    let id = setup.run_as_nobody("setuid-id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "65534",
        "a setuid root file on a nosuid mount must not raise the effective uid"
    );
    let cat = setup.run_as_nobody("cap-cat", &["/proc/self/status"]);
    let status = String::from_utf8_lossy(&cat.stdout);
    let effective = status
        .lines()
        .find(|line| line.starts_with("CapEff:"))
        .unwrap_or_default();
    assert_eq!(
        effective, "CapEff:\t0000000000000000",
        "file capabilities on a nosuid mount must not apply"
    );
    let secret = setup.run_as_nobody(
        "cap-cat",
        &[&setup.mount.root.join("unreadable").display().to_string()],
    );
    assert!(
        !secret.status.success(),
        "the capability read a root-only file"
    );
}

#[test]
fn privileged_files_work_with_dev_suid() {
    let setup = Privileged::new(&["dev,suid"]);
    setup.assert_attributes_kept();

    let mut null = OpenOptions::new()
        .read(true)
        .write(true)
        .open(setup.mount.root.join("null"))
        .expect("a device node opens through a dev mount");
    null.write_all(b"discarded").unwrap();
    let id = setup.run_as_nobody("setuid-id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "a setuid root file on a suid mount raises the effective uid"
    );
    let secret = setup.run_as_nobody(
        "cap-cat",
        &[&setup.mount.root.join("unreadable").display().to_string()],
    );
    assert_eq!(
        String::from_utf8_lossy(&secret.stdout),
        "root only\n",
        "cap_dac_read_search from the copied-up file lets it read a root-only file: {}",
        String::from_utf8_lossy(&secret.stderr)
    );
}

/// Writing to a setuid file or a file with capabilities drops the
/// privilege as kernel overlayfs does (the writer here lacks CAP_FSETID).
#[test]
fn write_drops_privileges_like_kernel() {
    let pair = Pair::new(1, |_, root| {
        copy_program("id", root, "setuid-id");
        fs::set_permissions(root.join("setuid-id"), fs::Permissions::from_mode(0o4777)).unwrap();
        copy_program("cat", root, "cap-cat");
        fs::set_permissions(root.join("cap-cat"), fs::Permissions::from_mode(0o777)).unwrap();
        fixture::run(
            Command::new("setcap")
                .arg("cap_dac_read_search+ep")
                .arg(root.join("cap-cat")),
        );
        fixture::age(root);
    });
    // uid 65534 writes through both mounts inside the pair's scratch dir.
    for root in [&pair.union.root, &pair.kernel.root] {
        let scratch = root.parent().unwrap().parent().unwrap();
        fs::set_permissions(scratch, fs::Permissions::from_mode(0o755)).unwrap();
    }
    pair.both("privileges after a write by uid 65534", |root| {
        let mut result = Vec::new();
        for name in ["setuid-id", "cap-cat"] {
            let path = root.join(name);
            let status = Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .args(["sh", "-c", "printf x >> \"$1\"", "sh"])
                .arg(&path)
                .status()
                .unwrap();
            let mode = fs::metadata(&path).unwrap().mode() & 0o7777;
            let capability = xattr::get(&path, "security.capability").unwrap().is_some();
            result.push((name, status.success(), mode, capability));
        }
        result
    });
    let upper = pair.upper(Kind::Unionfs);
    assert!(upper.join("setuid-id").exists(), "the write copied up");
    pair.finish();
}

/// Names kernel overlayfs and AUFS reserve, planted in the lower layers,
/// never show through the mount, and none can be created, renamed onto,
/// renamed from, linked, read or have its xattrs read.
#[test]
fn reserved_names_in_lower_layers_hidden() {
    let scratch = Scratch::new();
    let lower = scratch.path("lower");
    fixture::write(&lower, "visible", "visible\n");
    for dir in ["", "sub/"] {
        fixture::write(&lower, &format!("{dir}.wh..wh..opq"), "");
        fixture::write(&lower, &format!("{dir}.wh..wh.plnk"), "");
        fixture::write(&lower, &format!("{dir}.wh..wh.orph"), "");
        fixture::write(&lower, &format!("{dir}.wh.planted"), "planted whiteout\n");
        fixture::mkdir(&lower, &format!("{dir}.wh..wh.unionfs-work/work"));
        fixture::write(&lower, &format!("{dir}keep"), "kept\n");
    }
    fixture::mkdir(&lower, "opaque");
    for (name, value) in [
        ("trusted.overlay.opaque", &b"y"[..]),
        ("trusted.overlay.redirect", b"/elsewhere"),
        ("trusted.overlay.origin", b"\x00\xfb"),
        ("user.overlay.opaque", b"y"),
        ("user.kept", b"kept"),
    ] {
        xattr::set(lower.join("opaque"), name, value).unwrap();
    }
    let mount = Mount::unionfs(
        &scratch.dir.path().join("mnt"),
        Some(&scratch.path("upper")),
        Some(&scratch.path("work")),
        std::slice::from_ref(&lower),
        &[],
    );
    let root = &mount.root;

    let mut listed: Vec<OsString> = support::names_in(root);
    listed.retain(|name| name != "sub" && name != "opaque");
    assert_eq!(listed, [OsString::from("keep"), OsString::from("visible")]);
    assert_eq!(
        support::names_in(&root.join("sub")),
        [OsString::from("keep")],
        "reserved names inside a subdirectory"
    );

    let reserved = [
        ".wh..wh..opq",
        ".wh..wh.plnk",
        ".wh..wh.orph",
        ".wh.planted",
        ".wh..wh.unionfs-work",
    ];
    for dir in ["", "sub/"] {
        for name in reserved {
            let path = root.join(format!("{dir}{name}"));
            let shown = format!("{dir}{name}");
            assert_eq!(
                errno(fs::symlink_metadata(&path)),
                libc::ENOENT,
                "stat {shown}"
            );
            assert_eq!(errno(fs::read(&path)), libc::ENOENT, "read {shown}");
            assert_eq!(errno(xattr::list(&path)), libc::ENOENT, "listxattr {shown}");
            assert_eq!(
                errno(fs::rename(&path, root.join("stolen"))),
                libc::ENOENT,
                "rename from {shown}"
            );
            assert_eq!(
                errno(fs::rename(root.join(format!("{dir}keep")), &path)),
                libc::EPERM,
                "rename onto {shown}"
            );
            assert_eq!(
                errno(fs::hard_link(root.join(format!("{dir}keep")), &path)),
                libc::EPERM,
                "link to {shown}"
            );
            assert_eq!(errno(fs::write(&path, "x")), libc::EPERM, "create {shown}");
            assert_eq!(
                errno(fs::remove_file(&path)),
                libc::ENOENT,
                "unlink {shown}"
            );
        }
    }
    let opaque = root.join("opaque");
    let mut names: Vec<String> = xattr::list(&opaque)
        .unwrap()
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["user.kept"], "listxattr shows overlay xattrs");
    for name in [
        "trusted.overlay.opaque",
        "trusted.overlay.redirect",
        "trusted.overlay.origin",
        "user.overlay.opaque",
    ] {
        assert_eq!(
            xattr::get(&opaque, name).unwrap(),
            None,
            "getxattr {name} through the mount"
        );
        assert_eq!(
            errno(xattr::set(&opaque, name, b"n")),
            libc::EPERM,
            "setxattr {name}"
        );
        let removed = errno(xattr::remove(&opaque, name));
        assert!(
            removed == libc::EPERM || removed == libc::ENODATA,
            "removexattr {name} gave errno {removed}"
        );
    }
    assert_eq!(
        fs::read_to_string(lower.join(".wh.planted")).unwrap(),
        "planted whiteout\n",
        "the lower layer is unchanged"
    );
    let upper: Vec<OsString> = support::names_in(&scratch.dir.path().join("upper"));
    assert!(
        upper
            .iter()
            .all(|name| !name.as_encoded_bytes().starts_with(b".wh.")),
        "the attempts wrote reserved names to the upper layer: {upper:?}"
    );
}
