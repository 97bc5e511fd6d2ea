//! Creation of the container's cgroup: which hierarchies it joins, the
//! directories `unionfs/NAME` in each, and the limits written into them.
//!
//! The container joins the hierarchy of every controller a limit needs, and
//! also, where the host has them, memory, cpu, cpuacct and pids for their
//! accounting, the v1 freezer for `Cgroup::kill_all` and the v1 devices
//! controller for the device rules. On a hybrid host it
//! joins the unified hierarchy too, for `cgroup.kill` and `cgroup.events`.
//! cpuset is joined only for `--cpuset-cpus`, because a v1 cpuset cgroup
//! needs its CPUs and memory nodes copied in before a process can join.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::debug;

use super::error::CgroupError;
use super::files::CgroupFiles;
use super::layout::{Controller, Layout, Location};
use super::{CgroupDir, Limits, PARENT, Version, cpu, cpuset, memory, pids, unified};

/// Controllers joined when the host has them, even without a limit.
const ALWAYS_JOINED: [Controller; 6] = [
    Controller::Memory,
    Controller::Cpu,
    Controller::Cpuacct,
    Controller::Pids,
    Controller::Freezer,
    Controller::Devices,
];

/// How often creating `unionfs/NAME` is tried when another launcher removes
/// the empty `unionfs` parent between our mkdir of the parent and the child.
const MKDIR_ATTEMPTS: usize = 5;

/// A directory to create for the container, in one hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDir {
    pub mount_point: PathBuf,
    pub version: Version,
    /// The controllers of this hierarchy the container uses.
    pub controllers: Vec<Controller>,
}

/// Decides which hierarchies the container joins and with which controllers,
/// reading `cgroup.subtree_control` of the unified root through `files`.
/// Fails, before anything is created, if a limit needs a controller that no
/// hierarchy offers or that the unified root does not enable for children.
pub fn plan(
    layout: &Layout,
    limits: &Limits,
    files: &dyn CgroupFiles,
) -> Result<Vec<PlannedDir>, CgroupError> {
    let mut planned: Vec<PlannedDir> = Vec::new();
    let delegated = match &layout.unified {
        Some(hierarchy) => unified::subtree_controllers(files, &hierarchy.mount_point)?,
        None => Vec::new(),
    };

    for controller in Controller::ALL {
        let option = limits.option_needing(controller);
        if option.is_none() && !ALWAYS_JOINED.contains(&controller) {
            continue;
        }

        let (mount_point, version) = match layout.locate(controller) {
            Some(Location::V1(hierarchy)) => (&hierarchy.mount_point, Version::V1),
            Some(Location::Unified(hierarchy)) if delegated.contains(&controller) => {
                (&hierarchy.mount_point, Version::Unified)
            }
            Some(Location::Unified(hierarchy)) => {
                let subtree_control = hierarchy.mount_point.join("cgroup.subtree_control");
                let reason = format!(
                    "the root of the cgroup v2 hierarchy does not enable it for its children; enable it with `echo +{controller} > {}`",
                    subtree_control.display()
                );
                require_absent(option, controller, reason)?;
                continue;
            }
            None => {
                require_absent(option, controller, unavailable_reason(layout))?;
                continue;
            }
        };

        match planned
            .iter_mut()
            .find(|dir| &dir.mount_point == mount_point)
        {
            Some(dir) => dir.controllers.push(controller),
            None => planned.push(PlannedDir {
                mount_point: mount_point.clone(),
                version,
                controllers: vec![controller],
            }),
        }
    }

    if let Some(hierarchy) = &layout.unified {
        if !planned.iter().any(|dir| dir.version == Version::Unified) {
            planned.push(PlannedDir {
                mount_point: hierarchy.mount_point.clone(),
                version: Version::Unified,
                controllers: Vec::new(),
            });
        }
    }
    if planned.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    Ok(planned)
}

/// Fails with `reason` if `option` needs the missing `controller`, and only
/// logs it for a controller joined for accounting.
fn require_absent(
    option: Option<&'static str>,
    controller: Controller,
    reason: String,
) -> Result<(), CgroupError> {
    match option {
        Some(option) => Err(CgroupError::Unsupported {
            option,
            controller,
            reason,
        }),
        None => {
            debug!("cgroup: the container does not join the {controller} controller: {reason}");
            Ok(())
        }
    }
}

fn unavailable_reason(layout: &Layout) -> String {
    match &layout.unified {
        Some(hierarchy) => format!(
            "no cgroup v1 hierarchy has it and {} does not list it",
            hierarchy.mount_point.join("cgroup.controllers").display()
        ),
        None => "no cgroup v1 hierarchy has it and no cgroup v2 hierarchy is mounted".to_string(),
    }
}

/// Creates `unionfs/NAME` under `planned.mount_point`, preparing the parent
/// `unionfs` first. Retries when another launcher removed the empty parent
/// in between.
pub fn create_dir(
    files: &dyn CgroupFiles,
    planned: &PlannedDir,
    name: &str,
) -> Result<CgroupDir, CgroupError> {
    let parent = planned.mount_point.join(PARENT);
    let path = parent.join(name);

    let mut attempt = 1;
    loop {
        let result = prepare_parent(files, planned, &parent).and_then(|()| make_dir(&path, name));
        match result {
            Err(error) if attempt < MKDIR_ATTEMPTS && !parent.exists() => {
                debug!(
                    "cgroup: {} was removed while creating {}: {error}; retrying",
                    parent.display(),
                    path.display()
                );
                attempt += 1;
            }
            Err(error) => return Err(error),
            Ok(()) => break,
        }
    }

    debug!(
        "cgroup: created {} for {:?}",
        path.display(),
        planned.controllers
    );
    Ok(CgroupDir {
        path,
        parent,
        version: planned.version,
        controllers: planned.controllers.clone(),
    })
}

/// Creates the shared parent `unionfs` if needed and makes it able to hold
/// the container's cgroup: a v1 cpuset parent gets its root's CPUs and
/// memory nodes, a unified parent enables the container's controllers.
fn prepare_parent(
    files: &dyn CgroupFiles,
    planned: &PlannedDir,
    parent: &Path,
) -> Result<(), CgroupError> {
    match fs::create_dir(parent) {
        Ok(()) => debug!("cgroup: created {}", parent.display()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(CgroupError::Create {
                path: parent.to_path_buf(),
                error,
            });
        }
    }

    match planned.version {
        Version::V1 if planned.controllers.contains(&Controller::Cpuset) => {
            cpuset::inherit_v1(files, parent, &planned.mount_point)
        }
        Version::V1 => Ok(()),
        Version::Unified => unified::enable_controllers(files, parent, &planned.controllers),
    }
}

fn make_dir(path: &Path, name: &str) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            Err(CgroupError::AlreadyExists {
                path: path.to_path_buf(),
                name: name.to_string(),
            })
        }
        Err(error) => Err(CgroupError::Create {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Writes the limits that belong to the controllers of `dir`.
pub fn apply_limits(
    files: &dyn CgroupFiles,
    dir: &CgroupDir,
    limits: &Limits,
) -> Result<(), CgroupError> {
    let path = dir.path.as_path();

    for controller in &dir.controllers {
        match (controller, dir.version) {
            (Controller::Memory, version) => {
                if let Some(limit) = limits.memory {
                    match version {
                        Version::V1 => memory::apply_v1(files, path, limit)?,
                        Version::Unified => memory::apply_v2(files, path, limit)?,
                    }
                }
            }
            (Controller::Cpu, Version::V1) => {
                cpu::apply_v1(files, path, limits.cpus, limits.cpu_shares)?
            }
            (Controller::Cpu, Version::Unified) => {
                cpu::apply_v2(files, path, limits.cpus, limits.cpu_shares)?
            }
            (Controller::Cpuset, Version::V1) => {
                cpuset::apply_v1(files, path, &dir.parent, limits.cpuset_cpus.as_deref())?
            }
            (Controller::Cpuset, Version::Unified) => {
                if let Some(cpus) = &limits.cpuset_cpus {
                    cpuset::apply_v2(files, path, &dir.parent, cpus)?;
                }
            }
            (Controller::Pids, _) => {
                if let Some(max) = limits.pids {
                    pids::apply(files, path, max)?;
                }
            }
            // The device rules are written by `Cgroup::restrict_devices`.
            (Controller::Cpuacct | Controller::Freezer | Controller::Devices, _) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};
    use crate::launcher::cgroup::layout::{UnifiedHierarchy, V1Hierarchy};

    fn v1(mount_point: &str, controllers: &[Controller]) -> V1Hierarchy {
        V1Hierarchy {
            mount_point: PathBuf::from(mount_point),
            controllers: controllers.to_vec(),
        }
    }

    /// Builds a pure v2 layout whose root lists `available` and enables `delegated`.
    fn v2_layout(available: &[Controller], delegated: &str) -> (tempfile::TempDir, Layout) {
        let root = fake::cgroup_dir(&[("cgroup.subtree_control", delegated)]);
        let layout = Layout {
            v1: Vec::new(),
            unified: Some(UnifiedHierarchy {
                mount_point: root.path().to_path_buf(),
                controllers: available.to_vec(),
            }),
        };
        (root, layout)
    }

    #[test]
    fn plan_hybrid_joins_unified_without_controllers() {
        let (_root, mut layout) = v2_layout(&[], "");
        layout.v1 = vec![
            v1("/cg/cpu", &[Controller::Cpu]),
            v1("/cg/cpuacct", &[Controller::Cpuacct]),
            v1("/cg/cpuset", &[Controller::Cpuset]),
            v1("/cg/memory", &[Controller::Memory]),
        ];
        let limits = Limits {
            memory: Some(1 << 25),
            ..Limits::default()
        };

        let planned = plan(&layout, &limits, &HostFiles).unwrap();

        let mount_points: Vec<&Path> = planned
            .iter()
            .map(|dir| dir.mount_point.as_path())
            .collect();
        assert_eq!(
            mount_points[..3],
            [
                Path::new("/cg/memory"),
                Path::new("/cg/cpu"),
                Path::new("/cg/cpuacct")
            ]
        );
        assert_eq!(
            planned.len(),
            4,
            "cpuset is not joined without --cpuset-cpus: {planned:?}"
        );
        assert_eq!(planned[3].version, Version::Unified);
        assert!(planned[3].controllers.is_empty());
    }

    #[test]
    fn plan_comounted_v1_shares_one_dir() {
        let layout = Layout {
            v1: vec![v1(
                "/cg/cpu,cpuacct",
                &[Controller::Cpu, Controller::Cpuacct],
            )],
            unified: None,
        };
        let limits = Limits {
            cpus: Some(0.5),
            ..Limits::default()
        };

        let planned = plan(&layout, &limits, &HostFiles).unwrap();

        assert_eq!(planned.len(), 1);
        assert_eq!(
            planned[0].controllers,
            vec![Controller::Cpu, Controller::Cpuacct]
        );
    }

    #[test]
    fn plan_v2_uses_delegated_controllers() {
        let (_root, layout) = v2_layout(
            &[
                Controller::Memory,
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Pids,
            ],
            "cpuset cpu memory pids\n",
        );
        let limits = Limits {
            cpuset_cpus: Some("0".to_string()),
            ..Limits::default()
        };

        let planned = plan(&layout, &limits, &HostFiles).unwrap();

        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].version, Version::Unified);
        assert_eq!(
            planned[0].controllers,
            vec![
                Controller::Memory,
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Pids
            ]
        );
    }

    #[test]
    fn plan_v2_rejects_undelegated_controller() {
        let (root, layout) = v2_layout(&[Controller::Memory, Controller::Pids], "pids\n");
        let limits = Limits {
            memory: Some(1 << 25),
            ..Limits::default()
        };

        let error = plan(&layout, &limits, &HostFiles).unwrap_err();

        let message = error.to_string();
        assert!(
            message.starts_with("--memory cannot be applied: it needs the memory controller"),
            "{message}"
        );
        let fix = format!(
            "echo +memory > {}",
            root.path().join("cgroup.subtree_control").display()
        );
        assert!(message.contains(&fix), "{message}");
    }

    #[test]
    fn plan_v2_skips_undelegated_accounting() {
        let (_root, layout) = v2_layout(&[Controller::Memory, Controller::Pids], "pids\n");

        let planned = plan(&layout, &Limits::default(), &HostFiles).unwrap();

        assert_eq!(planned[0].controllers, vec![Controller::Pids]);
    }

    #[test]
    fn plan_rejects_unavailable_controller() {
        let (root, mut layout) = v2_layout(&[], "");
        layout.v1 = vec![v1("/cg/memory", &[Controller::Memory])];
        let limits = Limits {
            pids: Some(16),
            ..Limits::default()
        };

        let error = plan(&layout, &limits, &HostFiles).unwrap_err();

        let message = error.to_string();
        assert!(
            message.starts_with("--pids-limit cannot be applied: it needs the pids controller"),
            "{message}"
        );
        let listing = root.path().join("cgroup.controllers");
        assert!(
            message.contains(&format!("{} does not list it", listing.display())),
            "{message}"
        );
    }

    #[test]
    fn plan_empty_layout() {
        let error = plan(&Layout::default(), &Limits::default(), &HostFiles).unwrap_err();

        assert!(matches!(error, CgroupError::NoHierarchy), "{error}");
    }

    #[test]
    fn apply_limits_v1_memory_and_pids() {
        let memory_dir = fake::cgroup_dir(&[
            ("memory.limit_in_bytes", ""),
            ("memory.memsw.limit_in_bytes", ""),
        ]);
        let pids_dir = fake::cgroup_dir(&[("pids.max", "")]);
        let limits = Limits {
            memory: Some(1 << 25),
            pids: Some(16),
            ..Limits::default()
        };
        let cgroup_dir = |path: &Path, controller| CgroupDir {
            path: path.to_path_buf(),
            parent: PathBuf::from("/unused"),
            version: Version::V1,
            controllers: vec![controller],
        };

        apply_limits(
            &HostFiles,
            &cgroup_dir(memory_dir.path(), Controller::Memory),
            &limits,
        )
        .unwrap();
        apply_limits(
            &HostFiles,
            &cgroup_dir(pids_dir.path(), Controller::Pids),
            &limits,
        )
        .unwrap();

        assert_eq!(
            fake::content(memory_dir.path(), "memory.limit_in_bytes"),
            "33554432"
        );
        assert_eq!(
            fake::content(memory_dir.path(), "memory.memsw.limit_in_bytes"),
            "33554432"
        );
        assert_eq!(fake::content(pids_dir.path(), "pids.max"), "16");
    }

    #[test]
    fn apply_limits_v2_all_controllers() {
        let parent = fake::cgroup_dir(&[("cpuset.cpus.effective", "0-3\n")]);
        let dir = fake::cgroup_dir(&[
            ("memory.max", ""),
            ("memory.swap.max", ""),
            ("cpu.max", ""),
            ("cpu.weight", ""),
            ("cpuset.cpus", ""),
            ("pids.max", ""),
        ]);
        let limits = Limits {
            memory: Some(100 << 20),
            cpus: Some(0.5),
            cpu_shares: Some(512),
            cpuset_cpus: Some("1-2".to_string()),
            pids: Some(64),
        };
        let cgroup_dir = CgroupDir {
            path: dir.path().to_path_buf(),
            parent: parent.path().to_path_buf(),
            version: Version::Unified,
            controllers: vec![
                Controller::Memory,
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Pids,
            ],
        };

        apply_limits(&HostFiles, &cgroup_dir, &limits).unwrap();

        assert_eq!(fake::content(dir.path(), "memory.max"), "104857600");
        assert_eq!(fake::content(dir.path(), "memory.swap.max"), "0");
        assert_eq!(fake::content(dir.path(), "cpu.max"), "50000 100000");
        assert_eq!(fake::content(dir.path(), "cpu.weight"), "20");
        assert_eq!(fake::content(dir.path(), "cpuset.cpus"), "1-2");
        assert_eq!(fake::content(dir.path(), "pids.max"), "64");
    }

    #[test]
    fn apply_limits_without_limits_writes_nothing() {
        let dir = fake::cgroup_dir(&[
            ("memory.max", "max\n"),
            ("cpu.max", "max 100000\n"),
            ("pids.max", "max\n"),
        ]);
        let cgroup_dir = CgroupDir {
            path: dir.path().to_path_buf(),
            parent: PathBuf::from("/unused"),
            version: Version::Unified,
            controllers: vec![Controller::Memory, Controller::Cpu, Controller::Pids],
        };

        apply_limits(&HostFiles, &cgroup_dir, &Limits::default()).unwrap();

        assert_eq!(fake::content(dir.path(), "memory.max"), "max\n");
        assert_eq!(fake::content(dir.path(), "cpu.max"), "max 100000\n");
        assert_eq!(fake::content(dir.path(), "pids.max"), "max\n");
    }

    #[test]
    fn create_dir_v1_cpuset_parent_inherits() {
        let root = fake::cgroup_dir(&[("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n")]);
        let parent = root.path().join(PARENT);
        fs::create_dir(&parent).unwrap();
        fake::add_files(&parent, &[("cpuset.cpus", "\n"), ("cpuset.mems", "\n")]);
        let planned = PlannedDir {
            mount_point: root.path().to_path_buf(),
            version: Version::V1,
            controllers: vec![Controller::Cpuset],
        };

        let dir = create_dir(&HostFiles, &planned, "box").unwrap();

        assert_eq!(dir.path, parent.join("box"));
        assert!(dir.path.is_dir());
        assert_eq!(fake::content(&parent, "cpuset.cpus"), "0-1");
        assert_eq!(fake::content(&parent, "cpuset.mems"), "0");
    }

    #[test]
    fn create_dir_unified_enables_controllers() {
        let root = fake::cgroup_dir(&[]);
        let parent = root.path().join(PARENT);
        fs::create_dir(&parent).unwrap();
        fake::add_files(&parent, &[("cgroup.subtree_control", "")]);
        let planned = PlannedDir {
            mount_point: root.path().to_path_buf(),
            version: Version::Unified,
            controllers: vec![Controller::Pids],
        };

        create_dir(&HostFiles, &planned, "box").unwrap();

        assert_eq!(fake::content(&parent, "cgroup.subtree_control"), "+pids");
    }

    #[test]
    fn create_dir_existing_name_fails() {
        let root = fake::cgroup_dir(&[]);
        let planned = PlannedDir {
            mount_point: root.path().to_path_buf(),
            version: Version::V1,
            controllers: vec![],
        };
        create_dir(&HostFiles, &planned, "box").unwrap();

        let error = create_dir(&HostFiles, &planned, "box").unwrap_err();

        assert!(
            matches!(error, CgroupError::AlreadyExists { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("already exists"), "{error}");
    }
}
