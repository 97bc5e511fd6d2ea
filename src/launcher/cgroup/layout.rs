//! Detection of the host's cgroup hierarchies from `/proc/self/mountinfo`.
//!
//! cgroup v1 mounts one hierarchy per controller or group of controllers:
//! filesystem type `cgroup`, the controllers named in the super options
//! (`rw,cpu,cpuacct`). cgroup v2 has one unified hierarchy, filesystem type
//! `cgroup2`, whose root lists the controllers bound to it in
//! `cgroup.controllers`. The kernel binds each controller to at most one
//! hierarchy, so on a hybrid host a controller is either in a v1 hierarchy or
//! in the unified one, never in both.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::error::CgroupError;
use super::files::{CgroupFiles, HostFiles};

/// A cgroup controller that the launcher uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Cpu,
    /// CPU accounting, a controller of its own only in cgroup v1.
    Cpuacct,
    Cpuset,
    Pids,
    /// The v1 freezer. cgroup v2 freezes through `cgroup.freeze` instead.
    Freezer,
    /// The v1 devices controller. cgroup v2 filters devices with a BPF
    /// program instead.
    Devices,
}

impl Controller {
    pub const ALL: [Controller; 7] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Pids,
        Controller::Freezer,
        Controller::Devices,
    ];

    /// Returns the kernel's name for the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
            Controller::Devices => "devices",
        }
    }

    /// Returns the controller the kernel calls `name`, or None for one the
    /// launcher does not use (blkio, hugetlb, and others).
    pub fn from_name(name: &str) -> Option<Controller> {
        Controller::ALL
            .into_iter()
            .find(|controller| controller.name() == name)
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A mounted cgroup v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub mount_point: PathBuf,
    /// The bound controllers that the launcher uses.
    pub controllers: Vec<Controller>,
}

/// The mounted cgroup v2 (unified) hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnifiedHierarchy {
    pub mount_point: PathBuf,
    /// The controllers listed in the root's `cgroup.controllers` that the
    /// launcher uses. A child gets one only if each ancestor enables it in
    /// `cgroup.subtree_control`.
    pub controllers: Vec<Controller>,
}

/// The cgroup hierarchies mounted on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// v1 hierarchies with at least one controller the launcher uses.
    /// Named hierarchies without controllers, such as `name=systemd`, are left out.
    pub v1: Vec<V1Hierarchy>,
    pub unified: Option<UnifiedHierarchy>,
}

/// The three kinds of host layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutKind {
    /// v1 hierarchies only.
    V1,
    /// v1 hierarchies plus a unified hierarchy beside them.
    Hybrid,
    /// The unified hierarchy only.
    V2,
}

/// The hierarchy that offers a controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location<'a> {
    V1(&'a V1Hierarchy),
    Unified(&'a UnifiedHierarchy),
}

/// One cgroup filesystem listed in mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// True for `cgroup2`, false for v1 `cgroup`.
    pub unified: bool,
    /// The super options, such as `rw,cpu,cpuacct`.
    pub super_options: String,
}

impl Layout {
    /// Detects the hierarchies mounted in this process's mount namespace.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        Layout::from_mounts(&parse_mountinfo(&mountinfo), &HostFiles)
    }

    /// Builds the layout from the cgroup mounts, reading the unified root's
    /// `cgroup.controllers` through `files`. When a hierarchy is mounted
    /// twice, the first mount listed is used.
    pub fn from_mounts(
        mounts: &[CgroupMount],
        files: &dyn CgroupFiles,
    ) -> Result<Layout, CgroupError> {
        let mut layout = Layout::default();

        for mount in mounts {
            if mount.unified {
                if layout.unified.is_none() {
                    let listed = files.read(&mount.mount_point, "cgroup.controllers")?;
                    layout.unified = Some(UnifiedHierarchy {
                        mount_point: mount.mount_point.clone(),
                        controllers: known_controllers(listed.split_whitespace()),
                    });
                }
                continue;
            }

            let controllers = known_controllers(mount.super_options.split(','));
            let mounted_already = layout
                .v1
                .iter()
                .any(|hierarchy| hierarchy.controllers == controllers);
            if !controllers.is_empty() && !mounted_already {
                layout.v1.push(V1Hierarchy {
                    mount_point: mount.mount_point.clone(),
                    controllers,
                });
            }
        }
        Ok(layout)
    }

    /// Returns the kind of layout. A layout without any hierarchy reports V2.
    pub fn kind(&self) -> LayoutKind {
        match (self.v1.is_empty(), self.unified.is_some()) {
            (false, false) => LayoutKind::V1,
            (false, true) => LayoutKind::Hybrid,
            (true, _) => LayoutKind::V2,
        }
    }

    /// Returns the hierarchy that offers `controller`, or None if no mounted
    /// hierarchy does.
    pub fn locate(&self, controller: Controller) -> Option<Location<'_>> {
        if let Some(hierarchy) = self
            .v1
            .iter()
            .find(|hierarchy| hierarchy.controllers.contains(&controller))
        {
            return Some(Location::V1(hierarchy));
        }
        match &self.unified {
            Some(unified) if unified.controllers.contains(&controller) => {
                Some(Location::Unified(unified))
            }
            _ => None,
        }
    }
}

fn known_controllers<'a>(names: impl Iterator<Item = &'a str>) -> Vec<Controller> {
    let mut controllers: Vec<Controller> = names.filter_map(Controller::from_name).collect();
    controllers.sort();
    controllers.dedup();
    controllers
}

/// Returns the `cgroup` and `cgroup2` filesystems listed in a mountinfo text,
/// in order. The format is in proc(5): ten or more space-separated fields,
/// the optional ones ended by `-`, then the filesystem type, the source and
/// the super options.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();

    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(separator) = fields.iter().skip(6).position(|field| *field == "-") else {
            continue;
        };
        let separator = separator + 6;
        let (Some(fstype), Some(super_options)) =
            (fields.get(separator + 1), fields.get(separator + 3))
        else {
            continue;
        };

        let unified = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        mounts.push(CgroupMount {
            mount_point: unescape_octal(fields[4]),
            unified,
            super_options: super_options.to_string(),
        });
    }
    mounts
}

/// Decodes the `\NNN` octal escapes that mountinfo uses for space, tab,
/// newline and backslash in paths.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;

    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                decoded.push(value as u8);
                index += 4;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(decoded))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::launcher::cgroup::files::fake;

    /// The cgroup lines of a hybrid host's mountinfo: cpu and cpuacct in
    /// separate v1 hierarchies, cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd host with cgroup v2 only; the mount has optional fields.
    const PURE_V2: &str = "\
25 21 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    /// A v1 host mounting cpu and cpuacct together, and the cpu hierarchy twice.
    const COMOUNTED: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 master:3 - cgroup cgroup rw,cpu,cpuacct
31 25 0:26 / /mnt/cpu\\040again rw - cgroup cgroup rw,cpu,cpuacct
32 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_hybrid_host() {
        let mounts = parse_mountinfo(HYBRID);

        assert_eq!(mounts.len(), 9, "{mounts:?}");
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(mounts[0].super_options, "rw,cpu");
        assert!(mounts[8].unified);
    }

    #[test]
    fn mountinfo_optional_fields_and_escapes() {
        let mounts = parse_mountinfo(COMOUNTED);

        assert_eq!(mounts.len(), 3);
        assert_eq!(
            mounts[0].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[0].super_options, "rw,cpu,cpuacct");
        assert_eq!(mounts[1].mount_point, Path::new("/mnt/cpu again"));
    }

    #[test]
    fn layout_hybrid_host() {
        let unified = fake::cgroup_dir(&[("cgroup.controllers", "hugetlb\n")]);
        let text = HYBRID.replace("/sys/fs/cgroup/unified", unified.path().to_str().unwrap());

        let layout = Layout::from_mounts(&parse_mountinfo(&text), &HostFiles).unwrap();

        assert_eq!(layout.kind(), LayoutKind::Hybrid);
        assert_eq!(layout.v1.len(), 7, "name=systemd is left out: {layout:?}");
        assert_eq!(
            layout.unified.as_ref().unwrap().controllers,
            Vec::<Controller>::new()
        );
        let Some(Location::V1(cpu)) = layout.locate(Controller::Cpu) else {
            panic!("cpu is not in a v1 hierarchy: {layout:?}");
        };
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(cpu.controllers, vec![Controller::Cpu]);
    }

    #[test]
    fn layout_pure_v2_host() {
        let root = fake::cgroup_dir(&[(
            "cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )]);
        let text = PURE_V2.replace("/sys/fs/cgroup", root.path().to_str().unwrap());

        let layout = Layout::from_mounts(&parse_mountinfo(&text), &HostFiles).unwrap();

        assert_eq!(layout.kind(), LayoutKind::V2);
        let unified = layout.unified.as_ref().unwrap();
        assert_eq!(
            unified.controllers,
            vec![
                Controller::Memory,
                Controller::Cpu,
                Controller::Cpuset,
                Controller::Pids
            ]
        );
        assert_eq!(
            layout.locate(Controller::Memory),
            Some(Location::Unified(unified))
        );
        assert_eq!(layout.locate(Controller::Freezer), None);
    }

    #[test]
    fn layout_comounted_v1_host() {
        let layout = Layout::from_mounts(&parse_mountinfo(COMOUNTED), &HostFiles).unwrap();

        assert_eq!(layout.kind(), LayoutKind::V1);
        assert_eq!(
            layout.v1.len(),
            2,
            "the second cpu,cpuacct mount is the same hierarchy: {layout:?}"
        );
        let Some(Location::V1(cpu)) = layout.locate(Controller::Cpu) else {
            panic!("cpu is not in a v1 hierarchy: {layout:?}");
        };
        let Some(Location::V1(cpuacct)) = layout.locate(Controller::Cpuacct) else {
            panic!("cpuacct is not in a v1 hierarchy: {layout:?}");
        };
        assert_eq!(cpu, cpuacct);
        assert_eq!(layout.locate(Controller::Pids), None);
    }

    #[test]
    fn layout_without_cgroups_is_empty() {
        let text = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n";

        let layout = Layout::from_mounts(&parse_mountinfo(text), &HostFiles).unwrap();

        assert_eq!(layout, Layout::default());
    }
}
