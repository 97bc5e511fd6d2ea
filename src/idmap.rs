//! UID and GID mappings of `-o uidmapping=` and `-o gidmapping=`, written
//! as fuse-overlayfs writes them: triples `CONTAINER:HOST:SIZE`, joined
//! by `:`, such as `0:100000:65536` or `0:1000:1:1:100000:65536`.
//!
//! A triple maps the IDs stored in the layers, `CONTAINER..CONTAINER+SIZE`,
//! to the IDs the merged view shows, `HOST..HOST+SIZE`. A file stored with
//! uid 0 under `0:100000:65536` shows as uid 100000, which a user
//! namespace with the same mapping shows as 0 again. Writes go the other
//! way: a process with host uid 100000 creates files stored with uid 0.
//! fuse-overlayfs's man page (`fuse-overlayfs.1.md`) describes the same
//! semantics.
//!
//! containers/storage (podman 4.3 on Debian 12) writes these options with
//! a leading `:` (`uidmapping=:0:100000:65536`), so empty fields are
//! skipped. It also hands the program its lower layers through an
//! ID-mapped mount when the kernel supports one. Those layers already show
//! host IDs, and mapping them again would turn every owner into the
//! overflow ID, so [`layer_is_idmapped`] detects them.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Largest number of triples accepted; the kernel takes at most 340 lines
/// in a user namespace's `uid_map` (user_namespaces(7)).
pub const MAX_RANGES: usize = 340;

/// One range of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First ID as stored in the layers.
    pub container: u32,
    /// First ID as shown in the merged view.
    pub host: u32,
    /// Number of IDs in the range, at least 1.
    pub size: u32,
}

/// A parsed `uidmapping=` or `gidmapping=` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

/// An invalid mapping. The message names the value and the expected form.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid ID mapping {value:?}: {reason}; expected CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]"
)]
pub struct IdMapError {
    pub value: String,
    pub reason: String,
}

impl IdMap {
    /// Parses `CONTAINER:HOST:SIZE` triples joined by `:`; empty fields
    /// are skipped. Ranges may not overlap on either side, so that both
    /// directions of the mapping are functions.
    pub fn parse(value: &str) -> Result<IdMap, IdMapError> {
        let error = |reason: String| IdMapError {
            value: value.to_string(),
            reason,
        };
        let fields: Vec<&str> = value.split(':').filter(|field| !field.is_empty()).collect();
        if fields.is_empty() {
            return Err(error("no ranges given".to_string()));
        }
        if fields.len() % 3 != 0 {
            return Err(error(format!(
                "{} numbers do not form whole triples",
                fields.len()
            )));
        }
        if fields.len() / 3 > MAX_RANGES {
            return Err(error(format!("more than {MAX_RANGES} ranges")));
        }
        let mut ranges = Vec::new();
        for triple in fields.chunks(3) {
            let number = |text: &str| {
                text.parse::<u32>()
                    .map_err(|_| error(format!("{text:?} is not a number from 0 to 4294967295")))
            };
            let range = IdRange {
                container: number(triple[0])?,
                host: number(triple[1])?,
                size: number(triple[2])?,
            };
            if range.size == 0 {
                return Err(error("a range has size 0".to_string()));
            }
            let last = u64::from(range.size) - 1;
            if u64::from(range.container) + last > u64::from(u32::MAX)
                || u64::from(range.host) + last > u64::from(u32::MAX)
            {
                return Err(error(format!(
                    "range {}:{}:{} runs past ID 4294967295",
                    range.container, range.host, range.size
                )));
            }
            ranges.push(range);
        }
        for (index, a) in ranges.iter().enumerate() {
            for b in &ranges[index + 1..] {
                if overlaps(a.container, b.container, a.size, b.size) {
                    return Err(error(
                        "two ranges overlap on the container side".to_string(),
                    ));
                }
                if overlaps(a.host, b.host, a.size, b.size) {
                    return Err(error("two ranges overlap on the host side".to_string()));
                }
            }
        }
        Ok(IdMap { ranges })
    }

    pub fn ranges(&self) -> &[IdRange] {
        &self.ranges
    }

    /// Maps an ID stored in a layer to the ID the merged view shows, or
    /// returns `None` when no range contains it.
    pub fn to_host(&self, stored: u32) -> Option<u32> {
        self.ranges.iter().find_map(|range| {
            let offset = stored.checked_sub(range.container)?;
            (offset < range.size).then(|| range.host + offset)
        })
    }

    /// Maps a caller's host ID to the ID stored in the upper layer, or
    /// returns `None` when no range contains it.
    pub fn to_stored(&self, host: u32) -> Option<u32> {
        self.ranges.iter().find_map(|range| {
            let offset = host.checked_sub(range.host)?;
            (offset < range.size).then(|| range.container + offset)
        })
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let triples: Vec<String> = self
            .ranges
            .iter()
            .map(|r| format!("{}:{}:{}", r.container, r.host, r.size))
            .collect();
        f.write_str(&triples.join(":"))
    }
}

fn overlaps(a: u32, b: u32, a_size: u32, b_size: u32) -> bool {
    let (a, b) = (u64::from(a), u64::from(b));
    a < b + u64::from(b_size) && b < a + u64::from(a_size)
}

/// Returns true when the mount with id `mount_id` in `mountinfo` (the text
/// of `/proc/self/mountinfo`, proc(5)) carries the `idmapped` mount option.
pub fn mountinfo_is_idmapped(mountinfo: &str, mount_id: u64) -> Option<bool> {
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let Some(id) = fields.next().and_then(|text| text.parse::<u64>().ok()) else {
            continue;
        };
        if id != mount_id {
            continue;
        }
        // Fields: id, parent id, major:minor, root, mount point, options.
        let options = fields.nth(4)?;
        return Some(options.split(',').any(|option| option == "idmapped"));
    }
    None
}

/// Returns the mount id from the text of `/proc/self/fdinfo/FD`.
pub fn fdinfo_mount_id(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|value| value.trim().parse().ok())
}

/// Returns true when the layer directory open at `dir` lies on an
/// ID-mapped mount, whose IDs are already mapped to host IDs.
pub fn layer_is_idmapped(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", dir.as_raw_fd()))?;
    let mount_id = fdinfo_mount_id(&fdinfo).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "no mnt_id in /proc/self/fdinfo")
    })?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo_is_idmapped(&mountinfo, mount_id).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("mount {mount_id} is not in /proc/self/mountinfo"),
        )
    })
}

/// Settles the mappings of `options` before the mount, until the
/// filesystem applies them: when every lower layer lies on an ID-mapped
/// mount (as containers/storage sets up for `podman run --uidmap`), the
/// layers already show host IDs and the mappings are dropped. Otherwise
/// the mount is rejected.
// TODO: apply the mappings in the filesystem (attributes out, owners in)
// and keep this check only to skip layers that are ID-mapped mounts.
pub fn settle(options: &mut crate::options::MountOptions) -> Result<(), String> {
    if options.uid_mapping.is_none() && options.gid_mapping.is_none() {
        return Ok(());
    }
    let lowers = options.layers.iter().filter(|layer| !layer.writable);
    for layer in lowers {
        let dir = nix::fcntl::open(
            &layer.path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|err| format!("cannot open layer {}: {err}", layer.path.display()))?;
        let mapped = layer_is_idmapped(std::os::fd::AsFd::as_fd(&dir)).map_err(|err| {
            format!(
                "cannot tell whether layer {} is an ID-mapped mount: {err}",
                layer.path.display()
            )
        })?;
        if !mapped {
            return Err(format!(
                "uidmapping=/gidmapping= are supported only when every lower layer is an ID-mapped mount, and {} is not; remove the options or mount the layers ID-mapped",
                layer.path.display()
            ));
        }
    }
    log::info!(
        "uidmapping/gidmapping left unapplied: the lower layers are ID-mapped mounts that already show host IDs"
    );
    options.uid_mapping = None;
    options.gid_mapping = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_podman_form() {
        let map = IdMap::parse(":0:100000:65536").unwrap();
        assert_eq!(
            map.ranges(),
            [IdRange {
                container: 0,
                host: 100000,
                size: 65536
            }]
        );
        assert_eq!(map.to_string(), "0:100000:65536");
    }

    #[test]
    fn map_both_directions() {
        let map = IdMap::parse("0:1000:1:1:110000:65536").unwrap();
        assert_eq!(map.to_host(0), Some(1000));
        assert_eq!(map.to_host(1), Some(110000));
        assert_eq!(map.to_host(65536), Some(175535));
        assert_eq!(map.to_host(65537), None);
        assert_eq!(map.to_stored(1000), Some(0));
        assert_eq!(map.to_stored(110000), Some(1));
        assert_eq!(map.to_stored(175535), Some(65536));
        assert_eq!(map.to_stored(0), None);
        assert_eq!(map.to_stored(1001), None);
    }

    #[test]
    fn map_range_edges() {
        let map = IdMap::parse("10:20:5").unwrap();
        assert_eq!(map.to_host(9), None);
        assert_eq!(map.to_host(10), Some(20));
        assert_eq!(map.to_host(14), Some(24));
        assert_eq!(map.to_host(15), None);
        let top = IdMap::parse("4294967295:0:1").unwrap();
        assert_eq!(top.to_host(u32::MAX), Some(0));
        assert_eq!(top.to_stored(0), Some(u32::MAX));
    }

    #[test]
    fn parse_rejects_invalid() {
        let cases = [
            ("", "no ranges"),
            (":", "no ranges"),
            ("0:1", "whole triples"),
            ("0:1:2:3", "whole triples"),
            ("0:x:1", "\"x\" is not a number"),
            ("-1:0:1", "\"-1\" is not a number"),
            ("0:0:0", "size 0"),
            ("4294967295:0:2", "runs past"),
            ("0:4294967295:2", "runs past"),
            ("0:100:10:5:200:10", "overlap on the container side"),
            ("0:100:10:20:105:10", "overlap on the host side"),
        ];
        for (value, fragment) in cases {
            let message = IdMap::parse(value).unwrap_err().to_string();
            assert!(message.contains(fragment), "{value:?}: {message}");
        }
        let many = "0:0:1:".repeat(MAX_RANGES + 1);
        assert!(IdMap::parse(&many).is_err());
    }

    #[test]
    fn mountinfo_idmapped_flag() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
4711 22 254:0 /tmp/g/overlay /tmp/g/overlay/x/mapped/0 rw,relatime,idmapped - ext4 /dev/vda rw
";
        assert_eq!(mountinfo_is_idmapped(mountinfo, 22), Some(false));
        assert_eq!(mountinfo_is_idmapped(mountinfo, 4711), Some(true));
        assert_eq!(mountinfo_is_idmapped(mountinfo, 5), None);
    }

    #[test]
    fn fdinfo_mount_id_parsed() {
        let fdinfo = "pos:\t0\nflags:\t02100000\nmnt_id:\t4711\nino:\t12\n";
        assert_eq!(fdinfo_mount_id(fdinfo), Some(4711));
        assert_eq!(fdinfo_mount_id("pos:\t0\n"), None);
    }
}
