//! The state of each container, one directory per container id under
//! [`RECORDS_DIR`]: `state.json` (a [`Record`]) and, for a detached
//! container, `stdout.log`, `stderr.log` and the monitor's own messages in
//! `monitor.log`.
//!
//! `state.json` is replaced atomically (written to a temporary file, then
//! renamed over), so a reader sees either the old or the new record. The
//! record names the container's PID 1 and its monitor by pid and start time
//! ([`ProcessId`]), so a pid that the kernel has given to another process
//! is never taken for the container.
//!
//! Ids are 64 lowercase hex digits, so a record directory never collides
//! with the other entries of `/run/unionfs` (`fuse/`, `containers/`).

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::config::RunConfig;

/// Parent of the record directories.
pub const RECORDS_DIR: &str = crate::rundir::ROOT;

/// Length of a container id in hex digits, and of its short form in `ps`.
pub const ID_LENGTH: usize = 64;
pub const SHORT_ID_LENGTH: usize = 12;

const STATE_FILE: &str = "state.json";
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";
pub const MONITOR_LOG: &str = "monitor.log";

/// A process named by pid and start time (field 22 of `/proc/PID/stat`,
/// in clock ticks since boot), which no later process with the same pid
/// shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// Identifies the running process `pid`.
    pub fn of(pid: Pid) -> io::Result<ProcessId> {
        Ok(ProcessId {
            pid: pid.as_raw(),
            start_time: start_time(pid)?,
        })
    }

    /// Returns true while this process runs: it exists with the recorded
    /// start time and is not a zombie.
    pub fn is_alive(&self) -> bool {
        read_stat(Pid::from_raw(self.pid))
            .is_ok_and(|(state, start)| start == self.start_time && !matches!(state, 'Z' | 'X'))
    }

    /// Opens a pidfd for this process. Returns `None` when it has exited,
    /// also when its pid now belongs to another process.
    pub fn open(&self) -> Option<OwnedFd> {
        let pid = Pid::from_raw(self.pid);
        let pidfd = crate::sys::pidfd::open(pid).ok()?;
        // Read after the pidfd is open: if the start time still matches,
        // this process held the pid all along, so the pidfd refers to it.
        self.is_alive().then_some(pidfd)
    }
}

/// Returns the start time of process `pid` in clock ticks since boot.
pub fn start_time(pid: Pid) -> io::Result<u64> {
    read_stat(pid).map(|(_, start)| start)
}

/// Returns the state letter (field 3 of `/proc/PID/stat`, `Z` for a
/// zombie) and the start time (field 22) of process `pid`.
fn read_stat(pid: Pid) -> io::Result<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name in parentheses may contain spaces and parentheses;
    // the fields after its last ')' start with field 3, the state.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let mut fields = after_name.split_whitespace();
    let state = fields.next().and_then(|field| field.chars().next());
    let start = fields.nth(18).and_then(|field| field.parse().ok());
    match (state, start) {
        (Some(state), Some(start)) => Ok((state, start)),
        _ => Err(io::Error::other(format!("cannot parse /proc/{pid}/stat"))),
    }
}

/// The stage a container is in, as the record states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The monitor is setting the container up.
    Created,
    Running,
    /// PID 1 has exited and the teardown is done.
    Exited,
}

/// One container's `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub command: Vec<String>,
    pub layers: String,
    pub status: Status,
    /// Started in the background with `run -d`: the record stays after exit.
    pub detached: bool,
    /// `--rm`: the record and the container layer go when it exits.
    pub remove: bool,
    /// Unix times in seconds.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The exit status `unionfs run` reports: the code, or 128 + signal.
    pub exit_code: Option<i32>,
    /// The kernel's OOM killer acted in the container's memory cgroup.
    pub oom_killed: bool,
    /// The process that waits for PID 1 and tears the container down.
    pub monitor: ProcessId,
    /// PID 1 of the container, once started.
    pub init: Option<ProcessId>,
    /// The container's cgroup directories, one per hierarchy.
    pub cgroups: Vec<PathBuf>,
    /// The mountpoint of the merged view.
    pub rootfs: PathBuf,
    /// The settings `unionfs exec` gives its command, the same as the
    /// container's PID 1 got: environment (`KEY=VALUE`), `--user`, working
    /// directory and capability names.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: PathBuf,
    pub capabilities: Vec<String>,
}

/// The state as `ps` shows it: the record's, except that a record whose
/// monitor has gone without recording the exit is dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Created,
    Running,
    Exited,
    /// The monitor was killed or crashed: the exit status is unknown and
    /// the container's mount and cgroup may be left. `rm` removes them.
    Dead,
}

impl Record {
    /// Builds the record of a container about to be created by `monitor`.
    pub fn new(config: &RunConfig, rootfs: PathBuf, monitor: ProcessId) -> Record {
        let mut capabilities: Vec<String> = config
            .capabilities
            .iter()
            .map(ToString::to_string)
            .collect();
        capabilities.sort();
        Record {
            id: config.id.clone(),
            name: config.name.clone(),
            command: config
                .command
                .iter()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect(),
            layers: config.layers.clone(),
            status: Status::Created,
            detached: config.detach,
            remove: config.remove,
            created_at: now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            monitor,
            init: None,
            cgroups: Vec::new(),
            rootfs,
            // NOTE: a value that is not UTF-8 (from `-e KEY` copying the
            // caller's variable) reaches `exec` with U+FFFD in place of
            // the invalid bytes.
            env: super::config::env_strings(&config.env)
                .iter()
                .map(|entry| entry.to_string_lossy().into_owned())
                .collect(),
            user: config.user_text.clone(),
            workdir: config.workdir.clone(),
            capabilities,
        }
    }

    /// Returns the state as observed now.
    pub fn observed(&self) -> Observed {
        match self.status {
            Status::Exited => Observed::Exited,
            _ if !self.monitor.is_alive() => Observed::Dead,
            Status::Created => Observed::Created,
            Status::Running => Observed::Running,
        }
    }

    /// Returns the record's directory.
    pub fn dir(&self) -> PathBuf {
        Path::new(RECORDS_DIR).join(&self.id)
    }

    pub fn short_id(&self) -> &str {
        &self.id[..SHORT_ID_LENGTH.min(self.id.len())]
    }

    /// Replaces `state.json` atomically.
    pub fn save(&self) -> Result<()> {
        let dir = self.dir();
        let temporary = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(self).context("failed to encode the record")?;
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(&text));
        if let Err(err) = written.and_then(|()| fs::rename(&temporary, dir.join(STATE_FILE))) {
            let _ = fs::remove_file(&temporary);
            return Err(err)
                .with_context(|| format!("failed to write {}", dir.join(STATE_FILE).display()));
        }
        Ok(())
    }

    /// Creates the record directory (mode 0700) and writes the first
    /// `state.json`. Fails when another container, running or exited, has
    /// the same name.
    pub fn create(&self) -> Result<()> {
        if let Some(other) = list()?.into_iter().find(|other| other.name == self.name) {
            bail!(
                "the name {} is in use by container {}; choose another --name, or remove that container with `unionfs rm {}`",
                self.name,
                other.short_id(),
                self.name
            );
        }
        crate::rundir::ensure_dir(Path::new(RECORDS_DIR))
            .with_context(|| format!("failed to create {RECORDS_DIR}"))?;
        let dir = self.dir();
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("failed to create the record directory {}", dir.display()))?;
        self.save()
    }

    /// Deletes the record directory with its logs.
    pub fn delete(&self) -> Result<()> {
        let dir = self.dir();
        match fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("failed to remove {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Opens the log file `name` in the record directory for appending.
    pub fn create_log(&self, name: &str) -> Result<File> {
        let path = self.dir().join(name);
        fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("failed to create the log {}", path.display()))
    }

    /// Rereads the record from disk; `None` once it has been removed.
    pub fn reload(&self) -> Result<Option<Record>> {
        read(&self.dir())
    }
}

/// Returns the current Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Returns true if `name` has the form of a container id.
fn is_id(name: &str) -> bool {
    name.len() == ID_LENGTH && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads the record in `dir`. Returns `None` when the directory or its
/// `state.json` is missing, as while a record is being created or removed.
/// A record that this user does not own, or that others may write, is an
/// error, because `/run/unionfs` may be writable by every user.
fn read(dir: &Path) -> Result<Option<Record>> {
    let path = dir.join(STATE_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("failed to read {}", path.display())),
    };
    let euid = nix::unistd::geteuid().as_raw();
    for checked in [&path, dir] {
        let meta = fs::symlink_metadata(checked)
            .with_context(|| format!("failed to read {}", checked.display()))?;
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            bail!(
                "{} is not owned by uid {euid} or is writable by others; remove it",
                checked.display()
            );
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let record: Record = serde_json::from_str(&text)
        .with_context(|| format!("invalid record {}", path.display()))?;
    Ok(Some(record))
}

/// Returns every container record, oldest first. Records that cannot be
/// read are skipped with a warning.
pub fn list() -> Result<Vec<Record>> {
    let entries = match fs::read_dir(RECORDS_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("failed to list {RECORDS_DIR}")),
    };
    let mut records = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {RECORDS_DIR}"))?;
        if !entry.file_name().to_str().is_some_and(is_id) {
            continue;
        }
        match read(&entry.path()) {
            Ok(Some(record)) => records.push(record),
            Ok(None) => {}
            Err(err) => log::warn!("skipping {}: {err:#}", entry.path().display()),
        }
    }
    records.sort_by_key(|record| {
        (
            record.created_at,
            record.monitor.start_time,
            record.id.clone(),
        )
    });
    Ok(records)
}

/// Finds the container that `reference` names: a name, a full id, or a
/// prefix of exactly one id.
pub fn find(reference: &str) -> Result<Record> {
    let records = list()?;
    if let Some(record) = records
        .iter()
        .find(|record| record.name == reference || record.id == reference)
    {
        return Ok(record.clone());
    }
    let matches: Vec<&Record> = if reference.is_empty() {
        Vec::new()
    } else {
        records
            .iter()
            .filter(|record| record.id.starts_with(reference))
            .collect()
    };
    match matches.as_slice() {
        [record] => Ok((*record).clone()),
        [] => bail!("no such container: {reference}; `unionfs ps` lists the containers"),
        _ => bail!(
            "container id prefix {reference} is ambiguous ({} containers match); give more digits or the name",
            matches.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let pid = nix::unistd::getpid();
        let first = start_time(pid).unwrap();
        assert_eq!(start_time(pid).unwrap(), first);
        let me = ProcessId::of(pid).unwrap();
        assert!(me.is_alive());
        let reused = ProcessId {
            start_time: first + 1,
            ..me
        };
        assert!(!reused.is_alive(), "another start time is another process");
        assert!(reused.open().is_none());
        assert!(me.open().is_some());
    }

    #[test]
    fn ids_are_64_hex_digits() {
        assert!(is_id(&"0123456789abcdef".repeat(4)));
        assert!(!is_id("fuse"));
        assert!(!is_id("containers"));
        assert!(!is_id(&"0123456789ABCDEF".repeat(4)));
        assert!(!is_id(&"0".repeat(63)));
    }

    #[test]
    fn status_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&Status::Running).unwrap(),
            "\"running\""
        );
    }
}
