//! Whiteout and opaque markers of a layer tar, written in the overlay format
//! during `import`. `.wh.NAME` becomes a 0/0 character device (unless NAME
//! already exists in the layer), `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory, and other `.wh..wh.` names
//! (AUFS metadata) are dropped.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use log::debug;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};

use super::import::Unpacker;
use super::import_metadata::Metadata;
use super::{LayerError, META_PREFIX, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX};
use crate::real;
use crate::sys::xattr;

/// The meaning of an entry whose name starts with `.wh.`.
pub(super) enum Marker {
    /// `.wh..wh..opq`: the parent directory is opaque.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Whiteout(OsString),
    /// Another `.wh..wh.` name: AUFS metadata, not part of the layer.
    Metadata,
}

impl Unpacker {
    /// Writes a whiteout or opaque marker in the overlay format. A whiteout
    /// device gets the marker entry's times; its owner stays root.
    pub(super) fn marker(
        &mut self,
        parent_parts: &[OsString],
        marker: Marker,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        match marker {
            Marker::Metadata => {
                debug!("dropping AUFS metadata entry {display_name}");
                self.summary.dropped += 1;
            }
            Marker::Opaque => {
                let parent = self.open_parent(parent_parts, display_name)?;
                xattr::set(parent.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0).map_err(|err| {
                    LayerError::io("mark opaque the directory of", display_name, err)
                })?;
                self.summary.opaque_dirs += 1;
                self.summary.entries += 1;
            }
            Marker::Whiteout(target) => {
                let parent = self.open_parent(parent_parts, display_name)?;
                let mut path = parent_parts.to_vec();
                path.push(target.clone());
                match real::stat_at(parent.as_fd(), &target)
                    .map_err(|err| LayerError::io("check", display_name, err))?
                {
                    None => {
                        nix::sys::stat::mknodat(
                            parent.as_fd(),
                            target.as_os_str(),
                            SFlag::S_IFCHR,
                            Mode::empty(),
                            0,
                        )
                        .map_err(|err| {
                            LayerError::io("create the whiteout for", display_name, err.into())
                        })?;
                        nix::sys::stat::utimensat(
                            parent.as_fd(),
                            target.as_os_str(),
                            &meta.atime,
                            &meta.mtime,
                            UtimensatFlags::NoFollowSymlink,
                        )
                        .map_err(|err| {
                            LayerError::io("set the times of", display_name, err.into())
                        })?;
                        self.whiteouts.insert(path);
                    }
                    // The same layer has a directory of that name, which
                    // replaces what lies below, so it becomes opaque.
                    Some(stat) if real::is_dir(&stat) => {
                        let dir = real::open_dir(parent.as_fd(), &target)
                            .map_err(|err| LayerError::io("open", display_name, err))?;
                        xattr::set(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0).map_err(
                            |err| LayerError::io("mark opaque the target of", display_name, err),
                        )?;
                    }
                    // Any other object of that name already hides the
                    // layers below.
                    Some(_) => {}
                }
                self.summary.whiteouts += 1;
                self.summary.entries += 1;
            }
        }
        Ok(())
    }

    pub(super) fn is_own_whiteout(
        &self,
        path: &[OsString],
        stat: &nix::sys::stat::FileStat,
    ) -> bool {
        real::kind(stat) == SFlag::S_IFCHR && stat.st_rdev == 0 && self.whiteouts.contains(path)
    }
}

/// Classifies an entry's final name: `None` for an ordinary name.
pub(super) fn marker(name: &OsStr) -> Result<Option<Marker>, String> {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER.as_bytes() {
        return Ok(Some(Marker::Opaque));
    }
    if bytes.starts_with(META_PREFIX) {
        return Ok(Some(Marker::Metadata));
    }
    let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(None);
    };
    if target.is_empty() || target == b"." || target == b".." {
        return Err(format!(
            "whiteout {:?} names no deletable entry",
            String::from_utf8_lossy(bytes)
        ));
    }
    Ok(Some(Marker::Whiteout(
        OsStr::from_bytes(target).to_os_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert!(matches!(
            marker(OsStr::new(".wh..wh..opq")),
            Ok(Some(Marker::Opaque))
        ));
        assert!(matches!(
            marker(OsStr::new(".wh..wh.plnk")),
            Ok(Some(Marker::Metadata))
        ));
        assert!(matches!(
            marker(OsStr::new(".wh.foo")),
            Ok(Some(Marker::Whiteout(name))) if name == "foo"
        ));
        assert!(matches!(marker(OsStr::new("foo")), Ok(None)));
        assert!(matches!(marker(OsStr::new(".whfoo")), Ok(None)));
        for bad in [".wh.", ".wh..", ".wh..."] {
            assert!(marker(OsStr::new(bad)).is_err(), "{bad} was accepted");
        }
    }
}
