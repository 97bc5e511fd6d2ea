//! The container launcher behind `unionfs run`: the union mount becomes a
//! container's root filesystem, as Docker runs a container on AUFS or
//! overlay2, with new namespaces, cgroup limits, `pivot_root` onto the
//! merged view and the user's command as PID 1.
//!
//! - `args` and `config`: the command line and its validation.
//! - `container`: the launcher's side of one run (forks, pipes, order).
//! - `init`, `rootfs`, `devices`: what the container's PID 1 does before
//!   `execve`, as calls on the `syscalls::Syscalls` trait, which `linux`
//!   implements and a recording fake checks in the unit tests.
//! - `capabilities`, `user`: the capability set and `--user` lookup.
//! - `merged`: the FUSE server for the root, run as its own process.
//! - `supervisor`, `signals`, `tty`: waiting, signal forwarding, terminals.
//! - `teardown`: removal of everything a run created, in order.
//! - `cgroup`: the container's cgroups on v1, v2 and hybrid hosts.
//! - `record`: each container's state under `/run/unionfs/ID`.
//! - `detach`, `lifecycle`, `exec`: `run -d` and its monitor, `ps`,
//!   `logs`, `stop`, `rm`, and `exec`.

pub mod args;
pub mod capabilities;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod detach;
pub mod devices;
pub mod exec;
pub mod image;
pub mod init;
pub mod lifecycle;
pub mod linux;
pub mod merged;
pub mod record;
pub mod rootfs;
pub mod signals;
pub mod supervisor;
pub mod syscalls;
pub mod teardown;
pub mod tty;
pub mod user;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::io::Read;

pub use args::RunArgs;
use config::RunConfig;

/// Runs `unionfs run` and returns its exit status: the command's, 125 when
/// the launcher fails, 126 when the command cannot be run, 127 when it is
/// not found.
pub fn main(args: RunArgs) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    let args = match image::apply(args) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("unionfs run: --image: {error}");
            return init::EXIT_LAUNCH_FAILED;
        }
    };
    let config = match RunConfig::from_args(args, random_id()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("unionfs run: {error}");
            return init::EXIT_LAUNCH_FAILED;
        }
    };
    if config.detach {
        return detach::run(&config);
    }
    match container::run(&config, None) {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("unionfs run: {:#}", failure.error);
            failure.status
        }
    }
}

/// Returns a random container id of 64 hex digits, as Docker's look.
fn random_id() -> String {
    let mut bytes = [0u8; record::ID_LENGTH / 2];
    if let Err(err) =
        std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes))
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        log::warn!(
            "cannot read /dev/urandom ({err}); deriving the container id from the time and pid"
        );
        return format!("{nanos:056x}{:08x}", std::process::id());
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
