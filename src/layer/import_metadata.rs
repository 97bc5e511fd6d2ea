//! Metadata of layer tar entries during `import`: owner, mode, times and
//! xattrs, read from the header and PAX records and set on the unpacked
//! objects.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use log::{debug, warn};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::LayerError;
use super::import::{ImportSummary, Unpacker};
use crate::sys::xattr;

/// Metadata of one entry, from its header and its PAX records.
pub(super) struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    pub(super) mtime: TimeSpec,
    pub(super) atime: TimeSpec,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Unpacker {
    /// Sets owner, then mode, of the object `fd` refers to. `at` gives the
    /// parent and name for objects `fd` cannot change (an `O_PATH` fd).
    pub(super) fn apply_owner_and_mode(
        &mut self,
        fd: BorrowedFd<'_>,
        at: Option<(BorrowedFd<'_>, &OsStr)>,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        let owner = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        let chowned = match at {
            None => nix::unistd::fchown(fd, owner.0, owner.1),
            Some((parent, name)) => {
                nix::unistd::fchownat(parent, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
            }
        };
        self.check_chown(chowned, display_name)?;
        // chown clears setuid and setgid, so the mode comes second.
        let mode = Mode::from_bits_truncate(meta.mode & 0o7777);
        let chmodded = match at {
            None => nix::sys::stat::fchmod(fd, mode),
            Some((parent, name)) => nix::sys::stat::fchmodat(
                parent,
                name,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            ),
        };
        chmodded.map_err(|err| LayerError::io("set the mode of", display_name, err.into()))
    }

    pub(super) fn chown_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Metadata,
        display_name: &str,
    ) -> Result<(), LayerError> {
        let chowned = nix::unistd::fchownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        self.check_chown(chowned, display_name)
    }

    /// Without privilege (EPERM), files keep the caller's owner and one
    /// warning reports it. Any other failure is an error.
    fn check_chown(
        &mut self,
        result: nix::Result<()>,
        display_name: &str,
    ) -> Result<(), LayerError> {
        match result {
            Ok(()) => Ok(()),
            Err(Errno::EPERM) => {
                if !self.warned_chown {
                    warn!(
                        "cannot set file owners (not root); the layer's files keep the caller's owner"
                    );
                    self.warned_chown = true;
                }
                Ok(())
            }
            Err(err) => Err(LayerError::io("set the owner of", display_name, err.into())),
        }
    }
}

/// Reads an entry's metadata. PAX records override the header's owner and
/// times, and give the xattrs.
pub(super) fn metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    display_name: &str,
    summary: &mut ImportSummary,
) -> Result<Metadata, LayerError> {
    let header = entry.header();
    let invalid = |field: &str, err: io::Error| {
        LayerError::invalid(display_name, format!("invalid {field}: {err}"))
    };
    let mode = header.mode().map_err(|err| invalid("mode", err))?;
    let mut uid = header.uid().map_err(|err| invalid("uid", err))?;
    let mut gid = header.gid().map_err(|err| invalid("gid", err))?;
    let mut mtime = TimeSpec::new(
        header.mtime().map_err(|err| invalid("mtime", err))? as i64,
        0,
    );
    let mut atime = None;
    let mut xattrs = Vec::new();

    if let Some(records) = entry
        .pax_extensions()
        .map_err(|err| LayerError::io("read the PAX records of", display_name, err))?
    {
        for record in records {
            let record = record.map_err(|err| invalid("PAX record", err))?;
            let key = record.key_bytes();
            let value = record.value_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if super::is_overlay_xattr(name) {
                    debug!(
                        "dropping overlay xattr {} of {display_name}",
                        String::from_utf8_lossy(name)
                    );
                    summary.dropped += 1;
                } else {
                    xattrs.push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                }
                continue;
            }
            match key {
                b"uid" => uid = parse_pax_number(value, display_name, "uid")?,
                b"gid" => gid = parse_pax_number(value, display_name, "gid")?,
                b"mtime" => mtime = parse_pax_time(value, display_name, "mtime")?,
                b"atime" => atime = Some(parse_pax_time(value, display_name, "atime")?),
                _ => {}
            }
        }
    }
    let id = |value: u64, field: &str| {
        u32::try_from(value)
            .ok()
            .filter(|&id| id != u32::MAX)
            .ok_or_else(|| {
                LayerError::invalid(display_name, format!("{field} {value} is out of range"))
            })
    };
    Ok(Metadata {
        mode,
        uid: id(uid, "uid")?,
        gid: id(gid, "gid")?,
        atime: atime.unwrap_or(mtime),
        mtime,
        xattrs,
    })
}

fn parse_pax_number(value: &[u8], display_name: &str, field: &str) -> Result<u64, LayerError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            LayerError::invalid(
                display_name,
                format!("invalid PAX {field} {:?}", String::from_utf8_lossy(value)),
            )
        })
}

/// Parses a PAX time such as `1700000000.123456789` (seconds, optional
/// fraction, possibly negative).
fn parse_pax_time(value: &[u8], display_name: &str, field: &str) -> Result<TimeSpec, LayerError> {
    let invalid = || {
        LayerError::invalid(
            display_name,
            format!("invalid PAX {field} {:?}", String::from_utf8_lossy(value)),
        )
    };
    let text = std::str::from_utf8(value).map_err(|_| invalid())?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let seconds: i64 = seconds.parse().map_err(|_| invalid())?;
    if !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let nanos: i64 = digits.parse().map_err(|_| invalid())?;
    Ok(match (negative, nanos) {
        (false, _) => TimeSpec::new(seconds, nanos),
        (true, 0) => TimeSpec::new(-seconds, 0),
        (true, _) => TimeSpec::new(-seconds - 1, 1_000_000_000 - nanos),
    })
}

/// Sets the entry's xattrs on `name` in `parent`, without following a
/// symlink.
pub(super) fn apply_xattrs(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Metadata,
    display_name: &str,
) -> Result<(), LayerError> {
    for (attr, value) in &meta.xattrs {
        xattr::set_at(parent, name, attr, value, 0)
            .or_else(ignore_unsupported_xattr(attr, display_name))
            .map_err(|err| LayerError::io("set an xattr of", display_name, err))?;
    }
    Ok(())
}

/// Turns "not supported here" into a warning: a layer from an SELinux host
/// carries `security.selinux`, which other hosts cannot store.
pub(super) fn ignore_unsupported_xattr<'a>(
    attr: &'a OsStr,
    display_name: &'a str,
) -> impl FnOnce(io::Error) -> io::Result<()> + 'a {
    move |err| match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            warn!(
                "cannot set xattr {} of {display_name} here (not supported); skipping it",
                attr.to_string_lossy()
            );
            Ok(())
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let parse = |text: &str| parse_pax_time(text.as_bytes(), "x", "mtime").unwrap();
        assert_eq!(parse("1700000000"), TimeSpec::new(1_700_000_000, 0));
        assert_eq!(
            parse("1700000000.5"),
            TimeSpec::new(1_700_000_000, 500_000_000)
        );
        assert_eq!(parse("1.000000001"), TimeSpec::new(1, 1));
        assert_eq!(parse("-1.5"), TimeSpec::new(-2, 500_000_000));
        assert!(parse_pax_time(b"1.x", "x", "mtime").is_err());
        assert!(parse_pax_time(b"", "x", "mtime").is_err());
    }
}
