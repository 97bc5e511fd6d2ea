//! The container's `/dev`: a tmpfs with the device nodes Docker provides,
//! a private devpts instance, `/dev/shm` and `/dev/mqueue`.

use std::path::Path;

use anyhow::{Context, Result};
use nix::mount::MsFlags;

use super::rootfs::mount;
use super::syscalls::{Create, MountSpec, Source, Syscalls};

/// Character devices created in `/dev`: name, major, minor. All get mode
/// 0666, as runc creates them.
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks in `/dev`: name and content.
pub const LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

/// Mounts and fills `/dev`.
pub fn populate(sys: &dyn Syscalls) -> Result<()> {
    let dev = Path::new("/dev");
    mount(
        sys,
        MountSpec {
            source: Source::Name("tmpfs"),
            target: dev,
            fstype: Some("tmpfs"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=65536k"),
            create: Create::Dir,
        },
    )?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        sys.mknod_char(&path, 0o666, *major, *minor)
            .with_context(|| format!("failed to create device {}", path.display()))?;
    }
    // A private devpts instance, so the container lists and opens only its
    // own pseudo-terminals. Gid 5 is the tty group in Debian's base-passwd.
    mount(
        sys,
        MountSpec {
            source: Source::Name("devpts"),
            target: Path::new("/dev/pts"),
            fstype: Some("devpts"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            create: Create::Dir,
        },
    )?;
    mount(
        sys,
        MountSpec {
            source: Source::Name("shm"),
            target: Path::new("/dev/shm"),
            fstype: Some("tmpfs"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: Some("mode=1777,size=65536k"),
            create: Create::Dir,
        },
    )?;
    mount(
        sys,
        MountSpec {
            source: Source::Name("mqueue"),
            target: Path::new("/dev/mqueue"),
            fstype: Some("mqueue"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: None,
            create: Create::Dir,
        },
    )?;
    for (name, value) in LINKS {
        let path = dev.join(name);
        sys.symlink(Path::new(value), &path)
            .with_context(|| format!("failed to create symlink {}", path.display()))?;
    }
    Ok(())
}
