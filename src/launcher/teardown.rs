//! Removal of what a container run created, in the order that lets each
//! step succeed. Every process in the cgroup is killed, and the teardown
//! waits until the cgroup is empty. Then it unmounts the merged view and
//! waits for its FUSE server, and removes the cgroups, the mountpoint and
//! the state directory. Last goes the container layer, with `--rm`, or when
//! the launcher created it for a container that never started.
//!
//! [`Teardown`] runs from `Drop` as well, so an early return or a panic in
//! the launcher still cleans up. A SIGKILL of the launcher itself cannot be
//! handled and leaves everything in place.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};

use super::cgroup::Cgroup;
use super::merged;

/// Maximum time the teardown waits for killed processes to leave the cgroup.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// The resources one run has created so far.
#[derive(Default)]
pub struct Teardown {
    /// The state directory, `STATE_DIR/NAME`, holding the mountpoint.
    pub state_dir: Option<PathBuf>,
    /// The merged view's mountpoint, once mounted.
    pub mountpoint: Option<PathBuf>,
    pub cgroup: Option<Cgroup>,
    /// The container layer and whether the launcher created it.
    pub container_layer: Option<(PathBuf, bool)>,
    /// True once the command started: a created layer is then kept unless
    /// `remove_layer` is set.
    pub started: bool,
    /// `--rm`: delete the container layer.
    pub remove_layer: bool,
    done: bool,
}

impl Teardown {
    /// Removes everything recorded; returns the errors of the steps that
    /// failed, after trying every step.
    pub fn run(&mut self) -> Vec<anyhow::Error> {
        self.done = true;
        let mut errors = Vec::new();
        let mut processes_gone = true;

        if let Some(cgroup) = &self.cgroup {
            let result = cgroup
                .kill_all()
                .and_then(|()| cgroup.wait_empty(EMPTY_TIMEOUT));
            if let Err(err) = result {
                processes_gone = false;
                errors.push(
                    anyhow::Error::new(err).context("failed to stop the container's processes"),
                );
            }
        }
        if let Some(mountpoint) = self.mountpoint.take() {
            debug!("unmounting {}", mountpoint.display());
            if let Err(err) = merged::unmount(&mountpoint) {
                errors.push(err.context("failed to unmount the container's root"));
                // A mount left in place must keep its directory.
                self.state_dir = None;
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            if processes_gone {
                if let Err(err) = cgroup.remove() {
                    errors.push(
                        anyhow::Error::new(err).context("failed to remove the container's cgroup"),
                    );
                }
            } else {
                warn!(
                    "keeping cgroup {} because processes are left in it",
                    cgroup.name()
                );
            }
        }
        if let Some(state_dir) = self.state_dir.take() {
            if let Err(err) = remove_state_dir(&state_dir) {
                errors.push(anyhow::Error::new(err).context(format!(
                    "failed to remove the state directory {}",
                    state_dir.display()
                )));
            }
        }
        if let Some((layer, created)) = self.container_layer.take() {
            if self.remove_layer || (created && !self.started) {
                if let Err(err) = remove_layer(&layer) {
                    errors.push(anyhow::Error::new(err).context(format!(
                        "failed to delete the container layer {}",
                        layer.display()
                    )));
                }
            }
        }
        errors
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if !self.done {
            for error in self.run() {
                warn!("{error:#}");
            }
        }
    }
}

/// Removes the state directory and the (empty) mountpoint in it. Uses
/// rmdir only, so a mount still in place is never deleted through.
fn remove_state_dir(state_dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(state_dir)? {
        std::fs::remove_dir(entry?.path())?;
    }
    std::fs::remove_dir(state_dir)
}

/// Deletes the container layer and the work dir `unionfs mount` made
/// beside it (`.NAME.unionfs-work`).
fn remove_layer(layer: &Path) -> io::Result<()> {
    debug!("deleting container layer {}", layer.display());
    if let (Some(parent), Some(name)) = (layer.parent(), layer.file_name()) {
        let mut work_name = std::ffi::OsString::from(".");
        work_name.push(name);
        work_name.push(".unionfs-work");
        let work = parent.join(work_name);
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
    }
    match std::fs::remove_dir_all(layer) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}
