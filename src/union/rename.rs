//! Rename: files, symlinks and upper-only directories, over existing names,
//! with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
//!
//! Both names end up in the upper layer: the source is copied up first,
//! and a whiteout is left at the source when a lower layer shows that name.
//! A directory that has entries in a lower layer cannot move without
//! copying its whole tree, so it answers `EXDEV`, as kernel overlayfs does
//! without `redirect_dir`; `mv` then copies it. A directory moved into a
//! merged directory is marked opaque, as kernel overlayfs does, so whatever
//! lower layers hold under its new name stays hidden.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use log::debug;
use nix::fcntl::RenameFlags;

use super::{Copied, Union, Which, errno, readdir, upper_dir_of, upper_opacity};
use crate::inode::{Alias, Node};
use crate::lookup::Found;
use crate::real;
use crate::whiteout::{self, Entry, Moving, Opacity};

impl Union {
    /// Renames `name` in `parent` to `new_name` in `new_parent`; `flags`
    /// holds `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let flags = RenameFlags::from_bits(flags).ok_or_else(|| errno(libc::EINVAL))?;
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return Err(errno(libc::EINVAL));
        }
        if whiteout::is_reserved(new_name) {
            return Err(errno(libc::EPERM));
        }
        let (src_parent, dst_parent) = (self.node(parent)?, self.node(new_parent)?);
        let src = self
            .find(&src_parent, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let dst = self.find(&dst_parent, new_name)?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        check(&src, dst.as_ref(), flags)?;
        if let Some(dst) = &dst {
            if dst.state.identity == src.state.identity {
                // Two names of one object: POSIX says rename does nothing.
                // NOTE: kernel overlayfs (index off) removes the source name
                // when the two are lower hard links, which it shows as two
                // inodes; the kernel's VFS never sends that rename here.
                return Ok(());
            }
            if !exchange
                && dst.is_dir()
                && !readdir::list(&self.stack, &self.table, &dst.state.dirs)?.is_empty()
            {
                return Err(errno(libc::ENOTEMPTY));
            }
        }

        let src_node = self.table.get(self.table.ino_for(src.state.identity))?;
        let dst_node = dst
            .as_ref()
            .and_then(|dst| self.table.get(self.table.ino_for(dst.state.identity)).ok());
        let src_dir = self.upper_dir(&src_parent)?;
        let dst_dir = self.upper_dir(&dst_parent)?;
        let split = self.copy_up_name(&src_node, &src_parent, name)?;
        if exchange {
            let dst_node = dst_node.as_ref().ok_or_else(|| errno(libc::ESTALE))?;
            let dst_split = self.copy_up_name(dst_node, &dst_parent, new_name)?;
            self.exchange(
                &src_parent,
                name,
                &dst_parent,
                new_name,
                (&src_node, dst_node),
                (split, dst_split),
            )?;
            return Ok(());
        }

        if src.is_dir() && dst_parent.state().is_merged() {
            self.mark_opaque(&src_node)?;
        }
        if let Some(dst) = dst
            .as_ref()
            .filter(|dst| dst.is_dir() && dst.state.layer == 0)
        {
            self.empty_upper_dir(&dst_dir, new_name, dst)?;
        }
        let orphan = dst_node
            .as_ref()
            .filter(|node| !node.is_dir)
            .and_then(|_| real::open_path(dst_dir.as_fd(), new_name).ok());
        let upper = self.upper()?;
        let dst_whiteout =
            match whiteout::probe(dst_dir.as_fd(), upper_opacity(&dst_parent), new_name)? {
                Entry::Whiteout(kind) => Some(kind),
                _ => None,
            };
        let moving = Moving {
            is_dir: src.is_dir(),
            dst_whiteout,
            hide_source: self.lower_has(&src_parent, name)?,
            no_replace: flags.contains(RenameFlags::RENAME_NOREPLACE),
        };
        upper.whiteouts.move_object(
            &upper.work,
            (src_dir.as_fd(), name),
            (dst_dir.as_fd(), new_name),
            moving,
        )?;
        debug!(
            "renamed {name:?} in node {} to {new_name:?} in node {}",
            src_parent.ino, dst_parent.ino
        );

        if !split {
            let alias = Alias {
                parent: dst_parent.clone(),
                name: new_name.to_os_string(),
            };
            src_node.move_alias((src_parent.ino, name), alias);
            self.follow_move(&src_node, &dst_parent, new_name);
        }
        if let (Some(node), Some(dst)) = (dst_node, dst) {
            self.drop_replaced(&node, &dst, dst_parent.ino, new_name, orphan);
        }
        Ok(())
    }

    /// Swaps two names, both already in the upper layer. `split` says which
    /// name was split off a node with several lower names: that node keeps
    /// its other names and moves nowhere.
    fn exchange(
        &self,
        src_parent: &Arc<Node>,
        name: &OsStr,
        dst_parent: &Arc<Node>,
        new_name: &OsStr,
        nodes: (&Arc<Node>, &Arc<Node>),
        split: (bool, bool),
    ) -> io::Result<()> {
        let (src_node, dst_node) = nodes;
        if src_node.is_dir && dst_parent.state().is_merged() {
            self.mark_opaque(src_node)?;
        }
        if dst_node.is_dir && src_parent.state().is_merged() {
            self.mark_opaque(dst_node)?;
        }
        let src_dir = self.upper_dir(src_parent)?;
        let dst_dir = self.upper_dir(dst_parent)?;
        nix::fcntl::renameat2(
            src_dir.as_fd(),
            name,
            dst_dir.as_fd(),
            new_name,
            RenameFlags::RENAME_EXCHANGE,
        )?;
        self.follow_move(src_node, dst_parent, new_name);
        self.follow_move(dst_node, src_parent, name);
        if !split.0 {
            let alias = Alias {
                parent: dst_parent.clone(),
                name: new_name.to_os_string(),
            };
            src_node.move_alias((src_parent.ino, name), alias);
        }
        if !split.1 {
            let alias = Alias {
                parent: src_parent.clone(),
                name: name.to_os_string(),
            };
            dst_node.move_alias((dst_parent.ino, new_name), alias);
        }
        Ok(())
    }

    /// Records that directory node `node` now sits at `name` in `parent`'s
    /// upper directory, so its descriptor reopens from there.
    fn follow_move(&self, node: &Node, parent: &Arc<Node>, name: &OsStr) {
        if let (Some(moved), Some(parent)) = (upper_dir_of(node), upper_dir_of(parent)) {
            moved.moved(&parent, name);
        }
    }

    /// Copies up node under the name `name` in `parent`; returns true when
    /// that name was split off a node with several lower names.
    fn copy_up_name(&self, node: &Arc<Node>, parent: &Arc<Node>, name: &OsStr) -> io::Result<bool> {
        let alias = Alias {
            parent: parent.clone(),
            name: name.to_os_string(),
        };
        Ok(matches!(
            self.copy_up_as(node, Which::Named(alias), None)?,
            Copied::Split(_)
        ))
    }

    /// Marks upper-only directory node `node` opaque.
    fn mark_opaque(&self, node: &Node) -> io::Result<()> {
        if upper_opacity(node) == Opacity::Opaque {
            return Ok(());
        }
        let dir = upper_dir_of(node).ok_or_else(|| errno(libc::EXDEV))?;
        self.upper()?.whiteouts.mark_opaque(dir.get()?.as_fd())?;
        node.update_state(|state| {
            if let Some(top) = state.dirs.first_mut() {
                top.opacity = Opacity::Opaque;
            }
            state.dirs.truncate(1);
        });
        Ok(())
    }

    /// Replaces the upper copy of merged-empty directory `name` with an
    /// empty opaque one, so a rename onto it finds it empty. Whiteouts inside
    /// the old copy go with it in the same step.
    fn empty_upper_dir(&self, parent: &Arc<OwnedFd>, name: &OsStr, dst: &Found) -> io::Result<()> {
        let Some(top) = dst.state.dirs.first() else {
            return Ok(());
        };
        if crate::copyup::workdir::list_names(top.fd.get()?.as_fd())?.is_empty() {
            return Ok(());
        }
        let upper = self.upper()?;
        let (temp, dir) = upper.work.create_dir()?;
        let stat = real::stat_fd(top.fd.get()?.as_fd())?;
        let swapped =
            crate::copyup::meta::apply(crate::copyup::meta::Target::Fd(dir.as_fd()), &stat, &[])
                .and_then(|()| upper.whiteouts.mark_opaque(dir.as_fd()))
                .and_then(|()| {
                    upper.work.install(
                        &temp,
                        parent.as_fd(),
                        name,
                        crate::copyup::workdir::Install::Exchange,
                    )
                });
        // After the exchange the temporary name holds the old copy.
        upper.work.discard(&temp);
        swapped
    }

    /// Updates the node whose name a rename replaced.
    fn drop_replaced(
        &self,
        node: &Node,
        dst: &Found,
        parent: u64,
        name: &OsStr,
        orphan: Option<OwnedFd>,
    ) {
        if !node.remove_alias(parent, name) {
            return;
        }
        if dst.is_dir() {
            node.mark_removed_dir(dst.stat, dst.state.is_merged());
        }
        if dst.state.layer == 0 && (dst.is_dir() || dst.stat.st_nlink <= 1) {
            node.mark_unlinked();
            self.table.forget_identity(dst.state.identity);
        }
        if let Some(fd) = orphan {
            node.update_state(|state| state.orphan = Some(Arc::new(fd)));
        }
    }
}

/// Checks the flags against what exists and what can move.
fn check(src: &Found, dst: Option<&Found>, flags: RenameFlags) -> io::Result<()> {
    let has_lower =
        |found: &Found| found.is_dir() && found.state.dirs.iter().any(|dir| dir.layer != 0);
    match dst {
        Some(_) if flags.contains(RenameFlags::RENAME_NOREPLACE) => {
            return Err(errno(libc::EEXIST));
        }
        None if flags.contains(RenameFlags::RENAME_EXCHANGE) => return Err(errno(libc::ENOENT)),
        _ => {}
    }
    if has_lower(src) {
        return Err(errno(libc::EXDEV));
    }
    match dst {
        Some(dst) if flags.contains(RenameFlags::RENAME_EXCHANGE) && has_lower(dst) => {
            Err(errno(libc::EXDEV))
        }
        // An exchange swaps the two names whatever their types.
        _ if flags.contains(RenameFlags::RENAME_EXCHANGE) => Ok(()),
        Some(dst) if dst.is_dir() && !src.is_dir() => Err(errno(libc::EISDIR)),
        Some(dst) if !dst.is_dir() && src.is_dir() => Err(errno(libc::ENOTDIR)),
        _ => Ok(()),
    }
}
