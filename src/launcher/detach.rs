//! `unionfs run -d`: the container runs under a monitor process in the
//! background, and the command returns once it has started.
//!
//! `unionfs run -d` forks the monitor and waits on a pipe. The monitor
//! leaves the caller's session and runs the container as a foreground run
//! does: it stays the parent (the child subreaper) of the container's
//! PID 1, waits for it, records the exit status, the OOM flag and the end
//! time, and tears the container down. Once PID 1 has run `execve`, the
//! monitor writes "started" on the pipe, and the command prints the id and
//! exits 0. A failure before that travels the same pipe, with its exit
//! status and message.
//!
//! The container's stdout and stderr go to `stdout.log` and `stderr.log`
//! in its record directory (with `-t`, the terminal's output goes to
//! `stdout.log`). The monitor's own messages go to `monitor.log`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use log::warn;
use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;

use super::config::RunConfig;
use super::container;
use super::init::EXIT_LAUNCH_FAILED;
use super::record::{MONITOR_LOG, Record, STDERR_LOG, STDOUT_LOG};
use crate::sys::process::{Forked, fork_single_threaded, thread_count};

/// First byte of the monitor's report: the container runs.
const STARTED: u8 = b'S';
/// First byte of the monitor's report: it failed, with a status and message.
const FAILED: u8 = b'F';

/// The descriptors a detached container gets as stdin, stdout and stderr.
pub struct ContainerStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl ContainerStdio {
    /// Makes the three descriptors this process's 0, 1 and 2. Runs in the
    /// container's first process, so PID 1 inherits them.
    pub fn install(self) -> io::Result<()> {
        nix::unistd::dup2_stdin(self.stdin.as_fd())?;
        nix::unistd::dup2_stdout(self.stdout.as_fd())?;
        nix::unistd::dup2_stderr(self.stderr.as_fd())?;
        Ok(())
    }
}

/// The monitor's side of the report pipe and of the container's stdin.
pub struct Monitor {
    /// The report pipe's write end, until the report is sent.
    report: Option<File>,
    /// With `-i`, the write end of the container's stdin pipe. Nothing is
    /// ever written, but holding it open keeps the container's reads
    /// blocking, as `docker run -di` leaves stdin open.
    stdin_writer: Option<OwnedFd>,
}

impl Monitor {
    /// Creates the container's log files and returns its stdio: a pipe
    /// that stays open with `interactive`, or `/dev/null`, and the logs.
    pub fn container_stdio(
        &mut self,
        record: &Record,
        interactive: bool,
    ) -> anyhow::Result<ContainerStdio> {
        let stdout = record.create_log(STDOUT_LOG)?;
        let stderr = record.create_log(STDERR_LOG)?;
        let stdin = if interactive {
            let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            self.stdin_writer = Some(writer);
            reader
        } else {
            OwnedFd::from(File::open("/dev/null")?)
        };
        Ok(ContainerStdio {
            stdin,
            stdout: stdout.into(),
            stderr: stderr.into(),
        })
    }

    /// Reports that the container runs, and sends the monitor's own stdout
    /// (where the terminal relay of `-t` writes) to `stdout.log` and its
    /// stderr to `monitor.log`, off the caller's terminal or pipes.
    pub fn started(&mut self, record: &Record) {
        if let Some(mut report) = self.report.take() {
            if let Err(err) = report.write_all(&[STARTED]) {
                warn!("cannot report the start of container {}: {err}", record.id);
            }
        }
        let redirected = (|| -> anyhow::Result<()> {
            let stdout = record.create_log(STDOUT_LOG)?;
            let monitor_log = record.create_log(MONITOR_LOG)?;
            nix::unistd::dup2_stdout(stdout.as_fd())?;
            nix::unistd::dup2_stderr(monitor_log.as_fd())?;
            Ok(())
        })();
        if let Err(err) = redirected {
            warn!("cannot redirect the monitor's output to its logs: {err:#}");
        }
    }

    /// Sends a failure report, unless the start was reported already.
    /// Returns false in that case.
    fn report_failure(&mut self, status: i32, message: &str) -> bool {
        let Some(mut report) = self.report.take() else {
            return false;
        };
        let mut bytes = vec![FAILED];
        bytes.extend_from_slice(&status.to_le_bytes());
        bytes.extend_from_slice(message.as_bytes());
        let _ = report.write_all(&bytes);
        true
    }
}

/// Runs `unionfs run -d`: starts the monitor and returns 0 once the
/// container runs, after printing its id; or the failure's exit status.
pub fn run(config: &RunConfig) -> i32 {
    match start_monitor(config) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("unionfs run: {err:#}");
            EXIT_LAUNCH_FAILED
        }
    }
}

fn start_monitor(config: &RunConfig) -> anyhow::Result<i32> {
    let threads = thread_count()?;
    if threads != 1 {
        anyhow::bail!(
            "the launcher has {threads} threads, but the monitor can only be forked from a single-threaded process"
        );
    }
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    match fork_single_threaded()? {
        Forked::Child => {
            drop(reader);
            let status = monitor_main(config, writer);
            std::process::exit(status);
        }
        Forked::Parent(monitor) => {
            drop(writer);
            let mut report = Vec::new();
            File::from(reader).read_to_end(&mut report)?;
            match report.split_first() {
                Some((&STARTED, _)) => {
                    println!("{}", config.id);
                    Ok(0)
                }
                Some((&FAILED, rest)) => {
                    let (status, message) = match rest.split_first_chunk::<4>() {
                        Some((status, message)) => (i32::from_le_bytes(*status), message),
                        None => (EXIT_LAUNCH_FAILED, rest),
                    };
                    eprintln!("unionfs run: {}", String::from_utf8_lossy(message));
                    let _ = waitpid(monitor, None);
                    Ok(status)
                }
                _ => {
                    let ended = waitpid(monitor, None);
                    anyhow::bail!(
                        "the container's monitor (pid {monitor}) ended before the container started: {ended:?}"
                    )
                }
            }
        }
    }
}

/// Runs the container in the monitor process and returns the monitor's
/// exit status.
fn monitor_main(config: &RunConfig, report: OwnedFd) -> i32 {
    let mut monitor = Monitor {
        report: Some(File::from(report)),
        stdin_writer: None,
    };
    // A new session: no signal from the caller's terminal reaches the
    // monitor or the container.
    let detached = nix::unistd::setsid()
        .map_err(io::Error::from)
        .and_then(|_| File::open("/dev/null"))
        .and_then(|null| nix::unistd::dup2_stdin(null.as_fd()).map_err(io::Error::from));
    if let Err(err) = detached {
        monitor.report_failure(
            EXIT_LAUNCH_FAILED,
            &format!("failed to detach the container's monitor: {err}"),
        );
        return EXIT_LAUNCH_FAILED;
    }
    match container::run(config, Some(&mut monitor)) {
        Ok(status) => status,
        Err(failure) => {
            let message = format!("{:#}", failure.error);
            if !monitor.report_failure(failure.status, &message) {
                eprintln!("unionfs run: {message}");
            }
            failure.status
        }
    }
}
