//! Lookup: resolving one name in a merged directory, top-down through its
//! layer directories.
//!
//! The walk stops at a whiteout, at an opaque directory, or at a
//! non-directory. A directory found in several layers merges every layer
//! directory down to the first opaque one, or to a layer that holds a
//! non-directory or a whiteout under the same name.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;

use nix::sys::stat::FileStat;

use crate::dirfd::DirFd;
use crate::inode::{Identity, LayerDir, RealState};
use crate::real;
use crate::stack::LayerStack;
use crate::whiteout::{self, Entry, Opacity};

/// A name found in the merged view.
pub struct Found {
    pub state: RealState,
    /// The topmost real object's attributes.
    pub stat: FileStat,
}

impl Found {
    /// Returns true when the name is a directory.
    pub fn is_dir(&self) -> bool {
        real::is_dir(&self.stat)
    }
}

/// Resolves `name` in the merged directory made of `dirs` (topmost first).
/// Returns `None` when the name is absent or hidden by a whiteout.
pub fn resolve(stack: &LayerStack, dirs: &[LayerDir], name: &OsStr) -> io::Result<Option<Found>> {
    let mut found: Option<Found> = None;
    for dir in dirs {
        let dir_fd = dir.fd.get()?;
        let stat = match whiteout::probe(dir_fd.as_fd(), dir.opacity, name)? {
            Entry::Whiteout(_) => break,
            Entry::Absent => continue,
            Entry::Present(stat) => stat,
        };
        let Some(top) = found.as_mut() else {
            let identity = identity(stack, &stat);
            let state = RealState {
                layer: dir.layer,
                identity,
                nlink: stat.st_nlink,
                dirs: Vec::new(),
                orphan: None,
            };
            let mut top = Found { state, stat };
            if !top.is_dir() {
                return Ok(Some(top));
            }
            let opaque = push_layer_dir(stack, &mut top.state, dir, name)?;
            found = Some(top);
            if opaque {
                break;
            }
            continue;
        };
        if !real::is_dir(&stat) || push_layer_dir(stack, &mut top.state, dir, name)? {
            break;
        }
    }
    Ok(found)
}

/// Opens directory `name` under `parent` and appends it to the merged
/// directory's layers; returns true when it is opaque.
fn push_layer_dir(
    stack: &LayerStack,
    state: &mut RealState,
    parent: &LayerDir,
    name: &OsStr,
) -> io::Result<bool> {
    let fd = real::open_dir(parent.fd.get()?.as_fd(), name)?;
    let opacity = whiteout::opacity(fd.as_fd())?;
    let fd = DirFd::child(stack.dir_pool(), &parent.fd, name, fd)?;
    state.dirs.push(LayerDir {
        layer: parent.layer,
        fd,
        opacity,
    });
    Ok(opacity == Opacity::Opaque)
}

/// Returns the identity of the real object `stat` describes.
pub fn identity(stack: &LayerStack, stat: &FileStat) -> Identity {
    Identity {
        fs_index: stack.fs_index(stat.st_dev),
        ino: stat.st_ino,
    }
}

/// Builds the root's state: every layer's root directory, merged. Opaque
/// markers on layer roots are ignored, as kernel overlayfs does.
pub fn root_state(stack: &LayerStack) -> io::Result<(RealState, FileStat)> {
    let mut dirs = Vec::with_capacity(stack.layers().len());
    for (index, layer) in stack.layers().iter().enumerate() {
        let fd = layer.root.try_clone()?;
        let opacity = match whiteout::opacity(fd.as_fd())? {
            Opacity::Opaque => Opacity::Transparent,
            other => other,
        };
        let fd = DirFd::root(stack.dir_pool(), fd)?;
        dirs.push(LayerDir {
            layer: index,
            fd,
            opacity,
        });
    }
    let stat = real::stat_fd(stack.root(0))?;
    let state = RealState {
        layer: 0,
        identity: identity(stack, &stat),
        nlink: stat.st_nlink,
        dirs,
        orphan: None,
    };
    Ok((state, stat))
}
