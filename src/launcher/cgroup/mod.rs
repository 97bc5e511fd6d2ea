//! The container's cgroup: creation with the `docker run` resource limits,
//! joining, kill-all, the empty check, OOM detection and removal.
//!
//! Works on cgroup v1 (a hierarchy per controller or group of controllers),
//! pure cgroup v2, and hybrid hosts with v1 hierarchies beside a unified
//! hierarchy. `layout` detects which from `/proc/self/mountinfo`. The
//! container gets a directory `unionfs/NAME` under the mount point of each
//! hierarchy it joins. The shared `unionfs` parent is created on demand and
//! removed with the last container.
//!
//! One file per controller contains its file formats and writes, through the
//! `CgroupFiles` trait, so each is unit-tested against a temporary directory.

pub mod cpu;
pub mod cpuset;
mod create;
pub mod devices;
pub mod error;
pub mod files;
pub mod freezer;
mod kill;
pub mod layout;
pub mod memory;
pub mod pids;
pub mod unified;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};
use nix::unistd::Pid;

pub use error::CgroupError;
pub use layout::{Controller, Layout, LayoutKind};
pub use memory::{format_memory, parse_memory};

use files::{CgroupFiles, HostFiles};

/// The directory under each hierarchy's mount point that contains the
/// containers' cgroups.
pub const PARENT: &str = "unionfs";

/// How often polling loops reread a control file.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The resource limits of `docker run`, each None when not requested.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (`-m 100m`); swap is not allowed beyond it.
    pub memory: Option<u64>,
    /// CPU bandwidth in CPUs (`--cpus 0.5`), at least 0.01.
    pub cpus: Option<f64>,
    /// Relative CPU weight (`--cpu-shares 512`), 2 to 262144.
    pub cpu_shares: Option<u64>,
    /// CPUs to run on, in the kernel's list format (`--cpuset-cpus 0-1,3`).
    pub cpuset_cpus: Option<String>,
    /// Maximum number of tasks, processes and threads (`--pids-limit 64`).
    pub pids: Option<u64>,
}

impl Limits {
    /// Checks each value against the range the kernel accepts. The error
    /// names the option and the value.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let invalid = |option, value: String, reason: &str| CgroupError::InvalidLimit {
            option,
            value,
            reason: reason.to_string(),
        };

        if self.memory == Some(0) {
            return Err(invalid(
                "--memory",
                "0".to_string(),
                "the limit must be at least 1 byte",
            ));
        }
        if let Some(cpus) = self.cpus {
            if !cpus.is_finite() || cpu::quota_us(cpus) < cpu::MIN_QUOTA_US {
                return Err(invalid(
                    "--cpus",
                    cpus.to_string(),
                    "the value must be at least 0.01, because the kernel's smallest CFS quota is 1 ms per 100 ms period",
                ));
            }
            let host = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cpus > host as f64 {
                return Err(invalid(
                    "--cpus",
                    cpus.to_string(),
                    &format!("this host has {host} CPUs; give at most {host}"),
                ));
            }
        }
        if let Some(shares) = self.cpu_shares {
            if !cpu::SHARES_RANGE.contains(&shares) {
                return Err(invalid(
                    "--cpu-shares",
                    shares.to_string(),
                    "the value must be between 2 and 262144",
                ));
            }
        }
        if let Some(cpus) = &self.cpuset_cpus {
            let parsed = cpuset::parse_cpu_list(cpus)
                .map_err(|reason| invalid("--cpuset-cpus", cpus.clone(), &reason))?;
            if parsed.is_empty() {
                return Err(invalid(
                    "--cpuset-cpus",
                    cpus.clone(),
                    "the list names no CPU",
                ));
            }
        }
        if self.pids == Some(0) {
            return Err(invalid(
                "--pids-limit",
                "0".to_string(),
                "the limit must be at least 1",
            ));
        }
        Ok(())
    }

    /// Returns the option that needs `controller`, or None if no limit set
    /// here does.
    pub fn option_needing(&self, controller: Controller) -> Option<&'static str> {
        match controller {
            Controller::Memory => self.memory.map(|_| "--memory"),
            Controller::Cpu if self.cpus.is_some() => Some("--cpus"),
            Controller::Cpu => self.cpu_shares.map(|_| "--cpu-shares"),
            Controller::Cpuset => self.cpuset_cpus.as_ref().map(|_| "--cpuset-cpus"),
            Controller::Pids => self.pids.map(|_| "--pids-limit"),
            Controller::Cpuacct | Controller::Freezer | Controller::Devices => None,
        }
    }
}

/// The cgroup version of one of the container's directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    /// The unified (v2) hierarchy, on a pure v2 or a hybrid host.
    Unified,
}

/// The container's directory in one hierarchy.
#[derive(Clone, Debug)]
struct CgroupDir {
    /// `MOUNT_POINT/unionfs/NAME`.
    path: PathBuf,
    /// `MOUNT_POINT/unionfs`, shared with other containers.
    parent: PathBuf,
    version: Version,
    /// The controllers of this hierarchy the container uses.
    controllers: Vec<Controller>,
}

/// A container's cgroup: one directory in each hierarchy it joins.
///
/// Dropping a `Cgroup` leaves its directories in place, because a forked
/// child has a copy of it too. Call `remove` after the processes are gone.
#[derive(Debug)]
pub struct Cgroup {
    name: String,
    dirs: Vec<CgroupDir>,
    limits: Limits,
}

impl Cgroup {
    /// Detects the host layout and creates the container's cgroup(s) named
    /// `name` (under a `unionfs/` parent), writing the limits. An option the
    /// host cannot honour (controller missing, or not enabled in the v2
    /// subtree) is an error that names the option and the reason. On any
    /// error, every directory this call created is removed again.
    pub fn create(name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        Cgroup::create_in(&Layout::detect()?, name, limits)
    }

    /// Creates the container's cgroup in the hierarchies of `layout`, as
    /// `create` does for the detected layout.
    pub fn create_in(layout: &Layout, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let planned = create::plan(layout, limits, &HostFiles)?;

        let mut cgroup = Cgroup {
            name: name.to_string(),
            dirs: Vec::new(),
            limits: limits.clone(),
        };
        for planned_dir in &planned {
            if let Err(error) = cgroup.add_dir(planned_dir) {
                cgroup.discard();
                return Err(error);
            }
        }
        if let Err(error) = cgroup.restrict_devices() {
            cgroup.discard();
            return Err(error);
        }
        Ok(cgroup)
    }

    /// Limits device access to Docker's default rules: through the v1
    /// devices controller where the host has one, or else a device program
    /// attached to the container's cgroup v2 directory.
    fn restrict_devices(&self) -> Result<(), CgroupError> {
        if let Some(dir) = self.controller_dir(Controller::Devices) {
            debug!("cgroup: device rules in {}", dir.path.display());
            return devices::apply_v1(&HostFiles, &dir.path, devices::DEFAULT_RULES);
        }
        match self.unified_dir() {
            Some(dir) => {
                debug!("cgroup: device program on {}", dir.path.display());
                devices::attach_v2(&dir.path, devices::DEFAULT_RULES)
            }
            None => Err(CgroupError::NoDeviceControl),
        }
    }

    /// Opens the existing cgroup of container `name`, to kill what is left
    /// in it and remove it after its launcher died. Returns None if no
    /// hierarchy has a directory for it. The limits are not read back.
    pub fn open(name: &str) -> Result<Option<Cgroup>, CgroupError> {
        validate_name(name)?;
        let layout = Layout::detect()?;
        let mut dirs = Vec::new();
        let hierarchies = layout
            .v1
            .iter()
            .map(|hierarchy| (&hierarchy.mount_point, Version::V1, &hierarchy.controllers))
            .chain(layout.unified.iter().map(|hierarchy| {
                (
                    &hierarchy.mount_point,
                    Version::Unified,
                    &hierarchy.controllers,
                )
            }));
        for (mount_point, version, controllers) in hierarchies {
            let parent = mount_point.join(PARENT);
            let path = parent.join(name);
            if path.is_dir() {
                dirs.push(CgroupDir {
                    path,
                    parent,
                    version,
                    controllers: controllers.clone(),
                });
            }
        }
        if dirs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Cgroup {
            name: name.to_string(),
            dirs,
            limits: Limits::default(),
        }))
    }

    /// Creates the directory in one hierarchy and writes its limits. The
    /// directory is recorded before the writes, so `discard` removes it if
    /// one fails.
    fn add_dir(&mut self, planned: &create::PlannedDir) -> Result<(), CgroupError> {
        let dir = create::create_dir(&HostFiles, planned, &self.name)?;
        self.dirs.push(dir);
        let dir = &self.dirs[self.dirs.len() - 1];
        create::apply_limits(&HostFiles, dir, &self.limits)
    }

    /// Returns the container's name, the last component of each directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the container's directories, one per hierarchy.
    pub fn paths(&self) -> Vec<&Path> {
        self.dirs.iter().map(|dir| dir.path.as_path()).collect()
    }

    /// Returns the directory that carries `controller`, or None if the
    /// container does not use it.
    pub fn path(&self, controller: Controller) -> Option<&Path> {
        self.controller_dir(controller)
            .map(|dir| dir.path.as_path())
    }

    /// Returns the container's directory in the unified hierarchy, if the
    /// host has one.
    pub fn unified_path(&self) -> Option<&Path> {
        self.unified_dir().map(|dir| dir.path.as_path())
    }

    pub fn memory_limit(&self) -> Option<u64> {
        self.limits.memory
    }

    /// Moves process `pid`, with all its threads, into every hierarchy of the
    /// container: all v1 controllers used, plus the unified hierarchy on a
    /// hybrid host. A process that then calls `unshare(CLONE_NEWCGROUP)` gets
    /// these directories as its cgroup roots.
    pub fn add(&self, pid: Pid) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            HostFiles.write(&dir.path, "cgroup.procs", &pid.to_string())?;
        }
        debug!("cgroup: added process {pid} to {}", self.name);
        Ok(())
    }

    /// Returns the processes in the container's cgroup, from every hierarchy,
    /// sorted and without duplicates.
    pub fn procs(&self) -> Result<Vec<Pid>, CgroupError> {
        let mut all = BTreeSet::new();
        for dir in &self.dirs {
            all.extend(read_procs(&dir.path)?.into_iter().map(Pid::as_raw));
        }
        Ok(all.into_iter().map(Pid::from_raw).collect())
    }

    /// Returns true if the kernel's OOM killer killed a process in this
    /// cgroup: the `oom_kill` counter of v1 `memory.oom_control` or v2
    /// `memory.events`. Returns false if the container has no memory cgroup.
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        let Some(dir) = self.controller_dir(Controller::Memory) else {
            return Ok(false);
        };
        let kills = match dir.version {
            Version::V1 => memory::oom_kills_v1(&HostFiles, &dir.path)?,
            Version::Unified => memory::oom_kills_v2(&HostFiles, &dir.path)?,
        };
        Ok(kills > 0)
    }

    /// Returns the CPU time used by the container's processes so far, from
    /// v1 `cpuacct.usage` or else the unified `cpu.stat`. Returns None if the
    /// container joined neither.
    pub fn cpu_usage(&self) -> Result<Option<Duration>, CgroupError> {
        if let Some(dir) = self.controller_dir(Controller::Cpuacct) {
            return cpu::usage_v1(&HostFiles, &dir.path).map(Some);
        }
        match self.unified_dir() {
            Some(dir) => cpu::usage_v2(&HostFiles, &dir.path).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the cgroups with rmdir (never a recursive delete), deepest
    /// first: the container's directory in each hierarchy, then the shared
    /// `unionfs` parent if no other container uses it. Fails while a process
    /// is left; every directory is still tried, and the first error returned.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        let mut first_error = None;

        for dir in std::mem::take(&mut self.dirs).iter().rev() {
            match remove_dir(&dir.path) {
                Ok(()) => remove_parent_if_unused(&dir.parent),
                Err(error) => {
                    warn!("cgroup: {error}");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => {
                debug!("cgroup: removed {}", self.name);
                Ok(())
            }
        }
    }

    /// Removes what `create_in` made before it failed, logging what cannot
    /// be removed.
    fn discard(&mut self) {
        for dir in std::mem::take(&mut self.dirs).iter().rev() {
            match remove_dir(&dir.path) {
                Ok(()) => remove_parent_if_unused(&dir.parent),
                Err(error) => warn!("cgroup: {error}"),
            }
        }
    }

    fn unified_dir(&self) -> Option<&CgroupDir> {
        self.dirs.iter().find(|dir| dir.version == Version::Unified)
    }

    fn controller_dir(&self, controller: Controller) -> Option<&CgroupDir> {
        self.dirs
            .iter()
            .find(|dir| dir.controllers.contains(&controller))
    }
}

/// Returns the processes listed in `dir/cgroup.procs`.
pub fn read_procs(dir: &Path) -> Result<Vec<Pid>, CgroupError> {
    let content = HostFiles.read(dir, "cgroup.procs")?;

    let mut pids = Vec::new();
    for line in content.lines() {
        match line.trim().parse::<i32>() {
            Ok(pid) => pids.push(Pid::from_raw(pid)),
            Err(_) => {
                return Err(CgroupError::Parse {
                    path: dir.join("cgroup.procs"),
                    content,
                });
            }
        }
    }
    Ok(pids)
}

/// Checks that `name` can be a single directory name in a cgroup hierarchy.
fn validate_name(name: &str) -> Result<(), CgroupError> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name == "." || name == ".." {
        "the name must not be . or .."
    } else if name.contains(['/', '\0']) {
        "the name must not contain / or a NUL byte"
    } else if name.len() > 255 {
        "the name is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(CgroupError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Removes the cgroup directory `path`; one that is already gone counts as
/// removed.
fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => {
            let hint = if error.raw_os_error() == Some(libc::EBUSY) {
                "; a process is still in it, so kill every process and wait until it is empty first"
            } else {
                ""
            };
            Err(CgroupError::Remove {
                path: path.to_path_buf(),
                error,
                hint,
            })
        }
    }
}

/// Removes the shared `unionfs` parent unless another container's cgroup is
/// still in it (EBUSY) or another launcher removed it first.
fn remove_parent_if_unused(parent: &Path) {
    match fs::remove_dir(parent) {
        Ok(()) => debug!("cgroup: removed {}", parent.display()),
        Err(error) => match error.raw_os_error() {
            Some(libc::EBUSY | libc::ENOTEMPTY | libc::ENOENT) => {}
            _ => warn!("cgroup: failed to remove {}: {error}", parent.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_name_rejects_paths() {
        for name in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            let error = validate_name(name).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid cgroup name"),
                "{name:?}: {error}"
            );
        }
        validate_name("test-1").unwrap();
    }

    #[test]
    fn limits_validate_ranges() {
        let cases = [
            (
                Limits {
                    memory: Some(0),
                    ..Limits::default()
                },
                "invalid --memory value 0",
            ),
            (
                Limits {
                    cpus: Some(0.001),
                    ..Limits::default()
                },
                "invalid --cpus value 0.001",
            ),
            (
                Limits {
                    cpus: Some(f64::NAN),
                    ..Limits::default()
                },
                "invalid --cpus value NaN",
            ),
            (
                Limits {
                    cpus: Some(100_000.0),
                    ..Limits::default()
                },
                "invalid --cpus value 100000",
            ),
            (
                Limits {
                    cpu_shares: Some(1),
                    ..Limits::default()
                },
                "invalid --cpu-shares value 1",
            ),
            (
                Limits {
                    cpu_shares: Some(262_145),
                    ..Limits::default()
                },
                "invalid --cpu-shares value 262145",
            ),
            (
                Limits {
                    cpuset_cpus: Some("0-".to_string()),
                    ..Limits::default()
                },
                "invalid --cpuset-cpus value 0-",
            ),
            (
                Limits {
                    cpuset_cpus: Some(" ".to_string()),
                    ..Limits::default()
                },
                "the list names no CPU",
            ),
            (
                Limits {
                    pids: Some(0),
                    ..Limits::default()
                },
                "invalid --pids-limit value 0",
            ),
        ];
        for (limits, expected) in cases {
            let error = limits.validate().unwrap_err();
            assert!(error.to_string().contains(expected), "{limits:?}: {error}");
        }
    }

    #[test]
    fn limits_validate_accepts_docker_values() {
        let limits = Limits {
            memory: Some(100 << 20),
            cpus: Some(0.01),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0-1,3".to_string()),
            pids: Some(64),
        };

        limits.validate().unwrap();
    }

    #[test]
    fn option_needing_names_cli_options() {
        let limits = Limits {
            cpu_shares: Some(512),
            pids: Some(8),
            ..Limits::default()
        };

        assert_eq!(limits.option_needing(Controller::Cpu), Some("--cpu-shares"));
        assert_eq!(
            limits.option_needing(Controller::Pids),
            Some("--pids-limit")
        );
        assert_eq!(limits.option_needing(Controller::Memory), None);
        assert_eq!(limits.option_needing(Controller::Freezer), None);
    }
}
