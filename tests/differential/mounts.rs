//! Mounts of unionfs and kernel overlayfs that unmount when dropped, also
//! when a run fails or panics. Errors are returned, not panicked, so that a
//! unionfs mount that cannot unmount is reported as a difference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Path of the unionfs binary under test.
pub fn unionfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_unionfs")
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|err| format!("cannot run {command:?}: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string().replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unionfs,
    Overlay,
}

/// A mounted merged view; unmounted lazily on drop if still mounted.
pub struct Mount {
    kind: Kind,
    pub root: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mounts `kind` at `root` with upper layer `upper`, work dir `work`
    /// and lower layers `lowers` (topmost first).
    pub fn new(
        kind: Kind,
        root: &Path,
        upper: &Path,
        work: &Path,
        lowers: &[PathBuf],
    ) -> Result<Mount, String> {
        std::fs::create_dir_all(root)
            .map_err(|err| format!("cannot create {}: {err}", root.display()))?;
        let layers = format!(
            "lowerdir={},upperdir={},workdir={}",
            join(lowers),
            upper.display(),
            work.display()
        );
        match kind {
            // Kernel overlayfs allows devices and setuid files by default;
            // unionfs, like FUSE, needs them asked for.
            Kind::Unionfs => run(Command::new(unionfs_bin())
                .arg("-o")
                .arg(format!("{layers},dev,suid"))
                .arg(root))?,
            // The features are named so that the oracle does not depend on
            // the kernel's build-time defaults.
            Kind::Overlay => run(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("{layers},redirect_dir=off,index=off,metacopy=off"))
                .arg(root))?,
        }
        Ok(Mount {
            kind,
            root: root.to_path_buf(),
            mounted: true,
        })
    }

    /// Unmounts now; for unionfs, waits for the daemon to exit.
    ///
    /// A busy mount is retried for up to a second. Another test thread that
    /// starts a command forks this process, and until the child calls exec
    /// it has copies of every descriptor, also of files in this mount.
    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        let mut tries = 0;
        loop {
            let result = match self.kind {
                Kind::Unionfs => run(Command::new(unionfs_bin()).arg("umount").arg(&self.root)),
                Kind::Overlay => run(Command::new("umount").arg(&self.root)),
            };
            match result {
                Ok(()) => {
                    self.mounted = false;
                    return Ok(());
                }
                Err(err) if err.contains("busy") && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            // Lazy, so that a failed run never leaves a busy mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}
