//! Killing every process of a container's cgroup and waiting until it is
//! empty.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, warn};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::CgroupError;
use super::files::HostFiles;
use super::layout::Controller;
use super::{Cgroup, CgroupDir, POLL_INTERVAL, Version, freezer, read_procs, unified};

/// How long `kill_all` waits for a freeze before it sends SIGKILL anyway.
/// A process in uninterruptible sleep can hold a freeze back indefinitely.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many rounds of SIGKILL `kill_all` sends when it cannot freeze the
/// cgroup and new processes keep appearing.
const MAX_KILL_ROUNDS: usize = 100;

impl Cgroup {
    /// Kills every process in the cgroup through `cgroup.kill` on the unified
    /// hierarchy where the kernel has it. Otherwise it freezes the cgroup (v2
    /// `cgroup.freeze` or the v1 freezer), sends SIGKILL to each process and
    /// thaws, repeated until no new process shows up. Without any freezer it
    /// sends SIGKILL round by round, which a fast fork loop can outrun.
    /// Returns once the signals are sent, and `wait_empty` waits for the
    /// processes to exit.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if let Some(dir) = self.unified_dir() {
            if unified::kill(&HostFiles, &dir.path)? {
                debug!(
                    "cgroup: killed every process in {} through cgroup.kill",
                    dir.path.display()
                );
                return Ok(());
            }
            if unified::can_freeze(&HostFiles, &dir.path) {
                return self.kill_rounds(Some((dir, Freezer::Unified)));
            }
        }
        match self.controller_dir(Controller::Freezer) {
            Some(dir) => self.kill_rounds(Some((dir, Freezer::V1))),
            None => self.kill_rounds(None),
        }
    }

    /// Sends SIGKILL to each process not signalled yet, with the cgroup
    /// frozen during each round if `freezer` is given, until a round finds
    /// no new process.
    fn kill_rounds(&self, freezer: Option<(&CgroupDir, Freezer)>) -> Result<(), CgroupError> {
        let mut signalled = HashSet::new();

        for _ in 0..MAX_KILL_ROUNDS {
            if let Some((dir, kind)) = freezer {
                match kind.freeze(&dir.path) {
                    Ok(true) => {}
                    Ok(false) => warn!(
                        "cgroup: {} did not freeze within {FREEZE_TIMEOUT:?}; killing its processes anyway",
                        dir.path.display()
                    ),
                    Err(error) => {
                        // The freeze request may have gone through before a read failed.
                        let _ = kind.thaw(&dir.path);
                        return Err(error);
                    }
                }
            }

            let result = self.signal_new(&mut signalled);

            // A frozen process dies of SIGKILL only once thawed, so thaw even
            // if signalling failed.
            if let Some((dir, kind)) = freezer {
                kind.thaw(&dir.path)?;
            }
            if result? == 0 {
                return Ok(());
            }
        }

        let path = freezer.map_or_else(|| self.dirs[0].path.clone(), |(dir, _)| dir.path.clone());
        Err(CgroupError::KillIncomplete {
            path,
            rounds: MAX_KILL_ROUNDS,
        })
    }

    /// Sends SIGKILL to each process in the cgroup that is not in
    /// `signalled`, adds it there, and returns how many it signalled.
    fn signal_new(&self, signalled: &mut HashSet<Pid>) -> Result<usize, CgroupError> {
        let mut count = 0;

        for dir in &self.dirs {
            for pid in read_procs(&dir.path)? {
                if !signalled.insert(pid) {
                    continue;
                }
                match kill(pid, Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => count += 1,
                    Err(error) => {
                        return Err(CgroupError::Kill {
                            pid,
                            path: dir.path.clone(),
                            error,
                        });
                    }
                }
            }
        }
        Ok(count)
    }

    /// Waits until no process is left, up to `timeout`: `populated 0` in the
    /// unified `cgroup.events` where the host has a unified hierarchy, and an
    /// empty `cgroup.procs` in every v1 hierarchy.
    pub fn wait_empty(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;

        loop {
            if !self.is_populated()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let path = self.unified_dir().unwrap_or(&self.dirs[0]).path.clone();
                let pids = self.procs().unwrap_or_default();
                return Err(CgroupError::TimedOut {
                    path,
                    timeout,
                    pids,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn is_populated(&self) -> Result<bool, CgroupError> {
        for dir in &self.dirs {
            let populated = match dir.version {
                Version::Unified => unified::is_populated(&HostFiles, &dir.path)?,
                Version::V1 => !read_procs(&dir.path)?.is_empty(),
            };
            if populated {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The two kinds of freezer.
#[derive(Clone, Copy, Debug)]
enum Freezer {
    /// The v1 freezer controller's `freezer.state`.
    V1,
    /// The unified hierarchy's `cgroup.freeze`.
    Unified,
}

impl Freezer {
    fn freeze(self, dir: &Path) -> Result<bool, CgroupError> {
        match self {
            Freezer::V1 => freezer::freeze(&HostFiles, dir, FREEZE_TIMEOUT),
            Freezer::Unified => unified::freeze(&HostFiles, dir, FREEZE_TIMEOUT),
        }
    }

    fn thaw(self, dir: &Path) -> Result<(), CgroupError> {
        match self {
            Freezer::V1 => freezer::thaw(&HostFiles, dir),
            Freezer::Unified => unified::thaw(&HostFiles, dir),
        }
    }
}
