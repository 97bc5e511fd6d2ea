//! The cgroup module's error type. Every variant names the path, the value or
//! the option involved, so the message alone shows what to fix.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::Pid;

use super::layout::Controller;

/// A cgroup that could not be set up, controlled or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },

    #[error("failed to write {value} to {path}: {error}")]
    Write {
        path: PathBuf,
        value: String,
        error: io::Error,
    },

    #[error("unexpected content {content:?} in {path}")]
    Parse { path: PathBuf, content: String },

    #[error("failed to create cgroup {path}: {error}")]
    Create { path: PathBuf, error: io::Error },

    #[error(
        "cgroup {path} already exists: another container uses the name {name:?}, or an earlier run left it behind; choose another name or remove it with rmdir"
    )]
    AlreadyExists { path: PathBuf, name: String },

    #[error("failed to remove cgroup {path}: {error}{hint}")]
    Remove {
        path: PathBuf,
        error: io::Error,
        hint: &'static str,
    },

    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error(
        "invalid memory size {value:?}: expected a number of bytes with an optional unit b, k, m, g or t (binary multiples, such as 100m or 1.5g)"
    )]
    InvalidMemory { value: String },

    #[error("invalid {option} value {value}: {reason}")]
    InvalidLimit {
        option: &'static str,
        value: String,
        reason: String,
    },

    #[error("{option} cannot be applied: it needs the {controller} controller, but {reason}")]
    Unsupported {
        option: &'static str,
        controller: Controller,
        reason: String,
    },

    #[error(
        "no cgroup hierarchy is mounted (/proc/self/mountinfo lists no cgroup or cgroup2 filesystem); mount cgroup2 at /sys/fs/cgroup"
    )]
    NoHierarchy,

    #[error(
        "failed to attach the device filter (a cgroup BPF program) to {path}: {error}; the kernel needs CONFIG_CGROUP_BPF"
    )]
    DeviceFilter { path: PathBuf, error: io::Error },

    #[error(
        "cannot restrict the container's device access: no cgroup v1 devices hierarchy and no cgroup v2 hierarchy is mounted; mount cgroup2 at /sys/fs/cgroup"
    )]
    NoDeviceControl,

    #[error("failed to read /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),

    #[error("failed to send SIGKILL to process {pid} in {path}: {error}")]
    Kill {
        pid: Pid,
        path: PathBuf,
        error: nix::Error,
    },

    #[error(
        "processes in {path} kept appearing after {rounds} rounds of SIGKILL; the cgroup has no freezer to stop a fork loop"
    )]
    KillIncomplete { path: PathBuf, rounds: usize },

    #[error(
        "timed out after {timeout:?} waiting for {path} to become empty; processes left: {list}",
        list = join_pids(.pids)
    )]
    TimedOut {
        path: PathBuf,
        timeout: Duration,
        pids: Vec<Pid>,
    },
}

fn join_pids(pids: &[Pid]) -> String {
    let numbers: Vec<String> = pids.iter().map(|pid| pid.to_string()).collect();
    numbers.join(" ")
}
