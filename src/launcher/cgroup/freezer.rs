//! The v1 freezer controller. Writing `FROZEN` to `freezer.state` stops every
//! process in the cgroup. The file reads `FREEZING` until all have stopped,
//! and a process in uninterruptible sleep can delay that. A frozen process
//! receives SIGKILL but dies only when thawed.

use std::path::Path;
use std::time::{Duration, Instant};

use super::POLL_INTERVAL;
use super::error::CgroupError;
use super::files::CgroupFiles;

/// Freezes the cgroup `dir` and waits up to `timeout` for `freezer.state`
/// to read `FROZEN`. Returns false if it was not frozen in time.
pub fn freeze(files: &dyn CgroupFiles, dir: &Path, timeout: Duration) -> Result<bool, CgroupError> {
    files.write(dir, "freezer.state", "FROZEN")?;

    let deadline = Instant::now() + timeout;
    loop {
        if files.read(dir, "freezer.state")?.trim() == "FROZEN" {
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
    files.write(dir, "freezer.state", "THAWED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    #[test]
    fn freeze_and_thaw_write_state() {
        let dir = fake::cgroup_dir(&[("freezer.state", "THAWED\n")]);

        assert!(freeze(&HostFiles, dir.path(), Duration::from_millis(50)).unwrap());
        assert_eq!(fake::content(dir.path(), "freezer.state"), "FROZEN");
        thaw(&HostFiles, dir.path()).unwrap();
        assert_eq!(fake::content(dir.path(), "freezer.state"), "THAWED");
    }

    #[test]
    fn freeze_error_names_state_file() {
        let dir = fake::cgroup_dir(&[]);

        let error = freeze(&HostFiles, dir.path(), Duration::from_millis(50)).unwrap_err();

        assert!(
            error.to_string().contains("failed to write FROZEN to"),
            "{error}"
        );
        assert!(error.to_string().contains("freezer.state"), "{error}");
    }
}
