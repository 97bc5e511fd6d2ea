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
use std::sync::Arc;

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

/// The listing of one directory that readers are paging through.
///
/// Directories are read without open handles, and the kernel's own
/// directory cache hands out positions from listings the daemon dropped
/// long ago, so a position cannot name a listing. It names a place in the
/// order of names instead: names are sorted by a hash of the name, and the
/// position after an entry is that hash, as in ext4's hashed directories.
/// A read at any position resumes after it in whatever listing is current,
/// so a reader gets each name that stays in the directory exactly once,
/// however the directory changes and however often others start over. `.` and
/// `..` come first, at positions 1 and 2.
///
/// NOTE: two names with the same 63-bit hash are one position: a read that
/// stops between them skips the second.
#[derive(Default)]
pub struct Listings {
    current: Option<Arc<Vec<DirEntry>>>,
}

/// A place in a listing.
pub struct Cursor {
    pub listing: Arc<Vec<DirEntry>>,
    /// The index of the next entry to return.
    pub index: usize,
}

impl Cursor {
    /// Returns the position that resumes reading after entry `index`.
    pub fn offset_after(&self, index: usize) -> u64 {
        match index {
            0 | 1 => index as u64 + 1,
            _ => position_of(&self.listing[index].name),
        }
    }

    /// True once the reader has read every entry.
    pub fn at_end(&self) -> bool {
        self.index >= self.listing.len()
    }
}

impl Listings {
    /// Returns the cursor for a read at `offset` in the current listing, or
    /// `None` when the read starts over or no listing is current.
    pub fn resume(&self, offset: u64) -> Option<Cursor> {
        let listing = self.current.clone().filter(|_| offset != 0)?;
        Some(Cursor {
            index: index_after(&listing, offset),
            listing,
        })
    }

    /// Makes `listing` (`.` and `..` first) current, in reading order, and
    /// returns a cursor at `offset` in it.
    pub fn start(&mut self, mut listing: Vec<DirEntry>, offset: u64) -> Cursor {
        if let Some(names) = listing.get_mut(2..) {
            names.sort_by_cached_key(|entry| (position_of(&entry.name), entry.name.clone()));
        }
        let listing = Arc::new(listing);
        self.current = Some(listing.clone());
        Cursor {
            index: index_after(&listing, offset),
            listing,
        }
    }

    /// Drops the listing of `cursor`, whose reader has read it all, unless
    /// another read started over since.
    pub fn finish(&mut self, cursor: &Cursor) {
        if self
            .current
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &cursor.listing))
        {
            self.current = None;
        }
    }
}

/// Returns the position after name `name`: its hash, above the positions of `.`
/// and `..` and within a signed 64-bit file position.
fn position_of(name: &OsStr) -> u64 {
    use std::hash::Hasher;
    // DefaultHasher::new() uses fixed keys, so positions hold for the
    // daemon's life.
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(name.as_bytes());
    (hasher.finish() >> 1).max(3)
}

/// Returns the index of the first entry after position `offset`.
fn index_after(listing: &[DirEntry], offset: u64) -> usize {
    match offset {
        0..=2 => (offset as usize).min(listing.len()),
        _ => {
            let names = listing.get(2..).unwrap_or_default();
            2 + names.partition_point(|entry| position_of(&entry.name) <= offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Vec<DirEntry> {
        names
            .iter()
            .map(|name| DirEntry {
                name: OsString::from(name),
                kind: FileType::RegularFile,
                ino: 2,
            })
            .collect()
    }

    fn with_dots(names: &[&str]) -> Vec<DirEntry> {
        let mut entries = listing(&[".", ".."]);
        entries.extend(listing(names));
        entries
    }

    fn read_all(listings: &mut Listings, mut offset: u64, count: usize) -> (Vec<OsString>, u64) {
        let mut names = Vec::new();
        while names.len() < count {
            let cursor = match listings.resume(offset) {
                Some(cursor) => cursor,
                None => listings.start(with_dots(&["b", "c", "d", "e", "f"]), offset),
            };
            if cursor.at_end() {
                listings.finish(&cursor);
                break;
            }
            names.push(cursor.listing[cursor.index].name.clone());
            offset = cursor.offset_after(cursor.index);
        }
        (names, offset)
    }

    #[test]
    fn reader_resumes_by_name_in_a_changed_listing() {
        let mut listings = Listings::default();
        let first = listings.start(with_dots(&["a", "b", "c", "d", "e"]), 0);
        assert_eq!(first.listing[0].name, ".");
        assert_eq!(first.listing[1].name, "..");
        let stop = 4;
        let seen: Vec<OsString> = first.listing[..stop]
            .iter()
            .map(|e| e.name.clone())
            .collect();
        let offset = first.offset_after(stop - 1);

        // Another reader starts over after "a" went and "f" came; the first
        // resumes in that listing and gets each remaining name once.
        listings.start(with_dots(&["b", "c", "d", "e", "f"]), 0);
        let (rest, _) = read_all(&mut listings, offset, 10);
        let mut all: Vec<OsString> = seen.into_iter().chain(rest).collect();
        let before = all.len();
        all.sort();
        all.dedup();
        assert_eq!(before, all.len(), "no name twice");
        for name in ["b", "c", "d", "e"] {
            assert!(all.contains(&OsString::from(name)), "{name} missing");
        }
    }

    #[test]
    fn finished_listing_is_dropped_and_rebuilt_on_resume() {
        let mut listings = Listings::default();
        let cursor = listings.start(with_dots(&["b", "c"]), 0);
        let end = Cursor {
            index: cursor.listing.len(),
            listing: cursor.listing.clone(),
        };
        listings.finish(&end);
        assert!(listings.resume(cursor.offset_after(2)).is_none());
        assert!(listings.resume(0).is_none(), "offset 0 always starts over");
    }

    #[test]
    fn positions_are_positive_and_past_the_dots() {
        for name in ["a", "", "..."] {
            let position = position_of(OsStr::new(name));
            assert!(
                position > 2 && i64::try_from(position).is_ok(),
                "{position:#x}"
            );
        }
        let listing = with_dots(&["x"]);
        assert_eq!(index_after(&listing, 0), 0);
        assert_eq!(index_after(&listing, 2), 2);
        assert_eq!(index_after(&listing, u64::MAX >> 1), 3);
    }
}
