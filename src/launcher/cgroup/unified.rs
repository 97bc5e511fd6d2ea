//! The unified (v2) hierarchy's core files, present in every non-root cgroup
//! whatever controllers it has.
//!
//! - `cgroup.subtree_control`: the controllers a cgroup gives its children,
//!   changed by writing `+name`. A child can have a controller only if every
//!   ancestor enables it there.
//! - `cgroup.kill` (Linux 5.14+): writing 1 sends SIGKILL to every process in
//!   the cgroup and its descendants in one step, so a fork loop cannot escape.
//! - `cgroup.freeze` (Linux 5.2+) and the `frozen` line of `cgroup.events`.
//! - `cgroup.events`: `populated 0` once no process is left in the cgroup or
//!   its descendants. Processes that have exited but are not yet reaped no
//!   longer count.

use std::path::Path;
use std::time::{Duration, Instant};

use super::POLL_INTERVAL;
use super::error::CgroupError;
use super::files::{CgroupFiles, read_keyed};
use super::layout::Controller;

/// Returns the controllers that the cgroup `dir` enables for its children.
pub fn subtree_controllers(
    files: &dyn CgroupFiles,
    dir: &Path,
) -> Result<Vec<Controller>, CgroupError> {
    let enabled = files.read(dir, "cgroup.subtree_control")?;
    Ok(enabled
        .split_whitespace()
        .filter_map(Controller::from_name)
        .collect())
}

/// Enables `controllers` for the children of the cgroup `dir`, one write per
/// controller so that an error names the one the kernel rejected.
pub fn enable_controllers(
    files: &dyn CgroupFiles,
    dir: &Path,
    controllers: &[Controller],
) -> Result<(), CgroupError> {
    let enabled = subtree_controllers(files, dir)?;

    for controller in controllers {
        if !enabled.contains(controller) {
            files.write(dir, "cgroup.subtree_control", &format!("+{controller}"))?;
        }
    }
    Ok(())
}

/// Kills every process in the cgroup `dir` through `cgroup.kill`. Returns
/// false, having done nothing, on kernels without it.
pub fn kill(files: &dyn CgroupFiles, dir: &Path) -> Result<bool, CgroupError> {
    if !files.exists(dir, "cgroup.kill") {
        return Ok(false);
    }
    files.write(dir, "cgroup.kill", "1")?;
    Ok(true)
}

/// Returns true if `cgroup.freeze` exists, so the cgroup can be frozen.
pub fn can_freeze(files: &dyn CgroupFiles, dir: &Path) -> bool {
    files.exists(dir, "cgroup.freeze")
}

/// Freezes the cgroup `dir` and waits up to `timeout` for `cgroup.events` to
/// report it frozen. Returns false if it was not frozen in time.
pub fn freeze(files: &dyn CgroupFiles, dir: &Path, timeout: Duration) -> Result<bool, CgroupError> {
    files.write(dir, "cgroup.freeze", "1")?;

    let deadline = Instant::now() + timeout;
    loop {
        if read_keyed(files, dir, "cgroup.events", "frozen")? == Some(1) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Thaws the cgroup `dir`.
pub fn thaw(files: &dyn CgroupFiles, dir: &Path) -> Result<(), CgroupError> {
    files.write(dir, "cgroup.freeze", "0")
}

/// Returns true while a process is left in the cgroup `dir` or below it.
pub fn is_populated(files: &dyn CgroupFiles, dir: &Path) -> Result<bool, CgroupError> {
    match read_keyed(files, dir, "cgroup.events", "populated")? {
        Some(populated) => Ok(populated != 0),
        None => Err(CgroupError::Parse {
            path: dir.join("cgroup.events"),
            content: files.read(dir, "cgroup.events")?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    #[test]
    fn enable_writes_missing_controllers_only() {
        let dir = fake::cgroup_dir(&[("cgroup.subtree_control", "cpu\n")]);

        enable_controllers(&HostFiles, dir.path(), &[Controller::Cpu]).unwrap();
        assert_eq!(
            fake::content(dir.path(), "cgroup.subtree_control"),
            "cpu\n",
            "cpu is enabled already"
        );

        // The fake file keeps only the last write, unlike the kernel's.
        enable_controllers(
            &HostFiles,
            dir.path(),
            &[Controller::Cpu, Controller::Memory],
        )
        .unwrap();
        assert_eq!(
            fake::content(dir.path(), "cgroup.subtree_control"),
            "+memory"
        );
    }

    #[test]
    fn subtree_controllers_ignores_unknown() {
        let dir = fake::cgroup_dir(&[(
            "cgroup.subtree_control",
            "cpuset cpu io memory hugetlb pids\n",
        )]);

        let enabled = subtree_controllers(&HostFiles, dir.path()).unwrap();

        assert_eq!(
            enabled,
            vec![
                Controller::Cpuset,
                Controller::Cpu,
                Controller::Memory,
                Controller::Pids
            ]
        );
    }

    #[test]
    fn kill_writes_cgroup_kill() {
        let dir = fake::cgroup_dir(&[("cgroup.kill", "")]);

        assert!(kill(&HostFiles, dir.path()).unwrap());
        assert_eq!(fake::content(dir.path(), "cgroup.kill"), "1");
    }

    #[test]
    fn kill_without_cgroup_kill() {
        let dir = fake::cgroup_dir(&[]);

        assert!(!kill(&HostFiles, dir.path()).unwrap());
        assert!(!dir.path().join("cgroup.kill").exists());
    }

    #[test]
    fn freeze_and_thaw() {
        let dir = fake::cgroup_dir(&[
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 1\n"),
        ]);

        assert!(freeze(&HostFiles, dir.path(), Duration::from_millis(50)).unwrap());
        assert_eq!(fake::content(dir.path(), "cgroup.freeze"), "1");
        thaw(&HostFiles, dir.path()).unwrap();
        assert_eq!(fake::content(dir.path(), "cgroup.freeze"), "0");
    }

    #[test]
    fn freeze_times_out() {
        let dir = fake::cgroup_dir(&[
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 0\n"),
        ]);

        assert!(!freeze(&HostFiles, dir.path(), Duration::from_millis(30)).unwrap());
    }

    #[test]
    fn populated_from_cgroup_events() {
        let busy = fake::cgroup_dir(&[("cgroup.events", "populated 1\nfrozen 0\n")]);
        let empty = fake::cgroup_dir(&[("cgroup.events", "populated 0\nfrozen 0\n")]);
        let broken = fake::cgroup_dir(&[("cgroup.events", "frozen 0\n")]);

        assert!(is_populated(&HostFiles, busy.path()).unwrap());
        assert!(!is_populated(&HostFiles, empty.path()).unwrap());
        assert!(is_populated(&HostFiles, broken.path()).is_err());
    }
}
