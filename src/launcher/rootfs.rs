//! The container's mount table: fresh `/proc`, read-only `/sys`, `/dev`,
//! volumes, masked `/proc` paths, then `pivot_root` onto the merged view.
//!
//! Runs in the container's PID 1 before `execve`, inside the new mount
//! namespace, so `/proc` shows the new PID namespace. Every target is a
//! container path that the [`Syscalls`] implementation resolves inside the
//! root.

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::MsFlags;

use super::config::{Network, RunConfig};
use super::devices;
use super::syscalls::{Create, Kind, MountSpec, Source, Syscalls};

/// Paths hidden from the container: a directory gets an empty read-only
/// tmpfs over it, a file `/dev/null`, as runc masks them. The list is moby's
/// `MaskedPaths` (`oci/defaults.go`) plus `/proc/interrupts` and
/// `/sys/devices/virtual/powercap`, which show host interrupt counts and
/// power readings.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container may read but not write: each is bind-mounted onto
/// itself and remounted read-only (moby `ReadonlyPaths`).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds the container's mount table and pivots into it.
pub fn prepare(sys: &dyn Syscalls, config: &RunConfig) -> Result<()> {
    sys.make_mounts_private()
        .context("failed to make the container's mounts private")?;
    mount_proc_and_sys(sys)?;
    devices::populate(sys)?;
    mount_volumes(sys, config)?;
    mask_paths(sys)?;
    sys.mkdir_all(&config.workdir).with_context(|| {
        format!(
            "failed to create --workdir {} in the container",
            config.workdir.display()
        )
    })?;

    sys.set_hostname(&config.hostname)
        .with_context(|| format!("failed to set the host name to {}", config.hostname))?;
    if config.network == Network::None {
        sys.set_link_up("lo")
            .context("failed to bring up the loopback interface in the new network namespace")?;
    }
    sys.pivot_root()
        .context("failed to pivot_root onto the merged view")
}

fn mount_proc_and_sys(sys: &dyn Syscalls) -> Result<()> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        sys,
        MountSpec {
            source: Source::Name("proc"),
            target: Path::new("/proc"),
            fstype: Some("proc"),
            flags: hardened,
            data: None,
            create: Create::Dir,
        },
    )?;
    mount(
        sys,
        MountSpec {
            source: Source::Name("sysfs"),
            target: Path::new("/sys"),
            fstype: Some("sysfs"),
            flags: hardened | MsFlags::MS_RDONLY,
            data: None,
            create: Create::Dir,
        },
    )
}

fn mount_volumes(sys: &dyn Syscalls, config: &RunConfig) -> Result<()> {
    for volume in &config.volumes {
        mount(
            sys,
            MountSpec {
                source: Source::Host(&volume.host),
                target: &volume.container,
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
                create: Create::LikeSource,
            },
        )?;
        if volume.read_only {
            sys.remount_read_only(&volume.container).with_context(|| {
                format!(
                    "failed to make volume {} read-only",
                    volume.container.display()
                )
            })?;
        }
    }
    Ok(())
}

fn mask_paths(sys: &dyn Syscalls) -> Result<()> {
    for path in MASKED_PATHS.iter().map(Path::new) {
        let source = match kind(sys, path)? {
            None => continue,
            Some(Kind::Directory) => MountSpec {
                source: Source::Name("tmpfs"),
                target: path,
                fstype: Some("tmpfs"),
                flags: MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                data: Some("size=0"),
                create: Create::Nothing,
            },
            Some(Kind::Other) => MountSpec {
                source: Source::InRoot(Path::new("/dev/null")),
                target: path,
                fstype: None,
                flags: MsFlags::MS_BIND,
                data: None,
                create: Create::Nothing,
            },
        };
        mount(sys, source)?;
    }
    for path in READONLY_PATHS.iter().map(Path::new) {
        if kind(sys, path)?.is_none() {
            continue;
        }
        mount(
            sys,
            MountSpec {
                source: Source::InRoot(path),
                target: path,
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: None,
                create: Create::Nothing,
            },
        )?;
        sys.remount_read_only(path)
            .with_context(|| format!("failed to make {} read-only", path.display()))?;
    }
    Ok(())
}

fn kind(sys: &dyn Syscalls, path: &Path) -> Result<Option<Kind>> {
    sys.kind(path)
        .with_context(|| format!("failed to look up {} in the container", path.display()))
}

/// Mounts `spec`, with an error that names the source and the target.
pub fn mount(sys: &dyn Syscalls, spec: MountSpec<'_>) -> Result<()> {
    sys.mount(&spec).with_context(|| {
        let source = match spec.source {
            Source::Name(name) => name.to_string(),
            Source::Host(path) => format!("host path {}", path.display()),
            Source::InRoot(path) => path.display().to_string(),
        };
        format!(
            "failed to mount {source} on {} in the container",
            spec.target.display()
        )
    })
}
