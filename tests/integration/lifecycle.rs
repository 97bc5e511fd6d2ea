//! Daemon lifecycle tests. The parent returns once the mount is live, and
//! the detached daemon closes its caller's pipes and exits after any kind of
//! unmount. The foreground form unmounts on signals, logs go where asked,
//! and the default work dir is placed, hidden and swept as documented.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::fixture::{
    self, Mount, Scratch, daemon_pid, errno, is_mounted, pid_file, unionfs_bin, wait_for,
};

/// Maximum time a daemon may take to start, or to exit after an unmount.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the default work dir when the upper layer is the root of its
/// filesystem, so that no sibling directory can share its filesystem.
const INNER_WORKDIR_NAME: &str = ".wh..wh.unionfs-work";

/// A process the test started, killed by pid on drop if still running.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Unmounts `path` lazily on drop if something is still mounted there.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        while is_mounted(&self.0) {
            let status = Command::new("umount").arg("-l").arg(&self.0).status();
            if !status.is_ok_and(|status| status.success()) {
                break;
            }
        }
    }
}

/// True while process `pid` exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z")
}

/// Kills the daemon `pid` on drop if it is still running, so a failing
/// test does not leave it behind.
struct Daemon(i32);

impl Drop for Daemon {
    fn drop(&mut self) {
        if is_running(self.0) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Waits up to `timeout` for `child` to exit; returns its status, or `None`
/// if it is still running.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `stream` to its end in a thread; returns the text, or `None` if
/// the end does not come within `timeout`.
fn read_to_end(mut stream: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let _ = sender.send(text);
    });
    receiver.recv_timeout(timeout).ok()
}

/// Creates a scratch dir with layers `upper` and `lower` and an empty mountpoint `mnt`.
fn layers() -> Scratch {
    let scratch = Scratch::new();
    fixture::write(&scratch.path("upper"), "top.txt", "upper\n");
    fixture::write(&scratch.path("lower"), "bottom.txt", "lower\n");
    fixture::write(&scratch.path("lower"), "dir/deep.txt", "deep\n");
    scratch.path("mnt");
    scratch
}

fn dir(scratch: &Scratch, name: &str) -> PathBuf {
    scratch.dir.path().join(name)
}

fn layer_list(scratch: &Scratch) -> String {
    format!(
        "{}:{}",
        dir(scratch, "upper").display(),
        dir(scratch, "lower").display()
    )
}

/// Runs `unionfs umount ARGS`; returns its status and stderr.
fn umount(args: &[&str], mountpoint: &Path) -> (ExitStatus, String) {
    let output = Command::new(unionfs_bin())
        .arg("umount")
        .args(args)
        .arg(mountpoint)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status, stderr)
}

#[test]
fn mount_live_on_return() {
    let scratch = layers();
    let mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &layer_list(&scratch), &[]);

    let content = fs::read_to_string(mount.root.join("dir/deep.txt"));
    assert_eq!(
        content.ok(),
        fs::read_to_string(dir(&scratch, "lower/dir/deep.txt")).ok(),
        "a file must be readable right after the command returns"
    );
    assert!(is_mounted(&mount.root), "the mount must be listed");
}

#[test]
fn podman_stderr_reaches_eof() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _unmount = Unmount(mnt.clone());
    let options = format!(
        "lowerdir={},upperdir={},workdir={},,volatile",
        dir(&scratch, "lower").display(),
        dir(&scratch, "upper").display(),
        dir(&scratch, "work").display()
    );
    let mut child = Command::new(unionfs_bin())
        .arg("-o")
        .arg(&options)
        .arg(&mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = Process(child);

    let status = wait_exit(&mut child.0, DAEMON_TIMEOUT);
    assert!(
        status.is_some_and(|status| status.success()),
        "the command must exit 0, got {status:?}"
    );
    let _daemon = Daemon(daemon_pid(&mnt));
    let stderr = read_to_end(stderr, Duration::from_secs(5));
    assert_eq!(
        stderr.as_deref(),
        Some(""),
        "stderr must reach EOF, empty, right after the command exits"
    );
    let stdout = read_to_end(stdout, Duration::from_secs(5));
    assert_eq!(
        stdout.as_deref(),
        Some(""),
        "stdout must reach EOF, empty, right after the command exits"
    );
    let content = fs::read_to_string(mnt.join("bottom.txt"));
    assert_eq!(
        content.ok(),
        fs::read_to_string(dir(&scratch, "lower/bottom.txt")).ok(),
        "the daemon must keep serving"
    );
}

#[test]
fn daemon_exits_after_fusermount() {
    let scratch = layers();
    let mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &layer_list(&scratch), &[]);
    let pid = daemon_pid(&mount.root);
    let pid_path = pid_file(&mount.root);
    let _daemon = Daemon(pid);

    fixture::run(Command::new("fusermount3").arg("-u").arg(&mount.root));
    assert!(!is_mounted(&mount.root), "fusermount3 -u must unmount");
    assert!(
        wait_for(DAEMON_TIMEOUT, || !is_running(pid)),
        "the daemon (pid {pid}) must exit after fusermount3 -u"
    );
    // Another test's mount may reuse the device number, and so the path,
    // at once: only a file still naming this daemon is a leftover.
    let names_daemon = fs::read_to_string(&pid_path)
        .is_ok_and(|content| content.split_whitespace().next() == Some(pid.to_string().as_str()));
    assert!(
        !names_daemon,
        "the daemon must remove its pid file {}",
        pid_path.display()
    );
}

#[test]
fn umount_waits_for_daemon() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _mount = Mount::unionfs_layers(&mnt, &layer_list(&scratch), &[]);
    let pid = daemon_pid(&mnt);
    let _daemon = Daemon(pid);

    let (status, stderr) = umount(&[], &mnt);
    let running = is_running(pid);
    assert!(status.success(), "unionfs umount failed: {stderr}");
    assert!(
        !running,
        "the daemon (pid {pid}) must have exited when unionfs umount returns"
    );
    assert!(!is_mounted(&mnt), "unionfs umount must unmount");
}

#[test]
fn umount_busy_then_lazy() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _mount = Mount::unionfs_layers(&mnt, &layer_list(&scratch), &[]);
    let pid = daemon_pid(&mnt);
    let _daemon = Daemon(pid);
    let mut user = Process(
        Command::new("sleep")
            .arg("600")
            .current_dir(mnt.join("dir"))
            .spawn()
            .unwrap(),
    );

    let (status, stderr) = umount(&[], &mnt);
    assert!(!status.success(), "unmounting a busy mount must fail");
    assert!(stderr.starts_with("unionfs: "), "message: {stderr:?}");
    assert!(stderr.contains("busy"), "message must say busy: {stderr:?}");
    assert!(
        stderr.contains("--lazy"),
        "message must suggest --lazy: {stderr:?}"
    );
    assert!(is_mounted(&mnt), "a failed unmount must keep the mount");

    let mut lazy = Process(
        Command::new(unionfs_bin())
            .args(["umount", "--lazy"])
            .arg(&mnt)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = wait_exit(&mut lazy.0, Duration::from_secs(5));
    assert!(!is_mounted(&mnt), "--lazy must detach the busy mount");
    assert!(
        status.is_some(),
        "unionfs umount --lazy must return once the mount is detached, \
         not wait for the daemon while the mount is in use"
    );
    let mut stderr = String::new();
    let _ = lazy.0.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(
        status.is_some_and(|status| status.success()),
        "unionfs umount --lazy must succeed, got {status:?}: {stderr}"
    );

    user.0.kill().unwrap();
    user.0.wait().unwrap();
    assert!(
        wait_for(DAEMON_TIMEOUT, || !is_running(pid)),
        "the daemon (pid {pid}) must exit once the last user is gone"
    );
}

#[test]
fn umount_not_a_mount() {
    let scratch = layers();
    let plain = dir(&scratch, "mnt");

    let (status, stderr) = umount(&[], &plain);
    assert!(!status.success(), "unmounting a plain dir must fail");
    assert!(stderr.starts_with("unionfs: "), "message: {stderr:?}");
    assert!(
        stderr.contains(&plain.display().to_string()),
        "message must name the path: {stderr:?}"
    );
    assert!(
        stderr.contains("not a mountpoint"),
        "message must say not a mountpoint: {stderr:?}"
    );
}

/// Starts `unionfs mount -f` with `extra` arguments and waits for the mount.
fn foreground(scratch: &Scratch, extra: &[&str], stderr: Stdio) -> Process {
    let mnt = dir(scratch, "mnt");
    let child = Command::new(unionfs_bin())
        .arg("mount")
        .arg("-f")
        .args(extra)
        .arg(layer_list(scratch))
        .arg(&mnt)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut process = Process(child);
    let mounted = wait_for(DAEMON_TIMEOUT, || is_mounted(&mnt));
    assert!(mounted, "unionfs mount -f must mount {}", mnt.display());
    assert!(
        matches!(process.0.try_wait(), Ok(None)),
        "unionfs mount -f must stay in the foreground"
    );
    process
}

/// Mounts in the foreground, sends `signal` and checks a clean exit.
fn assert_signal_unmounts(signal: Signal) {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _unmount = Unmount(mnt.clone());
    let mut process = foreground(&scratch, &[], Stdio::null());
    let content = fs::read_to_string(mnt.join("top.txt"));
    assert_eq!(
        content.ok(),
        fs::read_to_string(dir(&scratch, "upper/top.txt")).ok(),
        "the foreground mount must serve"
    );

    kill(Pid::from_raw(process.0.id() as i32), signal).unwrap();
    let status = wait_exit(&mut process.0, DAEMON_TIMEOUT);
    assert!(
        status.is_some(),
        "unionfs mount -f must exit after {signal}"
    );
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "unionfs mount -f must exit 0 after {signal}, got {status:?}"
    );
    assert!(!is_mounted(&mnt), "{signal} must unmount");
}

#[test]
fn foreground_sigterm_unmounts() {
    assert_signal_unmounts(Signal::SIGTERM);
}

#[test]
fn foreground_sigint_unmounts() {
    assert_signal_unmounts(Signal::SIGINT);
}

#[test]
fn verbose_foreground_logs_stderr() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _unmount = Unmount(mnt.clone());
    let mut process = foreground(&scratch, &["-v"], Stdio::piped());
    let stderr = process.0.stderr.take().unwrap();

    kill(Pid::from_raw(process.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut process.0, DAEMON_TIMEOUT);
    assert!(status.is_some(), "unionfs mount -f must exit after SIGTERM");
    let log = read_to_end(stderr, Duration::from_secs(5)).unwrap_or_default();
    let mounted = log
        .lines()
        .find(|line| line.contains("mounted") && line.contains(&mnt.display().to_string()));
    assert!(
        mounted.is_some(),
        "-v -f must log the mount to stderr: {log:?}"
    );
    assert!(
        mounted.is_some_and(|line| line.contains("INFO")),
        "the mount line must be at level INFO: {log:?}"
    );
}

#[test]
fn detached_log_file() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let log_path = dir(&scratch, "unionfs.log");
    let _unmount = Unmount(mnt.clone());
    let output = Command::new(unionfs_bin())
        .args(["mount", "-v", "--log-file"])
        .arg(&log_path)
        .arg(layer_list(&scratch))
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(output.status.success(), "mount failed: {output:?}");
    let pid = daemon_pid(&mnt);
    let _daemon = Daemon(pid);

    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.lines()
            .any(|line| line.contains("mounted") && line.contains(&mnt.display().to_string())),
        "the log file must record the mount: {log:?}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("mounted"),
        "detached, the log must not go to stderr: {output:?}"
    );

    let (status, stderr) = umount(&[], &mnt);
    assert!(status.success(), "unionfs umount failed: {stderr}");
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.lines()
            .any(|line| line.contains("unmounted") && line.contains(&mnt.display().to_string())),
        "the log file must record the unmount: {log:?}"
    );
}

#[test]
fn default_workdir_beside_upper() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _unmount = Unmount(mnt.clone());
    fixture::run(
        Command::new(unionfs_bin())
            .args(["mount", "./upper:./lower"])
            .arg(&mnt)
            .current_dir(scratch.dir.path()),
    );

    let work = dir(&scratch, ".upper.unionfs-work");
    assert!(work.is_dir(), "the work dir must be {}", work.display());
    assert!(
        !dir(&scratch, "upper").join(INNER_WORKDIR_NAME).exists(),
        "the work dir must not be inside the upper layer"
    );

    fs::write(mnt.join("new.txt"), "new\n").unwrap();
    fs::write(mnt.join("bottom.txt"), "changed\n").unwrap();
    let started = fixture::now();
    let kernel = Mount::overlay(
        &dir(&scratch, "kernel"),
        None,
        None,
        &[dir(&scratch, "upper"), dir(&scratch, "lower")],
    );
    let union = crate::snapshot::tree(&mnt, started);
    let expected = crate::snapshot::tree(&kernel.root, started);
    crate::snapshot::assert_same(&union, &expected, "merged view");
}

#[test]
fn default_workdir_fs_root() {
    let scratch = layers();
    let upper = dir(&scratch, "root-fs");
    fs::create_dir(&upper).unwrap();
    fixture::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&upper),
    );
    let _tmpfs = Unmount(upper.clone());
    fixture::write(&upper, "top.txt", "upper\n");
    let list = format!("{}:{}", upper.display(), dir(&scratch, "lower").display());
    let mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &[]);

    let work = upper.join(INNER_WORKDIR_NAME);
    assert!(work.is_dir(), "the work dir must be {}", work.display());
    assert!(
        !dir(&scratch, ".root-fs.unionfs-work").exists(),
        "the work dir must not be beside a filesystem root"
    );

    let listed: Vec<_> = fs::read_dir(&mount.root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(
        !listed.iter().any(|name| name == INNER_WORKDIR_NAME),
        "readdir must not list the work dir: {listed:?}"
    );
    let hidden = mount.root.join(INNER_WORKDIR_NAME);
    assert_eq!(
        errno(fs::symlink_metadata(&hidden)),
        libc::ENOENT,
        "stat of the work dir name"
    );
    assert_eq!(
        errno(fs::create_dir(&hidden)),
        libc::EPERM,
        "mkdir of the work dir name"
    );
    assert_eq!(
        errno(fs::write(&hidden, "x")),
        libc::EPERM,
        "creating a file with the work dir name"
    );
    assert!(
        fs::read_dir(&work).is_ok(),
        "the real work dir must survive the attempts"
    );
}

#[test]
fn leftovers_swept_on_mount() {
    let scratch = layers();
    let work = scratch.path("work");
    let staging = work.join("work");
    fixture::write(&staging, "#1.0", "half a copy-up\n");
    fixture::write(&staging, "#1.1/sub/file", "half a directory\n");
    fixture::write(&scratch.path("keep"), "kept.txt", "must survive\n");
    fixture::symlink(
        &staging,
        "#1.2",
        &dir(&scratch, "keep").display().to_string(),
    );
    fixture::symlink(&staging, "#1.1/sub/link", "../../../keep/kept.txt");
    fixture::mkdir(&staging, "#1.3");
    fs::set_permissions(
        staging.join("#1.3"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();

    let mount = Mount::unionfs(
        &dir(&scratch, "mnt"),
        Some(&dir(&scratch, "upper")),
        Some(&work),
        &[dir(&scratch, "lower")],
        &[],
    );

    let left: Vec<_> = fs::read_dir(&staging)
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        staging.is_dir(),
        "the staging dir {} must exist",
        staging.display()
    );
    assert!(left.is_empty(), "leftovers must be swept: {left:?}");
    assert_eq!(
        fs::read_to_string(dir(&scratch, "keep/kept.txt"))
            .ok()
            .as_deref(),
        Some("must survive\n"),
        "sweeping must not follow symlinks"
    );
    assert!(is_mounted(&mount.root), "the mount must be live");
}

#[test]
fn killed_daemon_remount() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _first = Mount::unionfs_layers(&mnt, &layer_list(&scratch), &[]);
    let pid = daemon_pid(&mnt);
    let _daemon = Daemon(pid);

    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    assert!(
        wait_for(DAEMON_TIMEOUT, || !is_running(pid)),
        "the daemon (pid {pid}) must die on SIGKILL"
    );
    let (status, stderr) = umount(&[], &mnt);
    assert!(
        status.success(),
        "unionfs umount of a dead mount must succeed: {stderr}"
    );
    assert!(!is_mounted(&mnt), "the dead mount must be gone");

    let second = Mount::unionfs_layers(&mnt, &layer_list(&scratch), &[]);
    let content = fs::read_to_string(second.root.join("bottom.txt"));
    assert_eq!(
        content.ok(),
        fs::read_to_string(dir(&scratch, "lower/bottom.txt")).ok(),
        "the mount after a killed daemon must serve"
    );
}
