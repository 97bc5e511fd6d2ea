//! `unionfs ps`, `logs`, `stop` and `rm`: the commands that list and end
//! containers through their records (see `record`).
//!
//! Every signal goes through a pidfd opened on the recorded PID 1 after
//! its start time was checked, so a pid that the kernel has given to
//! another process is never signalled. The monitor of a container does its
//! teardown; `stop` and `rm` wait for it. When the monitor is gone (killed
//! with SIGKILL, so the container is dead), they tear down what is left
//! themselves: the processes in its cgroup, its mount, its cgroups and
//! mountpoint, and the container layer with `--rm`.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use super::args::{RmArgs, StopArgs};
use super::cgroup::Cgroup;
use super::container::STATE_DIR;
use super::record::{self, Observed, Record, STDERR_LOG, STDOUT_LOG};
use super::teardown::Teardown;
use crate::sys::pidfd;

/// Maximum time `stop` and `rm -f` wait for the monitor's teardown after
/// PID 1 has exited. The teardown waits up to 10 s for an empty cgroup and
/// up to 30 s for the FUSE server to exit, and this adds a margin.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// How often waits reread a record or a log.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Width of the COMMAND column of `ps` unless `--no-trunc` is given.
const COMMAND_WIDTH: usize = 30;

/// Fails unless this process runs as root: the records are readable by
/// root only, and the other commands signal and enter containers.
pub fn require_root(command: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "unionfs {command} needs root, as the container records are root's; run it with sudo"
        );
    }
    Ok(())
}

/// Runs one of the commands and maps its result to an exit status: 0 on
/// success, 1 after printing the error.
fn finish(command: &str, result: Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("unionfs {command}: {err:#}");
            1
        }
    }
}

/// Returns the STATUS column of `ps` for `record`.
pub fn status_text(record: &Record, observed: Observed) -> &'static str {
    match observed {
        Observed::Created => "created",
        Observed::Running => "running",
        Observed::Exited if record.oom_killed => "exited (out of memory)",
        Observed::Exited => "exited",
        Observed::Dead => "dead",
    }
}

/// Formats the time since `then` (Unix seconds) as `ps` shows it.
fn ago(then: u64) -> String {
    let seconds = record::now().saturating_sub(then);
    let (count, unit) = match seconds {
        0..120 => (seconds, "second"),
        120..7200 => (seconds / 60, "minute"),
        7200..172_800 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} ago")
}

/// `unionfs ps`: lists every container, running or not, oldest first.
pub fn ps(no_trunc: bool) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    finish("ps", list_containers(no_trunc))
}

fn list_containers(no_trunc: bool) -> Result<()> {
    require_root("ps")?;
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "NAME".to_string(),
        "COMMAND".to_string(),
        "STATUS".to_string(),
        "STARTED".to_string(),
        "EXIT CODE".to_string(),
    ]];
    for record in record::list()? {
        let mut command = record.command.join(" ");
        if !no_trunc && command.chars().count() > COMMAND_WIDTH {
            command = command.chars().take(COMMAND_WIDTH - 3).collect::<String>() + "...";
        }
        let id = if no_trunc {
            record.id.clone()
        } else {
            record.short_id().to_string()
        };
        rows.push([
            id,
            record.name.clone(),
            command,
            status_text(&record, record.observed()).to_string(),
            record.started_at.map_or("-".to_string(), ago),
            record
                .exit_code
                .map_or("-".to_string(), |code| code.to_string()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    for row in &rows {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `unionfs logs`: prints a detached container's stdout log to stdout and
/// its stderr log to stderr; with `follow`, until the container has exited.
pub fn logs(reference: &str, follow: bool) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    finish("logs", print_logs(reference, follow))
}

fn print_logs(reference: &str, follow: bool) -> Result<()> {
    require_root("logs")?;
    let record = record::find(reference)?;
    if !record.detached {
        bail!(
            "container {} runs in the foreground, so its output goes where `unionfs run` sends it; only `run -d` keeps logs",
            record.name
        );
    }
    let open = |name: &str| -> Result<Option<std::fs::File>> {
        let path = record.dir().join(name);
        match std::fs::File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("failed to open {}", path.display())),
        }
    };
    let mut stdout_log = open(STDOUT_LOG)?;
    let mut stderr_log = open(STDERR_LOG)?;
    loop {
        // Read the state first: output written before the exit is then
        // copied by this round's reads.
        let running = follow
            && record.reload()?.is_some_and(|current| {
                matches!(current.observed(), Observed::Created | Observed::Running)
            });
        if let Some(file) = stdout_log.as_mut() {
            copy_new(file, &mut io::stdout().lock())?;
        }
        if let Some(file) = stderr_log.as_mut() {
            copy_new(file, &mut io::stderr().lock())?;
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
        if stdout_log.is_none() {
            stdout_log = open(STDOUT_LOG)?;
        }
        if stderr_log.is_none() {
            stderr_log = open(STDERR_LOG)?;
        }
    }
}

/// Copies the content of `file` past its offset to `out`.
fn copy_new(file: &mut std::fs::File, out: &mut dyn Write) -> Result<()> {
    let mut buffer = Vec::new();
    file.read_to_end(&mut buffer)?;
    out.write_all(&buffer)?;
    out.flush()?;
    // A log truncated by hand starts over.
    let length = file.metadata()?.len();
    if file.stream_position()? > length {
        file.seek(SeekFrom::Start(0))?;
    }
    Ok(())
}

/// `unionfs stop`: SIGTERM to each container's PID 1, SIGKILL after the
/// timeout, then waits for the teardown. Stopping a container that is not
/// running changes nothing and is not an error, as with `docker stop`.
pub fn stop(args: &StopArgs) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    if let Err(err) = require_root("stop") {
        return finish("stop", Err(err));
    }
    let timeout = Duration::from_secs(args.time);
    let mut status = 0;
    for reference in &args.containers {
        match stop_one(reference, timeout) {
            Ok(()) => println!("{reference}"),
            Err(err) => status = finish("stop", Err(err)),
        }
    }
    status
}

fn stop_one(reference: &str, timeout: Duration) -> Result<()> {
    let record = record::find(reference)?;
    match record.observed() {
        Observed::Exited => {
            eprintln!(
                "unionfs stop: container {} is not running (it exited with status {})",
                record.name,
                record
                    .exit_code
                    .map_or("unknown".to_string(), |code| code.to_string())
            );
            Ok(())
        }
        Observed::Dead => clean_up_dead(record, false),
        Observed::Created | Observed::Running => {
            let record = wait_until_started(record)?;
            if let Some(init) = record.init.and_then(|init| init.open()) {
                signal(&init, Signal::SIGTERM)?;
                if !wait_exit(&init, timeout)? {
                    log::info!(
                        "container {} did not exit within {timeout:?} of SIGTERM; sending SIGKILL",
                        record.name
                    );
                    signal(&init, Signal::SIGKILL)?;
                }
            }
            wait_for_teardown(record, false)
        }
    }
}

/// `unionfs rm`: deletes each container's record and logs. A running
/// container is rejected unless `force` is set; then it is killed first.
pub fn rm(args: &RmArgs) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    if let Err(err) = require_root("rm") {
        return finish("rm", Err(err));
    }
    let mut status = 0;
    for reference in &args.containers {
        match rm_one(reference, args.force) {
            Ok(()) => println!("{reference}"),
            Err(err) => status = finish("rm", Err(err)),
        }
    }
    status
}

fn rm_one(reference: &str, force: bool) -> Result<()> {
    let record = record::find(reference)?;
    match record.observed() {
        Observed::Exited => record.delete(),
        Observed::Dead => clean_up_dead(record, true),
        Observed::Created | Observed::Running if !force => bail!(
            "container {} is running; stop it first with `unionfs stop {}`, or use `unionfs rm -f`",
            record.name,
            record.name
        ),
        Observed::Created | Observed::Running => {
            let record = wait_until_started(record)?;
            if let Some(init) = record.init.and_then(|init| init.open()) {
                signal(&init, Signal::SIGKILL)?;
            }
            wait_for_teardown(record, true)
        }
    }
}

/// Waits while the monitor creates the container, so that its PID 1 is
/// known. Returns the record as it then is.
fn wait_until_started(record: Record) -> Result<Record> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    let mut current = record;
    while current.observed() == Observed::Created && Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL);
        match current.reload()? {
            Some(record) => current = record,
            None => break,
        }
    }
    Ok(current)
}

fn signal(process: &OwnedFd, signal: Signal) -> Result<()> {
    match pidfd::send_signal(process.as_fd(), signal) {
        Err(err) if err.raw_os_error() != Some(libc::ESRCH) => {
            Err(err).with_context(|| format!("failed to send {signal} to the container's PID 1"))
        }
        _ => Ok(()),
    }
}

/// Waits up to `timeout` for the process behind `process` to exit; a pidfd
/// becomes readable then. Returns false on timeout. A timeout too large for
/// the clock waits without end.
fn wait_exit(process: &OwnedFd, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let poll_timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(process.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout) {
            Ok(0) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                return Ok(false);
            }
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return Ok(true),
            Err(err) => return Err(err).context("failed to wait for the container's PID 1"),
        }
    }
}

/// Waits until the monitor has recorded the exit (or, for a foreground
/// run, removed the record); then with `delete`, deletes the record. If the
/// monitor dies first, cleans up in its place.
fn wait_for_teardown(record: Record, delete: bool) -> Result<()> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        let Some(current) = record.reload()? else {
            return Ok(());
        };
        match current.observed() {
            Observed::Exited if delete => return current.delete(),
            Observed::Exited => return Ok(()),
            Observed::Dead => return clean_up_dead(current, delete),
            Observed::Created | Observed::Running => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "container {} has not finished its teardown after {TEARDOWN_TIMEOUT:?}; its monitor (pid {}) still runs, see {}",
                current.name,
                current.monitor.pid,
                current.dir().join(record::MONITOR_LOG).display()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Tears down what a dead container left: its processes, mount, cgroups
/// and mountpoint, and with `--rm` its container layer. Then deletes the
/// record with `delete`, or marks it exited with an unknown status.
fn clean_up_dead(mut record: Record, delete: bool) -> Result<()> {
    log::info!(
        "the monitor of container {} is gone; removing what it left",
        record.name
    );
    if let Some(init) = record.init.and_then(|init| init.open()) {
        signal(&init, Signal::SIGKILL)?;
    }

    let mut teardown = Teardown::default();
    teardown.cgroup =
        Cgroup::open(&record.name).context("failed to find the container's cgroup")?;
    if is_mountpoint(&record.rootfs) {
        teardown.mountpoint = Some(record.rootfs.clone());
    }
    let state_dir = Path::new(STATE_DIR).join(&record.name);
    if state_dir.exists() {
        teardown.state_dir = Some(state_dir);
    }
    let container_layer = crate::options::parse_layers(&record.layers)
        .ok()
        .and_then(|layers| layers.into_iter().next())
        .filter(|layer| layer.writable)
        .map(|layer| layer.path);
    teardown.container_layer = container_layer.map(|layer: PathBuf| (layer, false));
    teardown.started = true;
    teardown.remove_layer = record.remove;

    let errors = teardown.run();
    if let Some(first) = errors.into_iter().next() {
        return Err(first.context(format!(
            "failed to clean up after container {}",
            record.name
        )));
    }

    if delete || record.remove {
        return record.delete();
    }
    record.status = record::Status::Exited;
    record.finished_at.get_or_insert_with(record::now);
    record.save()
}

/// Returns true if `path` is listed as a mountpoint in this mount namespace.
fn is_mountpoint(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    mountinfo.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mount_point| mount_point.replace("\\040", " ") == target)
    })
}
