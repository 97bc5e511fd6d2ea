//! Merged readdir: one listing of a merged directory.
//!
//! Layer directories are read top-down. Each name appears once, from the
//! topmost layer that has it; a whiteout in a layer hides the name in the
//! layers below it but not in its own layer; format markers (`.wh..wh.*`,
//! the AUFS opaque file) never appear. Inode numbers in the listing are the
//! ones `stat` reports for the same names.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use fuser::FileType;

use crate::inode::{Identity, InodeTable, LayerDir};
use crate::real;
use crate::stack::LayerStack;
use crate::whiteout::{self, Listed};

/// One name of a merged listing.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: FileType,
    pub ino: u64,
}

/// Lists the merged directory made of `dirs` (topmost first), without `.`
/// and `..`.
pub fn list(
    stack: &LayerStack,
    table: &InodeTable,
    dirs: &[LayerDir],
) -> io::Result<Vec<DirEntry>> {
    let mut entries = Vec::new();
    // A single layer cannot hide its own names, so only merged directories
    // need the set of names already taken.
    let mut taken: Option<HashSet<OsString>> = (dirs.len() > 1).then(HashSet::new);
    for dir in dirs {
        // d_ino is on the directory's filesystem.
        // NOTE: for a mountpoint inside a layer it is the covered directory's
        // number, not that of the mounted root that stat reports.
        let fs_index = stack.layers()[dir.layer].fs_index;
        let mut hidden_below = Vec::new();
        let dir_fd = dir.fd.get()?;
        let fd = if stack.upper_index() == Some(dir.layer) {
            real::reopen_dir(dir_fd.as_fd())?
        } else {
            real::reopen_dir_noatime(dir_fd.as_fd())?
        };
        for raw in nix::dir::Dir::from_fd(fd)?.into_iter() {
            let raw = raw?;
            let name = OsStr::from_bytes(raw.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let d_type = raw.file_type().map_or(libc::DT_UNKNOWN, dt_of);
            match whiteout::classify_listed(dir_fd.as_fd(), dir.opacity, name, d_type)? {
                Listed::Marker => continue,
                Listed::Hides(target) => {
                    hidden_below.push(target.to_os_string());
                    continue;
                }
                Listed::Visible => {}
            }
            if let Some(taken) = taken.as_mut() {
                if !taken.insert(name.to_os_string()) {
                    continue;
                }
            }
            let Some(kind) = kind_of(dir_fd.as_fd(), name, d_type)? else {
                continue;
            };
            let ino = table.ino_for(Identity {
                fs_index,
                ino: raw.ino(),
            });
            entries.push(DirEntry {
                name: name.to_os_string(),
                kind,
                ino,
            });
        }
        if let Some(taken) = taken.as_mut() {
            taken.extend(hidden_below);
        }
    }
    Ok(entries)
}

fn dt_of(kind: nix::dir::Type) -> u8 {
    use nix::dir::Type;
    match kind {
        Type::Fifo => libc::DT_FIFO,
        Type::CharacterDevice => libc::DT_CHR,
        Type::Directory => libc::DT_DIR,
        Type::BlockDevice => libc::DT_BLK,
        Type::File => libc::DT_REG,
        Type::Symlink => libc::DT_LNK,
        Type::Socket => libc::DT_SOCK,
    }
}

/// Returns the entry's type, asking the filesystem when `getdents` did not
/// say; `None` when the entry vanished meanwhile.
fn kind_of(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    d_type: u8,
) -> io::Result<Option<FileType>> {
    let mode = match d_type {
        libc::DT_UNKNOWN => match real::stat_at(dir, name)? {
            Some(stat) => stat.st_mode & libc::S_IFMT,
            None => return Ok(None),
        },
        other => u32::from(other) << 12,
    };
    Ok(Some(file_type(mode)))
}

/// Converts the type bits of a mode to a FUSE file type.
pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}
