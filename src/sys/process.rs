//! Process control: fork.

use std::io;

/// The side of a fork the caller is on.
pub enum Forked {
    /// The original process; holds the child's pid.
    Parent(nix::unistd::Pid),
    /// The new process.
    Child,
}

/// Forks the calling process.
///
/// The caller must be single-threaded: after a fork only the calling thread
/// exists in the child, so a lock held by another thread would stay locked.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other thread exists, so the child
    // cannot inherit a lock or allocator state held mid-operation.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Returns the number of threads in this process, from `/proc/self/stat`.
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Field 20 is num_threads; fields after the command name in parentheses
    // are space separated, and the command name may itself contain spaces.
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after_comm
        .split_whitespace()
        .nth(17)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other("cannot parse num_threads in /proc/self/stat"))
}
