//! The pids controller: the maximum number of tasks (processes and threads)
//! in the cgroup. v1 and v2 both use `pids.max`; a fork or clone beyond it
//! fails with EAGAIN, and `pids.events` counts the failures on its `max` line.

use std::path::Path;

use super::error::CgroupError;
use super::files::CgroupFiles;

/// Sets the task limit of the cgroup `dir` to `max`.
pub fn apply(files: &dyn CgroupFiles, dir: &Path, max: u64) -> Result<(), CgroupError> {
    files.write(dir, "pids.max", &max.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    #[test]
    fn apply_writes_pids_max() {
        let dir = fake::cgroup_dir(&[("pids.max", "max\n")]);

        apply(&HostFiles, dir.path(), 64).unwrap();

        assert_eq!(fake::content(dir.path(), "pids.max"), "64");
    }
}
