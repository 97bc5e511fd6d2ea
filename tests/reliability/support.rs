// Shared helpers: each test file uses a different subset of them.
#![allow(dead_code)]

//! Helpers for the reliability tests: a unionfs daemon run in the
//! foreground under the test's control (so it can be killed, limited and
//! its log read), tmpfs and loop-device guards, kernel overlayfs views of an
//! upper layer, and simple content trees to compare views.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixture::{is_mounted, run, unionfs_bin, wait_for};

/// Maximum time a daemon may take to mount, or to exit after an unmount.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

/// Returns true when `UNIONFS_SOAK=1` requests the long runs.
pub fn soak() -> bool {
    std::env::var("UNIONFS_SOAK").is_ok_and(|value| value == "1")
}

/// Reads a count or duration from environment variable `name`; without
/// it, returns `ci`, or `soak_value` when `UNIONFS_SOAK=1`.
pub fn setting(name: &str, ci: u64, soak_value: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("invalid {name}={text:?}: expected a whole number")),
        Err(_) if soak() => soak_value,
        Err(_) => ci,
    }
}

/// Returns the seed for a random test: `UNIONFS_SEED`, else the clock. It is
/// printed, so a failing run can be repeated.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("UNIONFS_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{test}: UNIONFS_SEED={seed}");
    seed
}

/// A unionfs daemon started with `-f` as the test's own child, its stderr
/// (which carries its log and any panic message) written to a file.
/// Dropping it detaches the mount and kills the daemon by pid.
pub struct Daemon {
    pub child: Child,
    pub mountpoint: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `unionfs -f -v -o OPTIONS MOUNTPOINT`, optionally under
    /// `prlimit --nofile=N`, and waits until the mount is live.
    pub fn start(mountpoint: &Path, options: &str, log: &Path, nofile: Option<u64>) -> Daemon {
        fs::create_dir_all(mountpoint).unwrap();
        let stderr = fs::File::create(log).unwrap();
        let mut command = match nofile {
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}"))
                    .arg("--")
                    .arg(unionfs_bin());
                command
            }
            None => Command::new(unionfs_bin()),
        };
        command
            .args(["-f", "-vv", "-o", options])
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let mut daemon = Daemon {
            child,
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
        };
        let live = wait_for(DAEMON_TIMEOUT, || {
            is_mounted(mountpoint) || !daemon.is_running()
        });
        assert!(
            live && is_mounted(mountpoint),
            "unionfs -f -o {options} {} did not mount:\n{}",
            mountpoint.display(),
            daemon.log_text()
        );
        daemon
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Returns true while the daemon process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Asserts the daemon's log contains no panic message.
    pub fn assert_no_panic(&self) {
        let log = self.log_text();
        let panics: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("panicked"))
            .collect();
        assert!(
            panics.is_empty(),
            "the daemon panicked (log {}):\n{}",
            self.log.display(),
            panics.join("\n")
        );
    }

    /// Kills the daemon with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Unmounts (lazily if busy or dead) and waits for the daemon to exit.
    pub fn unmount(&mut self) {
        if is_mounted(&self.mountpoint) {
            let status = Command::new("umount").arg(&self.mountpoint).status();
            if !status.is_ok_and(|status| status.success()) {
                detach(&self.mountpoint);
            }
        }
        let exited = wait_for(DAEMON_TIMEOUT, || !self.is_running());
        if !exited {
            self.kill();
            panic!(
                "the daemon (pid {}) did not exit after the unmount",
                self.pid()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        detach(&self.mountpoint);
        if self.is_running() {
            self.kill();
        }
    }
}

/// Detaches every mount stacked on `path`.
pub fn detach(path: &Path) {
    while is_mounted(path) {
        let status = Command::new("umount").arg("-l").arg(path).status();
        if !status.is_ok_and(|status| status.success()) {
            break;
        }
    }
}

/// A filesystem mounted by the test, detached on drop.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

/// Mounts a tmpfs with `options` at `path`.
pub fn tmpfs(path: &Path, options: &str) -> Mounted {
    fs::create_dir_all(path).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(path));
    Mounted(path.to_path_buf())
}

/// An ext4 filesystem in an image file on a loop device, mounted at a path.
/// Drop unmounts it and detaches the loop device.
pub struct LoopExt4 {
    pub mount: Option<Mounted>,
    pub device: String,
}

impl LoopExt4 {
    /// Creates a `size_mib` MiB ext4 image at `image` and mounts it at `path`.
    pub fn new(image: &Path, size_mib: u64, path: &Path) -> LoopExt4 {
        let file = fs::File::create(image).unwrap();
        file.set_len(size_mib << 20).unwrap();
        drop(file);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image))
        .trim()
        .to_string();
        let mut guard = LoopExt4 {
            mount: None,
            device,
        };
        fs::create_dir_all(path).unwrap();
        run(Command::new("mount").arg(&guard.device).arg(path));
        guard.mount = Some(Mounted(path.to_path_buf()));
        guard
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        drop(self.mount.take());
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// What a name shows in a view: enough to tell a half-copied file from a
/// whole one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(OsString),
    /// Anything else: the file type bits and the device number.
    Special(u32, u64),
}

/// A view: relative path (bytes) to what it shows.
pub type View = BTreeMap<Vec<u8>, Node>;

/// Reads every name under `root` with its content, without following
/// symlinks.
pub fn read_view(root: &Path) -> std::io::Result<View> {
    let mut view = View::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.map_err(std::io::Error::from)?;
        let relative = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let meta = fs::symlink_metadata(entry.path())?;
        let kind = meta.file_type();
        let node = if kind.is_dir() {
            Node::Dir
        } else if kind.is_file() {
            Node::File(Arc::new(fs::read(entry.path())?))
        } else if kind.is_symlink() {
            Node::Symlink(fs::read_link(entry.path())?.into_os_string())
        } else {
            let _ = kind.is_char_device();
            Node::Special(meta.mode() & libc::S_IFMT, meta.rdev())
        };
        view.insert(relative, node);
    }
    Ok(view)
}

/// Describes the first difference between two views, or `None`.
pub fn difference(got: &View, expected: &View) -> Option<String> {
    for (name, node) in expected {
        match got.get(name) {
            None => return Some(format!("{:?} is missing", show(name))),
            Some(found) if found != node => {
                return Some(format!(
                    "{:?} differs: got {}, expected {}",
                    show(name),
                    describe(found),
                    describe(node)
                ));
            }
            Some(_) => {}
        }
    }
    got.keys()
        .find(|name| !expected.contains_key(*name))
        .map(|name| format!("{:?} is unexpected", show(name)))
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn describe(node: &Node) -> String {
    match node {
        Node::File(content) => format!(
            "a file of {} bytes starting {:?}",
            content.len(),
            String::from_utf8_lossy(&content[..content.len().min(24)])
        ),
        other => format!("{other:?}"),
    }
}

/// Mounts kernel overlayfs read-only over `upper` and `lowers` (topmost
/// first) at `mountpoint`, reads the view and unmounts. Read-only, so it
/// needs no work dir and leaves `upper` unchanged. Returns the mount(8)
/// error text when the kernel rejects the layers.
pub fn kernel_view(upper: &Path, lowers: &[PathBuf], mountpoint: &Path) -> Result<View, String> {
    fs::create_dir_all(mountpoint).unwrap();
    let mut layers = vec![upper.display().to_string()];
    layers.extend(lowers.iter().map(|path| path.display().to_string()));
    let output = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", layers.join(":")))
        .arg(mountpoint)
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let _guard = Mounted(mountpoint.to_path_buf());
    read_view(mountpoint).map_err(|err| format!("cannot read the kernel's view: {err}"))
}

/// Lists the names in directory `dir`; empty when it is missing.
pub fn names_in(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map(|entries| entries.map(|entry| entry.unwrap().file_name()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `work` on a thread and waits for it up to `timeout`; `None` means
/// it did not finish (a hang), and the thread is left running.
pub fn within<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver.recv_timeout(timeout).ok()
}

/// Aborts the FUSE connection of the mount at `path` through
/// /sys/fs/fuse/connections, releasing every process blocked on it. The
/// connection is found in /proc/self/mountinfo, because a stat of a hung
/// mount would hang too.
pub fn abort_connection(path: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = path.to_string_lossy().replace(' ', "\\040");
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) != Some(&target.as_str()) {
            continue;
        }
        if let Some((_, minor)) = fields[2].split_once(':') {
            let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
        }
    }
}

/// Returns the number of descriptors process `pid` has open.
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

/// Waits until `pid` has exited or `timeout` passed; true when it exited.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
