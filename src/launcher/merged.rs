//! The merged view that becomes the container's root: a `unionfs mount`
//! started as its own process, and its unmount.
//!
//! The FUSE server must stay outside the container's namespaces and cgroup,
//! and out of the launcher's process. A server thread would make the
//! launcher multi-threaded before `unshare`. A server inside the container's
//! cgroup would freeze or die with it, and then every file access in the
//! container returns `ENOTCONN` or raises `SIGBUS`. So the launcher runs its
//! own binary as `unionfs mount`, whose daemon detaches into its own session
//! and returns once the mount is live.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Maximum time the unmount waits for the FUSE server to exit.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Mount options for a container root: device nodes and setuid binaries in
/// the image work, as on Docker's overlay2 root filesystems.
const ROOT_OPTIONS: &str = "dev,suid";

/// Mounts `layers` on `mountpoint` and returns once the mount is live.
pub fn mount(layers: &str, mountpoint: &Path) -> Result<()> {
    let output = Command::new("/proc/self/exe")
        .arg("mount")
        .arg("-o")
        .arg(ROOT_OPTIONS)
        .arg(layers)
        .arg(mountpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("failed to start `unionfs mount` for the container's root")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr.trim().trim_start_matches("unionfs: ");
        bail!("failed to mount the layers {layers}: {message}");
    }
    Ok(())
}

/// Unmounts the merged view and waits for its FUSE server to exit. The
/// container's processes must be gone: while a mount namespace still references
/// the mount, the server keeps serving it.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    crate::mount::umount_command(mountpoint, false, DAEMON_EXIT_TIMEOUT)
}
