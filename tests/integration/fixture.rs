// Shared helpers: each test file uses a different subset of them.
#![allow(dead_code)]

//! Test fixture: layer stacks in temporary directories, real FUSE mounts of
//! unionfs, and kernel overlayfs mounts of identical copies as the oracle.
//!
//! Every mount is unmounted when its guard drops, also when a test fails.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::snapshot::{self, Tree};

/// Path of the unionfs binary under test.
pub fn unionfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionfs")
}

/// Runs a command and returns its output; panics with stderr on failure.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Which filesystem serves a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unionfs,
    Overlay,
}

/// A mounted merged view, unmounted on drop.
pub struct Mount {
    pub kind: Kind,
    pub root: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mounts unionfs with upper layer `upper` (if any) over `lowers`
    /// (topmost first), passing `extra` as more `-o` options.
    pub fn unionfs(
        root: &Path,
        upper: Option<&Path>,
        work: Option<&Path>,
        lowers: &[PathBuf],
        extra: &[&str],
    ) -> Mount {
        std::fs::create_dir_all(root).unwrap();
        let mut options = vec![format!("lowerdir={}", join(lowers))];
        if let Some(upper) = upper {
            options.push(format!("upperdir={}", upper.display()));
        }
        if let Some(work) = work {
            options.push(format!("workdir={}", work.display()));
        }
        options.extend(extra.iter().map(|opt| opt.to_string()));
        run(Command::new(unionfs_bin())
            .arg("-o")
            .arg(options.join(","))
            .arg(root));
        Mount {
            kind: Kind::Unionfs,
            root: root.to_path_buf(),
            mounted: true,
        }
    }

    /// Mounts unionfs with the AUFS-style layer list `layers`.
    pub fn unionfs_layers(root: &Path, layers: &str, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(root).unwrap();
        let mut command = Command::new(unionfs_bin());
        command.arg("mount").arg(layers).arg(root);
        for opt in extra {
            command.arg("-o").arg(opt);
        }
        run(&mut command);
        Mount {
            kind: Kind::Unionfs,
            root: root.to_path_buf(),
            mounted: true,
        }
    }

    /// Mounts kernel overlayfs with the same arguments.
    pub fn overlay(
        root: &Path,
        upper: Option<&Path>,
        work: Option<&Path>,
        lowers: &[PathBuf],
    ) -> Mount {
        std::fs::create_dir_all(root).unwrap();
        let mut options = format!("lowerdir={}", join(lowers));
        if let (Some(upper), Some(work)) = (upper, work) {
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                upper.display(),
                work.display()
            ));
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(root));
        Mount {
            kind: Kind::Overlay,
            root: root.to_path_buf(),
            mounted: true,
        }
    }

    /// Unmounts now; for unionfs, waits for the daemon to exit.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let command = || match self.kind {
            Kind::Unionfs => {
                let mut command = Command::new(unionfs_bin());
                command.arg("umount").arg(&self.root);
                command
            }
            Kind::Overlay => {
                let mut command = Command::new("umount");
                command.arg(&self.root);
                command
            }
        };
        // A process another test forks at this moment may hold a reference
        // into the mount for a few milliseconds: retry a busy unmount.
        for _ in 0..100 {
            let output = command().output().unwrap();
            let busy = String::from_utf8_lossy(&output.stderr).contains("busy");
            if !busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_mounted(&self.root) {
            run(&mut command());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            // Lazy, so a failing test never leaves a busy mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string().replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A temporary directory for one test.
pub struct Scratch {
    pub dir: TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("unionfs-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
}

/// The moment before any layer of a test was built: timestamps older than
/// this came from the layers, newer ones from the test's operations.
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// unionfs and kernel overlayfs on identical copies of one layer stack.
pub struct Pair {
    pub union: Mount,
    pub kernel: Mount,
    scratch: Scratch,
    /// The lower layers under unionfs, topmost first.
    union_lowers: Vec<PathBuf>,
    /// The lower layers built for unionfs, each with an untouched copy to
    /// compare it with at the end.
    built_lowers: Vec<(PathBuf, PathBuf)>,
    pub started: SystemTime,
}

/// How to build a [`Pair`].
pub struct Setup<'a> {
    /// Number of lower layers to build.
    pub lowers: usize,
    /// Fills lower layer `index` (0 is the topmost lower layer) of one side.
    pub fill: &'a dyn Fn(Kind, usize, &Path),
    /// Fills the upper layer of one side before mounting.
    pub upper_fill: &'a dyn Fn(&Path),
    /// Existing read-only layers placed under the built ones on both sides.
    pub shared_lowers: Vec<PathBuf>,
    /// More `-o` options for unionfs.
    pub union_options: &'a [&'a str],
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            lowers: 0,
            fill: &|_, _, _| {},
            upper_fill: &|_| {},
            shared_lowers: Vec::new(),
            union_options: &[],
        }
    }
}

impl Pair {
    /// Builds `lowers` lower layers with `fill(index, path)` (index 0 is the
    /// topmost lower layer) twice, and mounts each copy writable: one under
    /// unionfs, one under kernel overlayfs.
    pub fn new(lowers: usize, fill: impl Fn(usize, &Path)) -> Pair {
        Pair::build(Setup {
            lowers,
            fill: &|_, index, path| fill(index, path),
            ..Setup::default()
        })
    }

    /// Like [`Pair::new`], also filling both upper layers with `upper_fill`.
    pub fn with_upper(
        lowers: usize,
        fill: impl Fn(usize, &Path),
        upper_fill: impl Fn(&Path),
    ) -> Pair {
        Pair::build(Setup {
            lowers,
            fill: &|_, index, path| fill(index, path),
            upper_fill: &upper_fill,
            ..Setup::default()
        })
    }

    /// Mounts both sides over the same existing read-only `lowers`.
    pub fn over(lowers: &[PathBuf]) -> Pair {
        Pair::build(Setup {
            shared_lowers: lowers.to_vec(),
            ..Setup::default()
        })
    }

    /// Builds and mounts both sides as `setup` says.
    pub fn build(setup: Setup<'_>) -> Pair {
        let scratch = Scratch::new();
        let started = now();
        let mut mounts = Vec::new();
        let mut union_lowers = Vec::new();
        for kind in [Kind::Unionfs, Kind::Overlay] {
            let side = side_name(kind);
            let mut lower_paths: Vec<PathBuf> = (0..setup.lowers)
                .map(|i| scratch.path(&format!("{side}/lower{i}")))
                .collect();
            for (index, path) in lower_paths.iter().enumerate() {
                (setup.fill)(kind, index, path);
            }
            lower_paths.extend(setup.shared_lowers.iter().cloned());
            let upper = scratch.path(&format!("{side}/upper"));
            (setup.upper_fill)(&upper);
            let work = scratch.path(&format!("{side}/work"));
            let root = scratch.dir.path().join(format!("{side}/merged"));
            mounts.push(match kind {
                Kind::Unionfs => {
                    // Kernel overlayfs allows devices and setuid by default;
                    // unionfs, like FUSE, needs them asked for.
                    let options: Vec<&str> = ["dev", "suid"]
                        .iter()
                        .chain(setup.union_options)
                        .copied()
                        .collect();
                    Mount::unionfs(&root, Some(&upper), Some(&work), &lower_paths, &options)
                }
                Kind::Overlay => Mount::overlay(&root, Some(&upper), Some(&work), &lower_paths),
            });
            if kind == Kind::Unionfs {
                union_lowers = lower_paths;
            }
        }
        let kernel = mounts.pop().unwrap();
        let union = mounts.pop().unwrap();
        // Snapshots would change the access times that copy-up copies, so
        // the check compares with a copy that is never mounted.
        let built_lowers = union_lowers[..setup.lowers]
            .iter()
            .enumerate()
            .map(|(index, path)| {
                let reference = scratch.path(&format!("reference/lower{index}"));
                (setup.fill)(Kind::Unionfs, index, &reference);
                (path.clone(), reference)
            })
            .collect();
        Pair {
            union,
            kernel,
            scratch,
            union_lowers,
            built_lowers,
            started,
        }
    }

    /// Runs `op` on both merged roots; asserts both give the same result and
    /// returns it.
    pub fn both<T: PartialEq + Debug>(&self, what: &str, op: impl Fn(&Path) -> T) -> T {
        let kernel = op(&self.kernel.root);
        let union = op(&self.union.root);
        assert_eq!(
            union, kernel,
            "{what}: unionfs (left) and kernel overlayfs (right) differ"
        );
        union
    }

    /// Asserts both merged views hold the same tree.
    pub fn assert_same_view(&self) {
        let union = snapshot::tree(&self.union.root, self.started);
        let kernel = snapshot::tree(&self.kernel.root, self.started);
        snapshot::assert_same(&union, &kernel, "merged view");
    }

    /// Returns the merged view of unionfs.
    pub fn union_view(&self) -> Tree {
        snapshot::tree(&self.union.root, self.started)
    }

    fn side(&self, kind: Kind, what: &str) -> PathBuf {
        self.scratch.dir.path().join(side_name(kind)).join(what)
    }

    pub fn upper(&self, kind: Kind) -> PathBuf {
        self.side(kind, "upper")
    }

    pub fn lower(&self, kind: Kind, index: usize) -> PathBuf {
        self.side(kind, &format!("lower{index}"))
    }

    /// Checks the merged views, unmounts both, compares the upper layers,
    /// checks that unionfs left its lower layers as they were, and mounts unionfs's upper layer under kernel overlayfs to check it
    /// shows the same merged view.
    pub fn finish(self) {
        self.finish_with(true);
    }

    /// Like [`Pair::finish`]; `remount` false skips the kernel remount of
    /// unionfs's upper layer (for lower layers the kernel cannot read).
    pub fn finish_with(mut self, remount: bool) {
        self.assert_same_view();
        let expected = snapshot::tree(&self.kernel.root, self.started);
        self.union.unmount();
        self.kernel.unmount();
        let union_upper = snapshot::layer(&self.upper(Kind::Unionfs), self.started);
        let kernel_upper = snapshot::layer(&self.upper(Kind::Overlay), self.started);
        snapshot::assert_same(&union_upper, &kernel_upper, "upper layer");
        for (path, reference) in &self.built_lowers {
            snapshot::assert_same(
                &snapshot::layer(path, self.started),
                &snapshot::layer(reference, self.started),
                &format!("lower layer {}", path.display()),
            );
        }
        if !remount {
            return;
        }

        let lowers = self.union_lowers.clone();
        let work = self.scratch.path("check/work");
        let root = self.scratch.dir.path().join("check/merged");
        let upper = self.upper(Kind::Unionfs);
        let check = Mount::overlay(&root, Some(&upper), Some(&work), &lowers);
        let remounted = snapshot::tree(&check.root, self.started);
        snapshot::assert_same(
            &remounted,
            &expected,
            "unionfs's upper layer under kernel overlayfs",
        );
    }
}

fn side_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unionfs => "unionfs",
        Kind::Overlay => "overlay",
    }
}

/// Waits until `check` holds, up to `timeout`.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check()
}

/// Returns true when `path` is a mountpoint listed in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(path.as_str()))
}

/// Returns the errno of an io::Result, or 0 for success, so results of the
/// two filesystems compare simply.
pub fn errno<T>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(err) => err.raw_os_error().unwrap_or(-1),
    }
}

#[allow(dead_code)]
pub fn name(text: &str) -> &OsStr {
    OsStr::new(text)
}

/// Writes `content` to `root/relative`, creating parent directories.
pub fn write(root: &Path, relative: &str, content: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Creates directory `root/relative` and its parents.
pub fn mkdir(root: &Path, relative: &str) {
    std::fs::create_dir_all(root.join(relative)).unwrap();
}

/// Creates symlink `root/relative` pointing at `target`.
pub fn symlink(root: &Path, relative: &str, target: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// Creates an overlay whiteout (a 0/0 character device) at `root/relative`.
pub fn whiteout(root: &Path, relative: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
}

/// Marks directory `root/relative` opaque with `trusted.overlay.opaque=y`.
pub fn opaque(root: &Path, relative: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(&path).unwrap();
    xattr::set(&path, "trusted.overlay.opaque", b"y").unwrap();
}

/// The timestamp layers are given, so that times kept through copy-up
/// compare exactly.
pub const LAYER_TIME: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z

/// Sets atime and mtime of everything under `root` (itself included) to
/// [`LAYER_TIME`] plus a few nanoseconds, without following symlinks.
pub fn age(root: &Path) {
    let time = nix::sys::time::TimeSpec::new(LAYER_TIME, 123_456_789);
    let mut paths: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    // Children first, so setting a directory's time is the last change to it.
    paths.reverse();
    for path in paths {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap_or_else(|err| panic!("cannot set times of {}: {err}", path.display()));
    }
}

/// Where daemons record their pids, one file per mount, named after the
/// mount's device number as `major-minor`.
const PID_DIR: &str = "/run/unionfs/fuse";

/// Returns the device number `major:minor` of the mount at `path`, from
/// /proc/self/mountinfo.
fn mount_device(path: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = path.to_string_lossy().replace(' ', "\\040");
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&target.as_str())).then(|| fields[2].to_string())
    })
}

/// Returns the pid file path of the daemon serving the mount at `path`.
pub fn pid_file(path: &Path) -> PathBuf {
    let device = mount_device(path).expect("the mount must be in mountinfo");
    Path::new(PID_DIR).join(device.replace(':', "-"))
}

/// Returns the pid of the daemon serving the mount at `path`.
pub fn daemon_pid(path: &Path) -> i32 {
    let file = pid_file(path);
    let content = fs::read_to_string(&file)
        .unwrap_or_else(|err| panic!("cannot read pid file {}: {err}", file.display()));
    content
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("invalid pid file {}: {content:?}", file.display()))
}
