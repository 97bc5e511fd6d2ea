//! The container side: what the container's PID 1 does between `fork` and
//! `execve`, as one ordered sequence of [`Syscalls`].
//!
//! Namespaces first (in the intermediate process, see `container`), then
//! the mount table and `pivot_root`, then the terminal, credentials,
//! capabilities and `no_new_privs`, and last `execve`. The order matters
//! because mounts need `CAP_SYS_ADMIN`, which the capability step drops.
//! The terminal needs the container's `/dev/ptmx`. `chdir` to the working
//! directory runs as the final user, so its permissions apply.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use anyhow::{Context, Result};
use nix::sched::CloneFlags;

use super::config::{self, Network, RunConfig};
use super::rootfs;
use super::syscalls::{StdioPlan, Syscalls};

/// Exit status when the launcher itself fails, as `docker run` uses it.
pub const EXIT_LAUNCH_FAILED: i32 = 125;
/// Exit status when the command exists but cannot be run.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A failure before `execve` completed, with the exit status it maps to.
#[derive(Debug)]
pub struct InitError {
    pub status: i32,
    pub message: String,
}

/// Returns the namespaces a container gets: UTS, IPC, PID, mount and
/// cgroup, and network unless it shares the host's.
pub fn namespace_flags(network: Network) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Sets up the container and runs its command. Returns only on failure.
pub fn run(sys: &dyn Syscalls, config: &RunConfig) -> InitError {
    let launch_failed = |error: anyhow::Error| InitError {
        status: EXIT_LAUNCH_FAILED,
        message: format!("{error:#}"),
    };
    let env = match prepare(sys, config) {
        Ok(env) => env,
        Err(error) => return launch_failed(error),
    };
    // NOTE: the command itself is PID 1, so orphans in the container are
    // its children to reap, as in Docker without --init. What is left when
    // it exits is killed and reaped by the kernel.
    let error = sys.exec(&config.command, &env);
    exec_failure(&config.command[0], &error)
}

/// Maps a failed `execve` of `command` to its exit status and message:
/// 127 when it is not found, 126 when it cannot be run, 125 otherwise.
pub fn exec_failure(command: &OsStr, error: &std::io::Error) -> InitError {
    let command = command.to_string_lossy();
    match error.raw_os_error() {
        Some(libc::ENOENT) => InitError {
            status: EXIT_NOT_FOUND,
            message: format!(
                "command {command:?} not found in the container; check its name and the PATH inside the image"
            ),
        },
        Some(libc::EACCES | libc::ENOEXEC | libc::EISDIR) => InitError {
            status: EXIT_CANNOT_EXECUTE,
            message: format!(
                "command {command:?} cannot be run: {error}; check that it is an executable file for this machine"
            ),
        },
        _ => InitError {
            status: EXIT_LAUNCH_FAILED,
            message: format!("failed to run command {command:?}: {error}"),
        },
    }
}

/// Runs every step before `execve`; returns the command's environment.
fn prepare(sys: &dyn Syscalls, config: &RunConfig) -> Result<Vec<OsString>> {
    rootfs::prepare(sys, config)?;

    let passwd = sys
        .read_file(Path::new("/etc/passwd"))
        .context("failed to read /etc/passwd")?;
    let group = sys
        .read_file(Path::new("/etc/group"))
        .context("failed to read /etc/group")?;
    let credentials = config.user.resolve(&passwd, &group)?;
    let mut env = config.env.clone();
    if !env.iter().any(|(key, _)| key == "HOME") {
        config::set_env(
            &mut env,
            "HOME".to_string(),
            credentials.home.clone().into_os_string(),
        );
    }

    sys.limit_bounding_set(&config.capabilities)
        .context("failed to limit the capability bounding set")?;
    sys.setup_stdio(StdioPlan {
        tty: config.tty,
        interactive: config.interactive,
    })
    .context("failed to set up the container's stdin, stdout and stderr")?;
    sys.set_credentials(&credentials).with_context(|| {
        format!(
            "failed to switch to uid {} gid {}",
            credentials.uid, credentials.gid
        )
    })?;
    sys.set_capabilities(&config.capabilities)
        .context("failed to set the capability sets")?;
    sys.chdir(&config.workdir).with_context(|| {
        format!(
            "failed to enter --workdir {} as uid {}",
            config.workdir.display(),
            credentials.uid
        )
    })?;
    sys.set_no_new_privs()
        .context("failed to set no_new_privs")?;
    sys.close_inherited_fds()
        .context("failed to mark inherited descriptors close-on-exec")?;
    Ok(config::env_strings(&env))
}
