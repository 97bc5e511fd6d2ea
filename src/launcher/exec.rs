//! `unionfs exec CONTAINER -- COMMAND`: runs a command in a running
//! container, as `docker exec` does.
//!
//! Process layout, as for `unionfs run`:
//! - this process stays outside the container and is a child subreaper;
//! - a first child, not dumpable, joins the container's cgroup, then every
//!   namespace of its PID 1 in one `setns` call on a pidfd (Linux 5.8+),
//!   forks the command's process and exits;
//! - the command's process, now in the container's PID namespace, takes
//!   the container's user, capabilities and `no_new_privs`, and runs
//!   `execve`. It is reparented to this process, which waits for it and
//!   returns its exit status.
//!
//! Every step that can fail happens in the two children, which only exit
//! on failure. The container's own processes and its cgroup settings are
//! never touched, so a failing exec leaves the container as it was.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use caps::Capability;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::args::ExecArgs;
use super::capabilities::Capabilities;
use super::config::{self, env_strings, set_env};
use super::container::RunError;
use super::init::{self, EXIT_LAUNCH_FAILED, InitError};
use super::linux::LinuxSyscalls;
use super::record::{self, Observed};
use super::signals::SignalPipe;
use super::supervisor::Supervisor;
use super::syscalls::{StdioPlan, Syscalls};
use super::tty::{self, RawMode};
use super::user::UserSpec;
use crate::sys::process::{Forked, fork_single_threaded, thread_count};

/// Namespaces the command joins: all that `unionfs run` creates.
const NAMESPACES: [CloneFlags; 6] = [
    CloneFlags::CLONE_NEWNS,
    CloneFlags::CLONE_NEWUTS,
    CloneFlags::CLONE_NEWIPC,
    CloneFlags::CLONE_NEWNET,
    CloneFlags::CLONE_NEWPID,
    CloneFlags::CLONE_NEWCGROUP,
];

/// Time the command gets to exit after a forwarded SIGINT or SIGTERM
/// before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The command's settings, resolved before any fork.
struct Plan {
    command: Vec<OsString>,
    env: Vec<(String, OsString)>,
    user: UserSpec,
    workdir: PathBuf,
    capabilities: Capabilities,
    stdio: StdioPlan,
    cgroups: Vec<PathBuf>,
}

/// Runs `unionfs exec` and returns its exit status: the command's, 125 when
/// `unionfs exec` fails, 126 when the command cannot be run, 127 when it is
/// not found.
pub fn main(args: ExecArgs) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    match exec(args) {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("unionfs exec: {:#}", failure.error);
            failure.status
        }
    }
}

fn exec(args: ExecArgs) -> Result<i32, RunError> {
    super::lifecycle::require_root("exec")?;
    let record = record::find(&args.container)?;
    let observed = record.observed();
    if observed != Observed::Running {
        return Err(anyhow!(
            "container {} is not running (status {}); start a new one with `unionfs run`",
            record.name,
            super::lifecycle::status_text(&record, observed)
        )
        .into());
    }
    let pidfd = record.init.and_then(|init| init.open()).ok_or_else(|| {
        anyhow!(
            "container {} is not running: its PID 1 has exited",
            record.name
        )
    })?;
    let plan = plan(&args, &record)?;

    let threads = thread_count().context("failed to count this process's threads")?;
    if threads != 1 {
        return Err(anyhow!(
            "unionfs exec has {threads} threads, but namespaces can only be entered by a single-threaded process"
        )
        .into());
    }
    let mut signals = SignalPipe::install().context("failed to install signal handlers")?;
    nix::sys::prctl::set_child_subreaper(true).context("failed to become a child subreaper")?;
    let (command_pid, master) = start(&plan, &pidfd)?;

    let _raw_mode = if plan.stdio.tty {
        RawMode::enter(std::io::stdin()).context("failed to put the terminal in raw mode")?
    } else {
        None
    };
    let exit = Supervisor {
        init: command_pid,
        signals: &mut signals,
        cgroup: None,
        master,
        relay_stdin: plan.stdio.tty && plan.stdio.interactive,
        stop_timeout: STOP_TIMEOUT,
    }
    .wait()
    .context("failed while waiting for the command")?;
    Ok(exit.status())
}

/// Resolves the command's settings: the container's, with the options of
/// `unionfs exec` on top.
fn plan(args: &ExecArgs, record: &record::Record) -> anyhow::Result<Plan> {
    let mut env = Vec::new();
    for entry in &record.env {
        if let Some((key, value)) = entry.split_once('=') {
            set_env(&mut env, key.to_string(), OsString::from(value));
        }
    }
    if args.tty && !env.iter().any(|(key, _)| key == "TERM") {
        set_env(&mut env, "TERM".to_string(), OsString::from("xterm"));
    }
    for entry in &args.env {
        if let Some((key, value)) = config::parse_env(entry)? {
            set_env(&mut env, key, value);
        }
    }
    let user = match args.user.as_ref().or(record.user.as_ref()) {
        Some(text) => UserSpec::parse(text)?,
        None => UserSpec::root(),
    };
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| record.workdir.clone());
    if !workdir.is_absolute() {
        bail!(
            "invalid --workdir {:?}: give an absolute path inside the container",
            workdir
        );
    }
    let capabilities = record
        .capabilities
        .iter()
        .map(|name| {
            Capability::from_str(name).map_err(|_| {
                anyhow!(
                    "invalid capability {name:?} in the record of container {}",
                    record.name
                )
            })
        })
        .collect::<anyhow::Result<Capabilities>>()?;
    Ok(Plan {
        command: args.command.clone(),
        env,
        user,
        workdir,
        capabilities,
        stdio: StdioPlan {
            tty: args.tty,
            interactive: args.interactive,
        },
        cgroups: record.cgroups.clone(),
    })
}

/// Starts the command in the container; returns its pid and, with `-t`,
/// its terminal's master.
fn start(plan: &Plan, pidfd: &OwnedFd) -> Result<(Pid, Option<OwnedFd>), RunError> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe");
    let (pid_reader, pid_writer) = pipe()?;
    let (report_reader, report_writer) = pipe()?;
    let tty = match plan.stdio.tty {
        true => Some(UnixStream::pair().context("failed to create the terminal socket")?),
        false => None,
    };
    let joiner = match fork_single_threaded().context("failed to fork")? {
        Forked::Child => {
            drop((pid_reader, report_reader));
            let tty_socket = tty.map(|(_, command_end)| OwnedFd::from(command_end));
            join_and_fork(
                plan,
                pidfd,
                pid_writer,
                File::from(report_writer),
                tty_socket,
            )
        }
        Forked::Parent(joiner) => joiner,
    };
    drop((pid_writer, report_writer));
    let tty_socket = tty.map(|(our_end, _)| our_end);

    let joined = waitpid(joiner, None).context("failed to wait for the joining process")?;
    let mut pid_bytes = Vec::new();
    let _ = File::from(pid_reader).read_to_end(&mut pid_bytes);
    let mut report = Vec::new();
    File::from(report_reader)
        .read_to_end(&mut report)
        .context("failed to read the command's start report")?;
    let command_pid = <[u8; 4]>::try_from(pid_bytes.as_slice())
        .ok()
        .map(|bytes| Pid::from_raw(i32::from_le_bytes(bytes)));

    if !report.is_empty() {
        if let Some(pid) = command_pid {
            let _ = waitpid(pid, None);
        }
        return Err(decode_report(&report));
    }
    let Some(command_pid) = command_pid else {
        return Err(
            anyhow!("the joining process ended before starting the command ({joined:?})").into(),
        );
    };
    let master = match tty_socket {
        Some(socket) => Some(
            tty::receive_master(socket.as_fd())
                .context("failed to receive the command's terminal")?,
        ),
        None => None,
    };
    Ok((command_pid, master))
}

/// Runs the joining process: cgroup, namespaces, fork. Never returns.
fn join_and_fork(
    plan: &Plan,
    pidfd: &OwnedFd,
    pid_writer: OwnedFd,
    report: File,
    tty_socket: Option<OwnedFd>,
) -> ! {
    let fail = |message: String| -> ! {
        send_report(
            &report,
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
    // Not dumpable: no process of the container may open /proc/PID/exe,
    // the host binary, while this code runs in its namespaces.
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        fail(format!("failed to clear the dumpable flag: {err}"));
    }
    let me = std::process::id().to_string();
    for cgroup in &plan.cgroups {
        if let Err(err) = std::fs::write(cgroup.join("cgroup.procs"), &me) {
            fail(format!(
                "failed to join the container's cgroup {}: {err}",
                cgroup.display()
            ));
        }
    }
    let flags = NAMESPACES
        .into_iter()
        .fold(CloneFlags::empty(), |all, flag| all | flag);
    if let Err(err) = nix::sched::setns(pidfd, flags) {
        fail(format!("failed to enter the container's namespaces: {err}"));
    }
    match fork_single_threaded() {
        Err(err) => fail(format!(
            "failed to fork the command's process in the container: {err}"
        )),
        Ok(Forked::Parent(command)) => {
            let _ = File::from(pid_writer).write_all(&command.as_raw().to_le_bytes());
            std::process::exit(0);
        }
        Ok(Forked::Child) => {
            drop(pid_writer);
            let sys = LinuxSyscalls::new(PathBuf::from("/"), tty_socket);
            let error = run_command(&sys, plan);
            send_report(&report, &error);
            std::process::exit(error.status);
        }
    }
}

/// Takes the container's identity and runs the command. Returns only on
/// failure.
fn run_command(sys: &dyn Syscalls, plan: &Plan) -> InitError {
    let env = match prepare(sys, plan) {
        Ok(env) => env,
        Err(error) => {
            return InitError {
                status: EXIT_LAUNCH_FAILED,
                message: format!("{error:#}"),
            };
        }
    };
    let error = sys.exec(&plan.command, &env);
    init::exec_failure(&plan.command[0], &error)
}

/// Runs every step before `execve`, in the order `unionfs run` uses for
/// the container's PID 1; returns the command's environment.
fn prepare(sys: &dyn Syscalls, plan: &Plan) -> anyhow::Result<Vec<OsString>> {
    sys.chdir(Path::new("/"))
        .context("failed to enter the container's root")?;
    let passwd = sys
        .read_file(Path::new("/etc/passwd"))
        .context("failed to read /etc/passwd")?;
    let group = sys
        .read_file(Path::new("/etc/group"))
        .context("failed to read /etc/group")?;
    let credentials = plan.user.resolve(&passwd, &group)?;

    let mut env = plan.env.clone();
    if !env.iter().any(|(key, _)| key == "HOME") {
        set_env(
            &mut env,
            "HOME".to_string(),
            credentials.home.clone().into_os_string(),
        );
    }

    sys.limit_bounding_set(&plan.capabilities)
        .context("failed to limit the capability bounding set")?;
    sys.setup_stdio(plan.stdio)
        .context("failed to set up the command's stdin, stdout and stderr")?;
    sys.set_credentials(&credentials).with_context(|| {
        format!(
            "failed to switch to uid {} gid {}",
            credentials.uid, credentials.gid
        )
    })?;
    sys.set_capabilities(&plan.capabilities)
        .context("failed to set the capability sets")?;
    sys.chdir(&plan.workdir).with_context(|| {
        format!(
            "failed to enter --workdir {} as uid {}",
            plan.workdir.display(),
            credentials.uid
        )
    })?;
    sys.set_no_new_privs()
        .context("failed to set no_new_privs")?;
    sys.close_inherited_fds()
        .context("failed to mark inherited descriptors close-on-exec")?;
    Ok(env_strings(&env))
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
        error: anyhow!("{message}"),
    }
}
