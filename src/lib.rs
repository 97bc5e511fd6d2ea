//! unionfs: a union filesystem served over FUSE, and a container launcher that
//! uses it as a root filesystem.
//!
//! The layer stack is ordered topmost first: index 0 is the upper layer when
//! the stack is writable, and every other layer is a read-only lower layer.
//! Kernel overlayfs is the behavioural reference for the merged view and for
//! the on-disk format of the upper layer.

#![deny(unsafe_code)]

pub mod cli;
pub mod copyup;
pub mod dirfd;
pub mod fs;
pub mod handle;
pub mod idmap;
pub mod inode;
pub mod launcher;
pub mod layer;
pub mod logging;
pub mod lookup;
pub mod mount;
pub mod options;
pub mod readdir;
pub mod real;
pub mod rundir;
pub mod stack;
pub mod sys;
pub mod union;
pub mod whiteout;
