//! One container run, from the launcher's side: checks, state directory,
//! merged view, cgroup, the two forks that create the container's PID 1,
//! supervision, and teardown.
//!
//! Process layout:
//! - the launcher (host namespaces, single-threaded until the forks are
//!   done) is a child subreaper, so the container's PID 1 becomes its child;
//! - the intermediate process joins the cgroup, calls `unshare` for every
//!   namespace, forks PID 1, reports PID 1's host pid and exits;
//! - PID 1 builds the mount table, pivots, drops privileges and `execve`s
//!   the command. It runs the launcher's code already in memory and never
//!   executes the launcher's binary, and it is not dumpable until `execve`,
//!   so no container process can reach the host binary through
//!   `/proc/PID/exe`.
//!
//! Three close-on-exec pipes connect them. The launcher writes "go" once the
//! intermediate process is in the cgroup. The intermediate process sends
//! PID 1's pid. PID 1 sends an error report (status and message), so the
//! report pipe reaches end of file without data when `execve` succeeded.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use log::debug;
use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::cgroup::{Cgroup, format_memory};
use super::config::{Network, RunConfig, Volume};
use super::detach::{ContainerStdio, Monitor};
use super::init::{self, EXIT_LAUNCH_FAILED, InitError};
use super::linux::LinuxSyscalls;
use super::record::{self, ProcessId, Record, Status};
use super::signals::SignalPipe;
use super::supervisor::Supervisor;
use super::syscalls::Syscalls;
use super::teardown::Teardown;
use super::tty::{self, RawMode};
use crate::sys::process::{Forked, fork_single_threaded, thread_count};

/// Parent of each running container's state directory, which contains its
/// mountpoint.
pub const STATE_DIR: &str = "/run/unionfs/containers";

/// A failure that ends the run with a given exit status.
#[derive(Debug)]
pub struct RunError {
    pub status: i32,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for RunError {
    fn from(error: anyhow::Error) -> RunError {
        RunError {
            status: EXIT_LAUNCH_FAILED,
            error,
        }
    }
}

/// Runs the container and returns its exit status; everything created is
/// removed before this returns, also on error. The container's record
/// lists it while it runs. With `monitor` (`run -d`) the record stays after
/// the exit, with the exit status, unless `--rm` was given.
pub fn run(config: &RunConfig, monitor: Option<&mut Monitor>) -> Result<i32, RunError> {
    let config = &with_host_dns(config);
    check_host(config)?;
    let rootfs = Path::new(STATE_DIR).join(&config.name).join("rootfs");
    let this_process =
        ProcessId::of(nix::unistd::getpid()).context("failed to read this process's start time")?;
    let mut record = Record::new(config, rootfs, this_process);
    record.create()?;

    let result = run_recorded(config, &mut record, monitor);

    let keep = config.detach && !config.remove && record.init.is_some();
    let recorded = if keep {
        record.status = Status::Exited;
        record.finished_at.get_or_insert_with(record::now);
        record.save()
    } else {
        record.delete()
    };
    if let Err(err) = recorded {
        eprintln!("unionfs run: {err:#}");
    }
    result
}

/// Runs the container of `record` and tears it down.
fn run_recorded(
    config: &RunConfig,
    record: &mut Record,
    monitor: Option<&mut Monitor>,
) -> Result<i32, RunError> {
    let mut signals = SignalPipe::install().context("failed to install signal handlers")?;
    let mut teardown = Teardown::default();
    teardown.remove_layer = config.remove;
    let result = start_and_wait(config, record, monitor, &mut signals, &mut teardown);
    let errors = teardown.run();
    for error in &errors {
        eprintln!("unionfs run: {error:#}");
    }
    match result {
        Ok(status) if errors.is_empty() => Ok(status),
        Ok(status) => {
            debug!("teardown failed after the container exited with {status}");
            Err(RunError::from(anyhow::anyhow!(
                "the container exited with status {status}, but cleaning up failed (see above)"
            )))
        }
        Err(error) => Err(error),
    }
}

fn start_and_wait(
    config: &RunConfig,
    record: &mut Record,
    mut monitor: Option<&mut Monitor>,
    signals: &mut SignalPipe,
    teardown: &mut Teardown,
) -> Result<i32, RunError> {
    let mountpoint = create_state_dir(&config.name, teardown)?;
    if let Some(layer) = config.container_layer() {
        let created = create_container_layer(layer)?;
        teardown.container_layer = Some((layer.to_path_buf(), created));
    }
    super::merged::mount(&config.layers, &mountpoint)?;
    teardown.mountpoint = Some(mountpoint.clone());

    let cgroup = Cgroup::create(&config.name, &config.limits)
        .context("failed to create the container's cgroup")?;
    let cgroup = teardown.cgroup.insert(cgroup);
    record.cgroups = cgroup.paths().into_iter().map(Path::to_path_buf).collect();
    let stdio = match monitor.as_deref_mut() {
        Some(monitor) => Some(monitor.container_stdio(record, config.interactive)?),
        None => None,
    };

    // Set only now, so the FUSE server started above is not reparented to
    // the launcher: PID 1 is, once the intermediate process exits.
    nix::sys::prctl::set_child_subreaper(true).context("failed to become a child subreaper")?;
    let started = spawn(config, &mountpoint, cgroup, stdio)?;
    teardown.started = true;
    record.init =
        Some(ProcessId::of(started.init).context("failed to read the start time of PID 1")?);
    record.status = Status::Running;
    record.started_at = Some(record::now());
    record.save()?;
    if let Some(monitor) = monitor {
        monitor.started(record);
    }

    let _raw_mode = if config.tty {
        RawMode::enter(std::io::stdin()).context("failed to put the terminal in raw mode")?
    } else {
        None
    };
    let exit = Supervisor {
        init: started.init,
        signals,
        cgroup: Some(cgroup),
        master: started.master,
        relay_stdin: config.tty && config.interactive,
        stop_timeout: config.stop_timeout,
    }
    .wait()
    .context("failed while waiting for the container")?;
    debug!("container {} PID 1 ended: {exit:?}", config.name);

    record.exit_code = Some(exit.status());
    record.finished_at = Some(record::now());
    record.oom_killed = report_oom(cgroup);
    Ok(exit.status())
}

/// Prints the OOM report when the kernel's OOM killer acted in the cgroup,
/// and returns whether it did. Exit status 137 alone does not tell it from
/// `kill -9`.
fn report_oom(cgroup: &Cgroup) -> bool {
    if cgroup.memory_limit().is_none() {
        return false;
    }
    match cgroup.oom_killed() {
        Ok(true) => {
            match cgroup.memory_limit() {
                Some(limit) => {
                    eprintln!("unionfs run: out of memory: limit {}", format_memory(limit))
                }
                None => eprintln!("unionfs run: out of memory"),
            }
            true
        }
        Ok(false) => false,
        Err(err) => {
            debug!("cannot read the OOM counter: {err}");
            false
        }
    }
}

/// With `--net host`, adds the host's `/etc/resolv.conf` as a read-only
/// volume, as Docker does, so names resolve as they do on the host. An
/// explicit volume on that path wins.
fn with_host_dns(config: &RunConfig) -> RunConfig {
    let mut config = config.clone();
    let resolv_conf = Path::new("/etc/resolv.conf");
    let explicit = config
        .volumes
        .iter()
        .any(|volume| volume.container == resolv_conf);
    if config.network == Network::Host && !explicit && resolv_conf.exists() {
        config.volumes.push(Volume {
            host: resolv_conf.to_path_buf(),
            container: resolv_conf.to_path_buf(),
            read_only: true,
        });
    }
    config
}

/// Checks what must exist on the host before anything is created.
fn check_host(config: &RunConfig) -> Result<(), RunError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(anyhow::anyhow!(
            "unionfs run needs root: it mounts filesystems, creates namespaces and cgroups; run it with sudo"
        )
        .into());
    }
    for (index, layer) in config.layer_specs.iter().enumerate() {
        let is_container_layer = index == 0 && layer.writable;
        match std::fs::metadata(&layer.path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(anyhow::anyhow!(
                    "layer {} is not a directory; give directories in LAYERS",
                    layer.path.display()
                )
                .into());
            }
            Err(_) if is_container_layer => {}
            Err(err) => {
                return Err(anyhow::anyhow!(
                    "layer {} not found: {err}; check the path, or build the image layer first",
                    layer.path.display()
                )
                .into());
            }
        }
    }
    for volume in &config.volumes {
        if let Err(err) = std::fs::metadata(&volume.host) {
            return Err(anyhow::anyhow!(
                "volume source {} not found on the host: {err}; create it or fix the path in --volume",
                volume.host.display()
            )
            .into());
        }
    }
    Ok(())
}

/// Creates `STATE_DIR/NAME/rootfs`; fails when a container of that name
/// runs or left its state behind.
fn create_state_dir(name: &str, teardown: &mut Teardown) -> Result<PathBuf> {
    crate::rundir::ensure_dir(Path::new(STATE_DIR))
        .with_context(|| format!("failed to create the state directory {STATE_DIR}"))?;
    let state_dir = Path::new(STATE_DIR).join(name);
    match std::fs::create_dir(&state_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "a container named {name} is running, or an earlier run left {} behind; choose another --name, or unmount and remove that directory",
            state_dir.display()
        ),
        Err(err) => {
            return Err(err).with_context(|| format!("failed to create {}", state_dir.display()));
        }
    }
    teardown.state_dir = Some(state_dir.clone());
    let mountpoint = state_dir.join("rootfs");
    std::fs::create_dir(&mountpoint)
        .with_context(|| format!("failed to create {}", mountpoint.display()))?;
    Ok(mountpoint)
}

/// Creates the container layer if missing; returns true if it did.
fn create_container_layer(layer: &Path) -> Result<bool> {
    match std::fs::create_dir(layer) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err).with_context(|| {
            format!(
                "failed to create the container layer {}; check that its parent directory exists",
                layer.display()
            )
        }),
    }
}

/// PID 1 of a started container.
struct Started {
    /// PID 1's pid in the launcher's PID namespace.
    init: Pid,
    master: Option<OwnedFd>,
}

/// The pipes and socket shared by the launcher and the container's first
/// processes.
struct Channels {
    go: (OwnedFd, OwnedFd),
    pid: (OwnedFd, OwnedFd),
    error: (OwnedFd, OwnedFd),
    tty: Option<(UnixStream, UnixStream)>,
    /// The container's stdin, stdout and stderr with `run -d`; otherwise
    /// it inherits the launcher's.
    stdio: Option<ContainerStdio>,
}

/// Forks the intermediate process and PID 1, and waits until PID 1 ran
/// `execve` or failed.
fn spawn(
    config: &RunConfig,
    rootfs: &Path,
    cgroup: &Cgroup,
    stdio: Option<ContainerStdio>,
) -> Result<Started, RunError> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe");
    let channels = Channels {
        go: pipe()?,
        pid: pipe()?,
        error: pipe()?,
        tty: match config.tty {
            true => Some(UnixStream::pair().context("failed to create the terminal socket")?),
            false => None,
        },
        stdio,
    };
    let threads = thread_count().context("failed to count the launcher's threads")?;
    if threads != 1 {
        return Err(anyhow::anyhow!(
            "the launcher has {threads} threads, but namespaces can only be entered safely by a single-threaded process"
        )
        .into());
    }
    match fork_single_threaded().context("failed to fork")? {
        Forked::Child => intermediate(config, rootfs, channels),
        Forked::Parent(child) => launcher_side(child, cgroup, channels),
    }
}

fn launcher_side(child: Pid, cgroup: &Cgroup, channels: Channels) -> Result<Started, RunError> {
    let Channels {
        go,
        pid,
        error,
        tty,
        stdio,
    } = channels;
    drop((go.0, pid.1, error.1, stdio));
    let tty_socket = tty.map(|(launcher_end, _)| launcher_end);

    let joined = cgroup.add(child);
    if joined.is_ok() {
        let _ = File::from(go.1).write_all(b"1");
    } else {
        // Closing "go" unwritten makes the intermediate process exit.
        drop(go.1);
    }
    let intermediate_status =
        waitpid(child, None).context("failed to wait for the intermediate process")?;
    joined.context("failed to move the container into its cgroup")?;

    let mut pid_bytes = Vec::new();
    let _ = File::from(pid.0).read_to_end(&mut pid_bytes);
    let mut report = Vec::new();
    File::from(error.0)
        .read_to_end(&mut report)
        .context("failed to read the container's start report")?;
    let init = <[u8; 4]>::try_from(pid_bytes.as_slice())
        .ok()
        .map(|bytes| Pid::from_raw(i32::from_le_bytes(bytes)));

    if !report.is_empty() {
        if let Some(init) = init {
            let _ = waitpid(init, None);
        }
        return Err(decode_report(&report));
    }
    let Some(init) = init else {
        return Err(anyhow::anyhow!(
            "the container's first process ended before starting PID 1 ({intermediate_status:?})"
        )
        .into());
    };
    let master = match tty_socket {
        Some(socket) => Some(
            tty::receive_master(socket.as_fd())
                .context("failed to receive the container's terminal")?,
        ),
        None => None,
    };
    Ok(Started { init, master })
}

/// Runs the intermediate process: waits to be moved into the cgroup, enters
/// the new namespaces, forks PID 1 and reports its pid. Never returns.
fn intermediate(config: &RunConfig, rootfs: &Path, channels: Channels) -> ! {
    let Channels {
        go,
        pid,
        error,
        tty,
        stdio,
    } = channels;
    drop((go.1, pid.0, error.0));
    let tty_socket = tty.map(|(_, container_end)| OwnedFd::from(container_end));
    let error_pipe = File::from(error.1);
    let fail = |message: String| -> ! {
        send_report(
            &error_pipe,
            &InitError {
                status: EXIT_LAUNCH_FAILED,
                message,
            },
        );
        std::process::exit(EXIT_LAUNCH_FAILED)
    };

    if let Err(err) = crate::sys::exec::reset_signals() {
        fail(format!("failed to reset signal handlers: {err}"));
    }
    if let Some(stdio) = stdio {
        if let Err(err) = stdio.install() {
            fail(format!(
                "failed to connect the container's output to its logs: {err}"
            ));
        }
    }
    // Not dumpable: no other process may open /proc/PID/exe, the host binary.
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        fail(format!("failed to clear the dumpable flag: {err}"));
    }
    let mut go_byte = [0u8; 1];
    if File::from(go.0).read_exact(&mut go_byte).is_err() {
        std::process::exit(EXIT_LAUNCH_FAILED);
    }

    let sys = LinuxSyscalls::new(rootfs.to_path_buf(), tty_socket);
    if let Err(err) = sys.unshare(init::namespace_flags(config.network)) {
        fail(format!(
            "failed to create the container's namespaces: {err}"
        ));
    }
    match fork_single_threaded() {
        Err(err) => fail(format!("failed to fork the container's PID 1: {err}")),
        Ok(Forked::Parent(init)) => {
            let _ = File::from(pid.1).write_all(&init.as_raw().to_le_bytes());
            std::process::exit(0);
        }
        Ok(Forked::Child) => {
            drop(pid.1);
            let error = init::run(&sys, config);
            send_report(&error_pipe, &error);
            std::process::exit(error.status);
        }
    }
}

/// Writes an error report: the exit status, then the message.
fn send_report(mut pipe: &File, error: &InitError) {
    let mut report = error.status.to_le_bytes().to_vec();
    report.extend_from_slice(error.message.as_bytes());
    let _ = pipe.write_all(&report);
}

fn decode_report(report: &[u8]) -> RunError {
    let (status, message) = match report.split_first_chunk::<4>() {
        Some((status, message)) => (
            i32::from_le_bytes(*status),
            String::from_utf8_lossy(message),
        ),
        None => (EXIT_LAUNCH_FAILED, String::from_utf8_lossy(report)),
    };
    RunError {
        status,
        error: anyhow::anyhow!("{message}"),
    }
}
