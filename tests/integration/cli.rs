//! Command-line tests: every rejected input exits non-zero with a
//! `unionfs: ` message naming the bad value and leaves nothing behind, and
//! every accepted form (subcommand, bare, podman's, mount(8)'s) mounts a
//! merged view that kernel overlayfs shows the same way.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::fixture::{self, Mount, Scratch, errno, is_mounted, unionfs_bin};
use crate::snapshot;

/// Unmounts `path` lazily on drop if something is mounted there, so a mount
/// that a test did not expect to succeed never outlives the test.
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

/// Mounts a small tmpfs at `path` with `options`; unmounted on drop.
fn tmpfs(path: &Path, options: &str) -> Unmount {
    fs::create_dir_all(path).unwrap();
    fixture::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path),
    );
    Unmount(path.to_path_buf())
}

/// Bind-mounts `source` read-only at `target`; unmounted on drop.
fn read_only_bind(source: &Path, target: &Path) -> Unmount {
    fs::create_dir_all(target).unwrap();
    fixture::run(Command::new("mount").arg("--bind").arg(source).arg(target));
    let guard = Unmount(target.to_path_buf());
    fixture::run(
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(target),
    );
    guard
}

/// The fields of the /proc/self/mounts line for mountpoint `path`:
/// source, filesystem type and mount options.
struct MountEntry {
    source: String,
    fstype: String,
    options: Vec<String>,
}

fn mount_entry(path: &Path) -> Option<MountEntry> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let target = path.to_string_lossy().replace(' ', "\\040");
    mounts.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(1) == Some(&target.as_str())).then(|| MountEntry {
            source: fields[0].to_string(),
            fstype: fields[2].to_string(),
            options: fields[3].split(',').map(str::to_string).collect(),
        })
    })
}

/// Lists every path under `root`, to see what a command created or removed.
fn listing(root: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|entry| entry.unwrap().into_path())
        .collect()
}

/// Pids of other processes with an argument equal to `argument`.
fn processes_with_argument(argument: &Path) -> Vec<u32> {
    let argument = argument.as_os_str().as_encoded_bytes();
    let own = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid != own && cmdline.split(|&b| b == 0).any(|arg| arg == argument) {
            pids.push(pid);
        }
    }
    pids
}

/// Runs unionfs with `args` in the scratch dir and returns its stderr. It
/// first asserts that the command failed with a `unionfs: ` message and left
/// nothing behind: no mount on `mountpoint`, no new or removed path under
/// the scratch dir, and no process with `mountpoint` among its arguments.
fn reject(scratch: &Scratch, mountpoint: &Path, args: &[OsString]) -> String {
    let _unmount = Unmount(mountpoint.to_path_buf());
    let before = listing(scratch.dir.path());

    let output = Command::new(unionfs_bin())
        .args(args)
        .current_dir(scratch.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();

    assert!(
        !output.status.success(),
        "unionfs {args:?} must fail, got {}",
        output.status
    );
    assert!(
        stderr.starts_with("unionfs: "),
        "unionfs {args:?}: message lacks the 'unionfs: ' prefix: {stderr:?}"
    );
    assert!(
        !is_mounted(mountpoint),
        "unionfs {args:?} left a mount on {}",
        mountpoint.display()
    );
    let after = listing(scratch.dir.path());
    let created: Vec<_> = after.difference(&before).collect();
    let removed: Vec<_> = before.difference(&after).collect();
    assert!(
        created.is_empty() && removed.is_empty(),
        "unionfs {args:?} changed the scratch dir: created {created:?}, removed {removed:?}"
    );
    let serving = processes_with_argument(mountpoint);
    assert!(
        serving.is_empty(),
        "unionfs {args:?} left processes {serving:?} behind"
    );
    stderr
}

/// Asserts the message `stderr` contains `fragment`.
fn assert_names(stderr: &str, fragment: impl AsRef<str>) {
    let fragment = fragment.as_ref();
    assert!(
        stderr.contains(fragment),
        "message must contain {fragment:?}: {stderr:?}"
    );
}

fn args(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    items
        .iter()
        .map(|item| item.as_ref().to_os_string())
        .collect()
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

/// Creates a scratch dir with layers `upper`, `lower1` and `lower2` and an
/// empty mountpoint `mnt`. Both lower layers hold files and a shared directory,
/// lower1 whites out a file of lower2, and upper shadows a file of lower1.
fn layers() -> Scratch {
    let scratch = Scratch::new();
    let upper = scratch.path("upper");
    let lower1 = scratch.path("lower1");
    let lower2 = scratch.path("lower2");
    scratch.path("mnt");
    fixture::write(&upper, "top.txt", "upper\n");
    fixture::write(&upper, "shared.txt", "from upper\n");
    fixture::write(&lower1, "shared.txt", "from lower1\n");
    fixture::write(&lower1, "dir/one.txt", "one\n");
    fixture::whiteout(&lower1, "deleted.txt");
    fixture::write(&lower2, "deleted.txt", "hidden by lower1's whiteout\n");
    fixture::write(&lower2, "dir/two.txt", "two\n");
    fixture::write(&lower2, "bottom.txt", "lower2\n");
    scratch
}

/// Mounts kernel overlayfs read-only over `layers` (topmost first) at
/// `root` and asserts unionfs's merged view at `union_root` is the same.
fn assert_view_matches_kernel(union_root: &Path, root: &Path, layers: &[PathBuf]) {
    let started = fixture::now();
    let kernel = Mount::overlay(root, None, None, layers);
    let union = snapshot::tree(union_root, started);
    let expected = snapshot::tree(&kernel.root, started);
    snapshot::assert_same(&union, &expected, "merged view");
}

fn dir(scratch: &Scratch, name: &str) -> PathBuf {
    scratch.dir.path().join(name)
}

fn stack(scratch: &Scratch) -> Vec<PathBuf> {
    ["upper", "lower1", "lower2"]
        .iter()
        .map(|name| dir(scratch, name))
        .collect()
}

fn layer_list(paths: &[&Path]) -> String {
    paths.iter().map(|p| show(p)).collect::<Vec<_>>().join(":")
}

#[test]
fn reject_missing_layer() {
    let scratch = layers();
    let missing = dir(&scratch, "missing");
    let list = layer_list(&[&dir(&scratch, "upper"), &missing]);
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&missing));
    assert_names(&stderr, "No such file or directory");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the OS error must appear once: {stderr:?}"
    );
}

#[test]
fn reject_file_layer() {
    let scratch = layers();
    let file = dir(&scratch, "upper/top.txt");
    let list = layer_list(&[&dir(&scratch, "lower1"), &file]);
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&file));
    assert_names(&stderr, "not a directory");
}

#[test]
fn reject_duplicate_layer() {
    let scratch = layers();
    let lower = dir(&scratch, "lower1");
    let list = layer_list(&[&dir(&scratch, "upper"), &lower, &lower]);
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&lower));
    assert_names(&stderr, "twice");
}

#[test]
fn reject_duplicate_via_symlink() {
    let scratch = layers();
    let link = dir(&scratch, "link");
    std::os::unix::fs::symlink("lower1", &link).unwrap();
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1"), &link]);
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&link));
    assert_names(&stderr, "twice");
}

#[test]
fn reject_duplicate_via_dot() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(
        &scratch,
        &mnt,
        &args(&[&"mount", &"upper:lower1:./lower1", &mnt]),
    );
    assert_names(&stderr, "./lower1");
    assert_names(&stderr, "twice");
}

#[test]
fn reject_nested_layer() {
    let scratch = layers();
    let inner = dir(&scratch, "lower1/dir");
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1"), &inner]);
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&inner));
    assert_names(&stderr, "inside");
}

#[test]
fn reject_mountpoint_in_layer() {
    let scratch = layers();
    let mnt = dir(&scratch, "lower2/dir");
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower2")]);
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&mnt));
    assert_names(&stderr, "inside");
}

#[test]
fn reject_missing_mountpoint() {
    let scratch = layers();
    let mnt = dir(&scratch, "no-such-mnt");
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&mnt));
}

#[test]
fn reject_unknown_mark() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let list = format!(
        "{}=xx:{}",
        show(&dir(&scratch, "upper")),
        show(&dir(&scratch, "lower1"))
    );
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, "'xx'");
}

#[test]
fn reject_rw_below_top() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let entry = format!("{}=rw", show(&dir(&scratch, "lower1")));
    let list = format!("{}:{entry}", show(&dir(&scratch, "upper")));
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, &entry);
    assert_names(&stderr, "topmost");
}

#[test]
fn reject_unknown_option() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let stderr = reject(
        &scratch,
        &mnt,
        &args(&[&"mount", &list, &mnt, &"-o", &"noatime,frobnicate"]),
    );
    assert_names(&stderr, "'frobnicate'");
}

#[test]
fn reject_bad_whiteout() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let stderr = reject(
        &scratch,
        &mnt,
        &args(&[&"mount", &list, &mnt, &"-o", &"whiteout=bogus"]),
    );
    assert_names(&stderr, "'bogus'");
    assert_names(&stderr, "whiteout");
}

#[test]
fn reject_empty_lowerdir() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let options = format!("lowerdir=,upperdir={}", show(&dir(&scratch, "upper")));
    let stderr = reject(&scratch, &mnt, &args(&[&"-o", &options, &mnt]));
    assert_names(&stderr, "lowerdir");
}

#[test]
fn reject_upperdir_alone() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let upper = dir(&scratch, "upper");
    let options = format!("upperdir={}", show(&upper));
    let stderr = reject(&scratch, &mnt, &args(&[&"-o", &options, &mnt]));
    assert_names(&stderr, show(&upper));
    assert_names(&stderr, "lowerdir");
}

#[test]
fn reject_layers_twice() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let options = format!("lowerdir={}", show(&dir(&scratch, "lower2")));
    let stderr = reject(
        &scratch,
        &mnt,
        &args(&[&"mount", &list, &mnt, &"-o", &options]),
    );
    assert_names(&stderr, "LAYERS");
    assert_names(&stderr, "lowerdir");
}

#[test]
fn reject_workdir_other_fs() {
    let scratch = layers();
    let other = dir(&scratch, "other-fs");
    let _tmpfs = tmpfs(&other, "size=1m");
    let work = other.join("work");
    let mnt = dir(&scratch, "mnt");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        show(&dir(&scratch, "lower1")),
        show(&dir(&scratch, "upper")),
        show(&work)
    );
    let stderr = reject(&scratch, &mnt, &args(&[&"-o", &options, &mnt]));
    assert_names(&stderr, show(&work));
    assert_names(&stderr, "another filesystem");
}

#[test]
fn reject_workdir_in_use() {
    let scratch = layers();
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let workdir = format!("workdir={}", show(&dir(&scratch, "work")));
    let first = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &[&workdir]);
    let second = dir(&scratch, "mnt2");
    fs::create_dir_all(&second).unwrap();
    fs::create_dir_all(dir(&scratch, "upper2")).unwrap();
    let other = layer_list(&[&dir(&scratch, "upper2"), &dir(&scratch, "lower1")]);

    let stderr = reject(
        &scratch,
        &second,
        &args(&[&"mount", &"-o", &workdir, &other, &second]),
    );
    assert_names(&stderr, show(&dir(&scratch, "work")));
    assert_names(&stderr, "in use");

    let content = fs::read_to_string(first.root.join("top.txt"));
    assert_eq!(
        content.ok(),
        fs::read_to_string(dir(&scratch, "upper/top.txt")).ok(),
        "the first mount must keep serving"
    );
}

#[test]
fn reject_upper_in_use() {
    let scratch = layers();
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let _first = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &[]);
    let second = dir(&scratch, "mnt2");
    fs::create_dir_all(&second).unwrap();
    let workdir = format!("workdir={}", show(&dir(&scratch, "work2")));

    let stderr = reject(
        &scratch,
        &second,
        &args(&[&"mount", &"-o", &workdir, &list, &second]),
    );
    assert_names(&stderr, show(&dir(&scratch, "upper")));
    assert_names(&stderr, "in use");
}

#[test]
fn reject_read_only_bind_upper() {
    let scratch = layers();
    let bound = dir(&scratch, "bound");
    let _bind = read_only_bind(&dir(&scratch, "upper"), &bound);
    let mnt = dir(&scratch, "mnt");
    let list = layer_list(&[&bound, &dir(&scratch, "lower1")]);
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&bound));
    assert_names(&stderr, "read-only");
}

#[test]
fn reject_read_only_tmpfs_upper() {
    let scratch = layers();
    let upper = dir(&scratch, "ro-fs/upper");
    let _tmpfs = tmpfs(&dir(&scratch, "ro-fs"), "size=1m");
    fs::create_dir(&upper).unwrap();
    fixture::run(
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(dir(&scratch, "ro-fs")),
    );
    let mnt = dir(&scratch, "mnt");
    let list = layer_list(&[&upper, &dir(&scratch, "lower1")]);
    let stderr = reject(&scratch, &mnt, &args(&[&"mount", &list, &mnt]));
    assert_names(&stderr, show(&upper));
    assert_names(&stderr, "read-only");
}

#[test]
fn reject_no_arguments() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let stderr = reject(&scratch, &mnt, &[]);
    assert_names(&stderr, "mountpoint");
}

#[test]
fn version_prints_version() {
    let output = Command::new(unionfs_bin())
        .arg("--version")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "--version failed: {output:?}");
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version must print {}: {stdout:?}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn help_exits_zero() {
    let output = Command::new(unionfs_bin()).arg("--help").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "--help failed: {output:?}");
    assert!(
        stdout.contains("umount"),
        "--help must list umount: {stdout:?}"
    );
}

#[test]
fn escaped_colon_in_layer() {
    let scratch = Scratch::new();
    let upper = scratch.path("up:per");
    let lower = scratch.path("lo:wer");
    fixture::write(&upper, "top.txt", "upper\n");
    fixture::write(&lower, "bottom.txt", "lower\n");
    let list = format!(
        "{}:{}",
        show(&upper).replace(':', "\\:"),
        show(&lower).replace(':', "\\:")
    );
    let mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &[]);

    assert_view_matches_kernel(
        &mount.root,
        &dir(&scratch, "kernel"),
        &[upper.clone(), lower],
    );
    fs::write(mount.root.join("new.txt"), "new\n").unwrap();
    assert!(
        upper.join("new.txt").exists(),
        "a new file must land in the upper layer {}",
        upper.display()
    );
}

/// Runs unionfs with `arguments` and returns a guard for `mountpoint`.
fn mount_with(arguments: &[OsString], mountpoint: &Path) -> Unmount {
    let guard = Unmount(mountpoint.to_path_buf());
    fixture::run(Command::new(unionfs_bin()).args(arguments));
    guard
}

#[test]
fn bare_source_name_form() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        show(&dir(&scratch, "lower1")),
        show(&dir(&scratch, "lower2")),
        show(&dir(&scratch, "upper")),
        show(&dir(&scratch, "work"))
    );
    let _mount = mount_with(&args(&[&"none", &mnt, &"-o", &options]), &mnt);

    let entry = mount_entry(&mnt).expect("the mount must be listed");
    assert_eq!(entry.fstype, "fuse.unionfs");
    assert_eq!(entry.source, "none", "SOURCE names the mount");
    assert_view_matches_kernel(&mnt, &dir(&scratch, "kernel"), &stack(&scratch));
}

#[test]
fn mount_subcommand_takes_lowerdir() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        show(&dir(&scratch, "lower1")),
        show(&dir(&scratch, "lower2")),
        show(&dir(&scratch, "upper")),
        show(&dir(&scratch, "work"))
    );
    let _mount = mount_with(&args(&[&"mount", &"-o", &options, &mnt]), &mnt);

    assert!(
        is_mounted(&mnt),
        "mount -o lowerdir=... MOUNTPOINT must mount"
    );
    assert_view_matches_kernel(&mnt, &dir(&scratch, "kernel"), &stack(&scratch));
}

#[test]
fn bare_podman_form() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={},,volatile",
        show(&dir(&scratch, "lower1")),
        show(&dir(&scratch, "lower2")),
        show(&dir(&scratch, "upper")),
        show(&dir(&scratch, "work"))
    );
    let _mount = mount_with(&args(&[&"-o", &options, &mnt]), &mnt);

    assert!(is_mounted(&mnt), "podman's form must mount");
    assert_view_matches_kernel(&mnt, &dir(&scratch, "kernel"), &stack(&scratch));
}

#[test]
fn bare_layers_form() {
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let layers = stack(&scratch);
    let list = layer_list(&[&layers[0], &layers[1], &layers[2]]);
    let _mount = mount_with(&args(&[&list, &mnt]), &mnt);

    assert_view_matches_kernel(&mnt, &dir(&scratch, "kernel"), &layers);
    fs::write(mnt.join("new.txt"), "new\n").unwrap();
    assert!(
        layers[0].join("new.txt").exists(),
        "the first layer must be writable"
    );
}

/// Creates a dir holding only a symlink named `unionfs` to the binary under
/// test, to put first on PATH.
fn bin_dir(scratch: &Scratch) -> PathBuf {
    let bin = scratch.path("bin");
    std::os::unix::fs::symlink(unionfs_bin(), bin.join("unionfs")).unwrap();
    bin
}

fn path_with(bin: &Path) -> OsString {
    let mut path = bin.as_os_str().to_os_string();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

fn overlay_options(scratch: &Scratch) -> String {
    format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        show(&dir(scratch, "lower1")),
        show(&dir(scratch, "lower2")),
        show(&dir(scratch, "upper")),
        show(&dir(scratch, "work"))
    )
}

fn run_output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"))
}

/// Where mount(8) finds `unionfs`: it runs `mount.fuse3` with a cleared
/// environment, whose shell searches /usr/local/bin before /usr/bin (where
/// Debian's unrelated unionfs-fuse package puts its own `unionfs`).
const SYSTEM_BINARY: &str = "/usr/local/bin/unionfs";

#[test]
fn mount8_type_fuse_unionfs() {
    let version = |binary: &str| run_output(Command::new(binary).arg("--version")).stdout;
    assert_eq!(
        version(SYSTEM_BINARY),
        version(unionfs_bin()),
        "{SYSTEM_BINARY} must be this build; scripts/test.sh installs it there"
    );
    let scratch = layers();
    let mnt = dir(&scratch, "mnt");
    let _guard = Unmount(mnt.clone());

    let output = run_output(
        Command::new("mount")
            .args(["-t", "fuse.unionfs", "none"])
            .arg(&mnt)
            .arg("-o")
            .arg(overlay_options(&scratch)),
    );
    assert!(
        output.status.success(),
        "mount -t fuse.unionfs failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let entry = mount_entry(&mnt).expect("the mount must be listed");
    assert_eq!(entry.fstype, "fuse.unionfs");
    assert_view_matches_kernel(&mnt, &dir(&scratch, "kernel"), &stack(&scratch));

    let output = run_output(Command::new("umount").arg(&mnt));
    assert!(output.status.success(), "umount failed: {output:?}");
    assert!(!is_mounted(&mnt), "umount must unmount");
}

#[test]
fn mount_fuse3_dev_suid() {
    let scratch = layers();
    let bin = bin_dir(&scratch);
    let mnt = dir(&scratch, "mnt");
    let _guard = Unmount(mnt.clone());

    let output = run_output(
        Command::new("mount.fuse3")
            .env("PATH", path_with(&bin))
            .arg("none")
            .arg(&mnt)
            .arg("-o")
            .arg(overlay_options(&scratch))
            .args(["-t", "fuse.unionfs"]),
    );
    assert!(
        output.status.success(),
        "mount.fuse3 failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let entry = mount_entry(&mnt).expect("the mount must be listed");
    assert_eq!(entry.fstype, "fuse.unionfs");
    assert!(
        !entry.options.contains(&"nodev".to_string()),
        "mount.fuse3 passes dev: {:?}",
        entry.options
    );
    assert!(
        !entry.options.contains(&"nosuid".to_string()),
        "mount.fuse3 passes suid: {:?}",
        entry.options
    );
    assert_view_matches_kernel(&mnt, &dir(&scratch, "kernel"), &stack(&scratch));

    let output = run_output(Command::new("umount").arg(&mnt));
    assert!(output.status.success(), "umount failed: {output:?}");
    assert!(!is_mounted(&mnt), "umount must unmount");
}

#[test]
fn dev_suid_options() {
    let scratch = layers();
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let _mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &["dev,suid"]);

    let entry = mount_entry(&dir(&scratch, "mnt")).expect("the mount must be listed");
    assert!(
        !entry.options.contains(&"nodev".to_string()),
        "-o dev must drop nodev: {:?}",
        entry.options
    );
    assert!(
        !entry.options.contains(&"nosuid".to_string()),
        "-o suid must drop nosuid: {:?}",
        entry.options
    );
}

#[test]
fn default_nosuid_nodev() {
    let scratch = layers();
    let list = layer_list(&[&dir(&scratch, "upper"), &dir(&scratch, "lower1")]);
    let _mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &[]);

    let entry = mount_entry(&dir(&scratch, "mnt")).expect("the mount must be listed");
    assert!(
        entry.options.contains(&"nodev".to_string()),
        "the default must be nodev: {:?}",
        entry.options
    );
    assert!(
        entry.options.contains(&"nosuid".to_string()),
        "the default must be nosuid: {:?}",
        entry.options
    );
}

/// Tries to create, write, unlink and mkdir under `root`; returns each
/// operation's errno (0 for success).
fn write_attempts(root: &Path) -> Vec<(&'static str, i32)> {
    vec![
        ("create", errno(fs::write(root.join("new.txt"), "new\n"))),
        (
            "open for write",
            errno(
                fs::OpenOptions::new()
                    .write(true)
                    .open(root.join("top.txt")),
            ),
        ),
        ("unlink", errno(fs::remove_file(root.join("bottom.txt")))),
        ("mkdir", errno(fs::create_dir(root.join("newdir")))),
    ]
}

/// Asserts writes through unionfs at `union_root` fail as on a read-only
/// kernel overlayfs over `layers`, and that no layer changed.
fn assert_read_only(scratch: &Scratch, union_root: &Path, layers: &[PathBuf]) {
    let entry = mount_entry(union_root).expect("the mount must be listed");
    assert!(
        entry.options.contains(&"ro".to_string()),
        "the mount must be ro: {:?}",
        entry.options
    );

    let before: Vec<_> = layers.iter().map(|layer| listing(layer)).collect();
    let kernel = Mount::overlay(&dir(scratch, "kernel"), None, None, layers);
    let expected = write_attempts(&kernel.root);
    let got = write_attempts(union_root);
    for ((operation, got), (_, expected)) in got.iter().zip(&expected) {
        assert_eq!(
            got, expected,
            "{operation}: unionfs (left) and read-only kernel overlayfs (right) differ"
        );
    }
    assert_eq!(
        expected.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
        vec![libc::EROFS; 4],
        "the kernel oracle must refuse every write"
    );
    let after: Vec<_> = layers.iter().map(|layer| listing(layer)).collect();
    assert_eq!(after, before, "no layer may change");
    drop(kernel);
    assert_view_matches_kernel(union_root, &dir(scratch, "kernel2"), layers);
}

#[test]
fn ro_option_read_only() {
    let scratch = layers();
    let layers = stack(&scratch);
    let list = layer_list(&[&layers[0], &layers[1], &layers[2]]);
    let mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &["ro"]);
    assert_read_only(&scratch, &mount.root, &layers);
}

#[test]
fn ro_marks_read_only() {
    let scratch = layers();
    let layers = stack(&scratch);
    let list = format!(
        "{}=ro:{}:{}",
        show(&layers[0]),
        show(&layers[1]),
        show(&layers[2])
    );
    let mount = Mount::unionfs_layers(&dir(&scratch, "mnt"), &list, &[]);
    assert_read_only(&scratch, &mount.root, &layers);
}
