//! Removing names: unlink and rmdir.
//!
//! A name that exists only in the upper layer is removed there. A name that
//! a lower layer also shows gets a whiteout, written in the same step that
//! removes the upper object, and no data is copied. A directory must be
//! empty in the merged view; whiteouts left inside its upper copy go with it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use log::debug;
use nix::unistd::UnlinkatFlags;

use super::{Union, dir_in_layer, errno, readdir};
use crate::inode::Node;
use crate::lookup::Found;
use crate::real;

impl Union {
    /// Removes non-directory `name` from directory `parent`.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let parent = self.node(parent)?;
        let found = self
            .find(&parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if found.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        self.remove(&parent, name, &found)
    }

    /// Removes directory `name` from directory `parent`; it must be empty in
    /// the merged view.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let parent = self.node(parent)?;
        let found = self
            .find(&parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        if !found.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if !readdir::list(&self.stack, &self.table, &found.state.dirs)?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.remove(&parent, name, &found)
    }

    fn remove(&self, parent: &Arc<Node>, name: &OsStr, found: &Found) -> io::Result<()> {
        let upper = self.upper()?;
        let node = self
            .table
            .get(self.table.ino_for(found.state.identity))
            .ok();
        let dir = self.upper_dir(parent)?;
        let in_upper = found.state.layer == 0;
        // An open file keeps working after its last name goes, and so does
        // one being opened right now: hold on to an upper object the kernel
        // knows. A lower object stays in its layer anyway.
        let orphan = match &node {
            Some(node) if !node.is_dir && in_upper => {
                real::open_path(dir_in_layer(parent, found.state.layer)?.as_fd(), name).ok()
            }
            _ => None,
        };

        if self.needs_whiteout(parent, name, found)? {
            upper
                .whiteouts
                .remove_and_hide(&upper.work, dir.as_fd(), name, in_upper)?;
            debug!("removed {name:?} from node {} with a whiteout", parent.ino);
        } else if found.is_dir() {
            match nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir) {
                // Only whiteouts or markers are left inside: take the tree away whole.
                Err(nix::errno::Errno::ENOTEMPTY | nix::errno::Errno::EEXIST) => {
                    upper.work.evict(dir.as_fd(), name)?
                }
                result => result?,
            }
        } else {
            nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir)?;
        }

        let Some(node) = node else {
            return Ok(());
        };
        if found.is_dir() {
            // Close the directory's descriptors now, because an open one
            // keeps the removed directory's inode allocated until the
            // kernel sends FORGET, which may come after the next mkdir.
            node.mark_removed_dir(found.stat, found.state.is_merged());
        }
        if !in_upper {
            // The lower object stays in its layer under this name.
            let alias = crate::inode::Alias {
                parent: parent.clone(),
                name: name.to_os_string(),
            };
            node.hide_name(&alias);
        } else if node.remove_alias(parent.ino, name) {
            if found.is_dir() || found.stat.st_nlink <= 1 {
                node.mark_unlinked();
                self.table.forget_identity(found.state.identity);
            }
            if let Some(fd) = orphan {
                node.update_state(|state| state.orphan = Some(Arc::new(fd)));
            }
        }
        Ok(())
    }
}
