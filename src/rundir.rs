//! The runtime directory `/run/unionfs`: daemons record their pids under
//! `fuse/`, containers their records and mountpoints.
//!
//! Root reads and writes these files, so no other user may place anything
//! in them. Every directory on the way must be a real directory owned by
//! this user that others cannot write. Files are written without following
//! a symlink.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The runtime directory.
pub const ROOT: &str = "/run/unionfs";

/// Creates `path`, which lies below [`ROOT`], and its missing parents with
/// mode 0755, and checks every directory from `ROOT` down.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    let relative = path.strip_prefix(ROOT).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not below {ROOT}", path.display()),
        )
    })?;
    let mut dir = Path::new(ROOT).to_path_buf();
    check_dir(&dir)?;
    for component in relative.components() {
        dir.push(component);
        check_dir(&dir)?;
    }
    Ok(())
}

/// Creates directory `dir` if missing and checks it. A directory that
/// others may write, as earlier builds left `/run/unionfs`, is made 0755
/// when this user owns it.
fn check_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o755).create(dir) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory owned by uid {euid}; remove it and try again",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Writes `content` to file `path` in a checked directory, replacing what
/// is there without following a symlink planted in its place.
pub fn write_file(path: &Path, content: &[u8]) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(content)
}

/// Reads file `path`, refusing a symlink.
pub fn read_file(path: &Path) -> io::Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut content = String::new();
    file.read_to_string(&mut content)?;
    Ok(content)
}
