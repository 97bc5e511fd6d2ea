// Shared helpers: each test file uses a different subset of them.
#![allow(dead_code)]

//! Test fixture: a busybox image layer, a scratch directory for container
//! layers, `unionfs run` with a unique container name, and a check that a
//! run left no mount, cgroup or state directory behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where the launcher keeps each container's mountpoint.
pub const STATE_DIR: &str = "/run/unionfs/containers";

/// Where the launcher keeps each container's record, `ID/state.json`.
pub const RECORDS_DIR: &str = "/run/unionfs";

pub fn unionfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionfs")
}

/// Returns the busybox root filesystem, building it on first use.
pub fn busybox() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rootfs.sh");
        let output = Command::new(script)
            .arg("busybox")
            .output()
            .expect("run scripts/rootfs.sh");
        assert!(
            output.status.success(),
            "scripts/rootfs.sh busybox failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("rootfs.sh printed no path")
                .trim(),
        )
    })
}

/// One test's container: a unique name and a scratch directory for its
/// container layer.
pub struct Container {
    pub name: String,
    pub scratch: TempDir,
}

impl Container {
    pub fn new(test: &str) -> Container {
        Container {
            name: format!("{test}-{}", std::process::id()),
            scratch: tempfile::Builder::new()
                .prefix("unionfs-run-")
                .tempdir()
                .unwrap(),
        }
    }

    /// Returns the container layer's path; the launcher creates the directory.
    pub fn layer(&self) -> PathBuf {
        self.scratch.path().join("container")
    }

    /// LAYERS: the container layer over the busybox image.
    pub fn layers(&self) -> String {
        format!("{}:{}", self.layer().display(), busybox().display())
    }

    /// Builds `unionfs run --name NAME OPTIONS LAYERS -- COMMAND...`.
    pub fn command(&self, options: &[&str], command: &[&str]) -> Command {
        let mut run = Command::new(unionfs_bin());
        run.arg("run").arg("--name").arg(&self.name);
        run.args(options).arg(self.layers()).arg("--").args(command);
        run.stdin(Stdio::null());
        run
    }

    /// Runs a shell script in the container and returns its output.
    pub fn sh(&self, options: &[&str], script: &str) -> Output {
        self.command(options, &["sh", "-c", script])
            .output()
            .unwrap()
    }

    /// Starts a shell script in the container without waiting.
    pub fn spawn(&self, options: &[&str], script: &str) -> Child {
        self.command(options, &["sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Asserts that nothing of this container is left: no mount of its
    /// root, no cgroup directory, no state directory, no record.
    pub fn assert_no_leftovers(&self) {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let state = Path::new(STATE_DIR).join(&self.name);
        let state_text = state.display().to_string();
        let layer_text = self.layer().display().to_string();
        for line in mountinfo.lines() {
            assert!(!line.contains(&state_text), "mount left behind: {line}");
            assert!(
                !line.contains(&layer_text),
                "mount of the layers left behind: {line}"
            );
        }
        assert!(
            !state.exists(),
            "state directory {} left behind",
            state.display()
        );
        let leftovers = cgroup_dirs(&self.name);
        assert!(leftovers.is_empty(), "cgroups left behind: {leftovers:?}");
        let records = record_dirs(&self.name);
        assert!(records.is_empty(), "records left behind: {records:?}");
    }
}

/// Returns the record directories whose `state.json` names container `name`.
pub fn record_dirs(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(RECORDS_DIR) else {
        return found;
    };
    let needle = format!("\"name\": {name:?}");
    for entry in entries.flatten() {
        let Ok(state) = std::fs::read_to_string(entry.path().join("state.json")) else {
            continue;
        };
        if state.contains(&needle) {
            found.push(entry.path());
        }
    }
    found
}

/// Returns the cgroup directories named `name` under any hierarchy.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for hierarchy in hierarchies.flatten() {
        let candidates = [
            hierarchy.path().join("unionfs").join(name),
            hierarchy.path().join(name),
        ];
        found.extend(candidates.into_iter().filter(|path| path.exists()));
    }
    // A pure cgroup v2 host has no per-controller directories.
    let unified = Path::new("/sys/fs/cgroup/unionfs").join(name);
    if unified.exists() && !found.contains(&unified) {
        found.push(unified);
    }
    found
}

/// Returns the host pids of the processes in container `name`, from the
/// cgroup every process lists in /proc/PID/cgroup.
pub fn container_pids(name: &str) -> Vec<i32> {
    let suffix = format!("/unionfs/{name}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if cgroups.lines().any(|line| line.ends_with(&suffix)) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `condition` every 20 ms until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that the run exited with `code`, printing its output otherwise.
pub fn assert_status(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "expected exit status {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}
