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

pub mod args;
pub mod capabilities;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod devices;
pub mod init;
pub mod linux;
pub mod merged;
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
    let config = match RunConfig::from_args(args, random_name()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("unionfs run: {error}");
            return init::EXIT_LAUNCH_FAILED;
        }
    };
    match container::run(&config) {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("unionfs run: {:#}", failure.error);
            failure.status
        }
    }
}

/// Returns a random 12-digit hex name, as Docker's short container ids look.
fn random_name() -> String {
    let mut bytes = [0u8; 6];
    if let Err(err) =
        std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes))
    {
        log::warn!(
            "cannot read /dev/urandom ({err}); naming the container after the launcher's pid"
        );
        return format!("{:012x}", std::process::id());
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
