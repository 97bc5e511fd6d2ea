//! Writing a layer directory as an OCI layer tar whose bytes depend only on
//! the layer's content.
//!
//! - Entries come in byte order of their names in the layer, depth first,
//!   with each directory before its entries. A whiteout `.wh.NAME` takes
//!   the place of NAME. An opaque directory's `.wh..wh..opq` comes right
//!   after the directory itself.
//! - Headers are GNU tar headers with numeric owners as stored, empty user
//!   and group names, and no access or change times. Modification times
//!   are clamped: no later than the clamp when one is set (`--clamp-mtime`,
//!   else `SOURCE_DATE_EPOCH`), following the reproducible-builds.org
//!   convention for `SOURCE_DATE_EPOCH`. The header holds whole seconds, and a
//!   PAX `mtime` record keeps the nanoseconds of a time the clamp left
//!   alone.
//! - Xattrs go in PAX `SCHILY.xattr.NAME` records in name order; overlay
//!   metadata xattrs are left out because the whiteout names carry them.
//! - gzip output has no file name and a zero time in its header.
//!
//! Whiteouts of every format unionfs reads become `.wh.NAME` files: a 0/0
//! character device, a zero-size file with an `overlay.whiteout` xattr in a
//! directory marked `overlay.opaque=x`, and an existing `.wh.NAME` file.
//! Names starting with `.wh..wh.` other than `.wh..wh..opq` are left out:
//! they are AUFS metadata or unionfs's in-layer work dir.
//!
//! The layer's root itself is not written, as OCI layers list only what
//! lies below it. Sockets are skipped with a warning, since tar has no
//! entry for them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use log::warn;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};
use tar::{EntryType, Header};

use super::digest::HashingWriter;
use super::{LayerError, META_PREFIX, OPAQUE_MARKER, WHITEOUT_PREFIX, is_overlay_xattr};
use crate::real;
use crate::sys::xattr;

/// Xattrs that mark a directory opaque, as `whiteout` reads them.
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Xattrs that make a zero-size file a whiteout in an `opaque=x` directory.
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// Mode of the `.wh.` entries written for whiteouts and opaque markers.
const MARKER_MODE: u32 = 0o600;

/// How to write a layer tar.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions {
    /// Latest modification time written, in seconds since the epoch.
    pub clamp_mtime: Option<u64>,
    /// Compress the tar with gzip.
    pub gzip: bool,
}

/// Digests, size and entry count of a finished export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// `sha256:HEX` of the file as written (the OCI descriptor digest).
    pub digest: String,
    /// `sha256:HEX` of the uncompressed tar (the OCI `diff_id`).
    pub diff_id: String,
    /// Size of the file as written, in bytes.
    pub size: u64,
    pub entries: u64,
}

/// Writes layer directory `dir` as a tar to `tarball`, through a temporary
/// file in the same directory that is renamed into place when complete.
pub fn export_file(
    dir: &Path,
    tarball: &Path,
    options: ExportOptions,
) -> Result<ExportSummary, LayerError> {
    let display_name = tarball.display().to_string();
    let parent = match tarball.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".unionfs-export-")
        .tempfile_in(parent)
        .map_err(|err| {
            LayerError::io("create a temporary file beside", display_name.clone(), err)
        })?;
    let (file, temp_path) = temp.into_parts();
    let result = write_compressed(dir, BufWriter::new(file), options);
    let summary = match result {
        Ok((writer, summary)) => {
            let file = writer
                .into_inner()
                .map_err(|err| LayerError::io("write", display_name.clone(), err.into_error()))?;
            file.sync_all()
                .map_err(|err| LayerError::io("write", display_name.clone(), err))?;
            summary
        }
        Err(err) => return Err(err),
    };
    std::fs::set_permissions(
        &temp_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(|err| LayerError::io("set the mode of", display_name.clone(), err))?;
    temp_path
        .persist(tarball)
        .map_err(|err| LayerError::io("move the tar to", display_name, err.error))?;
    Ok(summary)
}

/// Writes the layer to `out`, gzip-compressed when asked; returns `out`
/// and the summary.
fn write_compressed<W: Write>(
    dir: &Path,
    out: W,
    options: ExportOptions,
) -> Result<(W, ExportSummary), LayerError> {
    let blob = HashingWriter::new(out);
    if !options.gzip {
        let (blob, entries) = write_tar(dir, blob, options)?;
        let (out, digest, size) = blob.finish();
        let summary = ExportSummary {
            diff_id: digest.clone(),
            digest,
            size,
            entries,
        };
        return Ok((out, summary));
    }
    let encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(blob, flate2::Compression::default());
    let (encoder, entries, diff_id) = {
        let tar_stream = HashingWriter::new(encoder);
        let (tar_stream, entries) = write_tar(dir, tar_stream, options)?;
        let (encoder, diff_id, _) = tar_stream.finish();
        (encoder, entries, diff_id)
    };
    let blob = encoder
        .finish()
        .map_err(|err| LayerError::io("compress", dir.display().to_string(), err))?;
    let (out, digest, size) = blob.finish();
    Ok((
        out,
        ExportSummary {
            digest,
            diff_id,
            size,
            entries,
        },
    ))
}

/// Writes the tar of layer `dir` to `out`; returns `out` and the number of
/// entries.
pub fn write_tar<W: Write>(
    dir: &Path,
    out: W,
    options: ExportOptions,
) -> Result<(W, u64), LayerError> {
    let display_name = dir.display().to_string();
    let root = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|err| LayerError::io("open the layer", display_name.clone(), err.into()))?;
    let mut writer = Writer {
        builder: tar::Builder::new(out),
        clamp: options.clamp_mtime,
        links: HashMap::new(),
        entries: 0,
    };
    let root_stat =
        real::stat_fd(&root).map_err(|err| LayerError::io("check", display_name.clone(), err))?;
    let has_marker_file = real::stat_at(root.as_fd(), OsStr::new(OPAQUE_MARKER))
        .map_err(|err| LayerError::io("check", display_name.clone(), err))?
        .is_some();
    if is_opaque(root.as_fd()) && !has_marker_file {
        writer.marker(&PathBuf::from(OPAQUE_MARKER), &root_stat)?;
    }
    writer.directory(root, PathBuf::new())?;
    let mut builder = writer.builder;
    builder
        .finish()
        .map_err(|err| LayerError::io("write the tar of", display_name.clone(), err))?;
    let out = builder
        .into_inner()
        .map_err(|err| LayerError::io("write the tar of", display_name, err))?;
    Ok((out, writer.entries))
}

struct Writer<W: Write> {
    builder: tar::Builder<W>,
    clamp: Option<u64>,
    /// The first path written for each (device, inode) with several links.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the entries of directory `dir`, at `path` in the tar.
    fn directory(&mut self, dir: OwnedFd, path: PathBuf) -> Result<(), LayerError> {
        let names = sorted_names(dir.as_fd(), &path)?;
        let xattr_whiteouts = matches!(opaque_value(dir.as_fd()).as_deref(), Some(b"x"));
        for name in names {
            let bytes = name.as_bytes();
            if bytes.starts_with(META_PREFIX) && bytes != OPAQUE_MARKER.as_bytes() {
                continue;
            }
            let child = path.join(&name);
            let display_name = child.display().to_string();
            let Some(stat) = real::stat_at(dir.as_fd(), &name)
                .map_err(|err| LayerError::io("check", &display_name, err))?
            else {
                continue;
            };
            let kind = real::kind(&stat);
            if kind == SFlag::S_IFCHR && stat.st_rdev == 0 {
                self.marker(&whiteout_path(&path, &name), &stat)?;
                continue;
            }
            if xattr_whiteouts
                && kind == SFlag::S_IFREG
                && stat.st_size == 0
                && is_xattr_whiteout(dir.as_fd(), &name)
            {
                self.marker(&whiteout_path(&path, &name), &stat)?;
                continue;
            }
            match kind {
                SFlag::S_IFDIR => {
                    let child_dir = real::open_dir(dir.as_fd(), &name)
                        .map_err(|err| LayerError::io("open", &display_name, err))?;
                    let mut header = self.header(&stat, EntryType::Directory);
                    let xattrs =
                        self.records(&stat, user_xattrs(child_dir.as_fd(), &display_name)?);
                    // A trailing slash marks directories, as GNU tar writes them.
                    let mut name_with_slash = child.clone().into_os_string();
                    name_with_slash.push("/");
                    self.append(
                        &mut header,
                        Path::new(&name_with_slash),
                        &xattrs,
                        io::empty(),
                    )?;
                    let has_marker_file =
                        real::stat_at(child_dir.as_fd(), OsStr::new(OPAQUE_MARKER))
                            .map_err(|err| LayerError::io("check", &display_name, err))?
                            .is_some();
                    if is_opaque(child_dir.as_fd()) && !has_marker_file {
                        self.marker(&child.join(OPAQUE_MARKER), &stat)?;
                    }
                    self.directory(child_dir, child)?;
                }
                SFlag::S_IFREG => self.regular(dir.as_fd(), &name, &child, &stat)?,
                SFlag::S_IFLNK => {
                    let target =
                        nix::fcntl::readlinkat(dir.as_fd(), name.as_os_str()).map_err(|err| {
                            LayerError::io("read the symlink", &display_name, err.into())
                        })?;
                    let mut header = self.header(&stat, EntryType::Symlink);
                    let xattrs =
                        self.records(&stat, user_xattrs_at(dir.as_fd(), &name, &display_name)?);
                    self.append_pax(&xattrs, &display_name)?;
                    self.builder
                        .append_link(&mut header, &child, Path::new(&target))
                        .map_err(|err| {
                            LayerError::io("write the tar entry for", &display_name, err)
                        })?;
                    self.entries += 1;
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                    let entry_type = match kind {
                        SFlag::S_IFCHR => EntryType::Char,
                        SFlag::S_IFBLK => EntryType::Block,
                        _ => EntryType::Fifo,
                    };
                    let mut header = self.header(&stat, entry_type);
                    if kind != SFlag::S_IFIFO {
                        let set = header
                            .set_device_major(libc::major(stat.st_rdev))
                            .and_then(|()| header.set_device_minor(libc::minor(stat.st_rdev)));
                        set.map_err(|err| {
                            LayerError::io("write the device number of", &display_name, err)
                        })?;
                    }
                    let xattrs =
                        self.records(&stat, user_xattrs_at(dir.as_fd(), &name, &display_name)?);
                    self.append(&mut header, &child, &xattrs, io::empty())?;
                }
                _ => warn!("skipping socket {display_name}: tar cannot hold sockets"),
            }
        }
        Ok(())
    }

    fn regular(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        stat: &FileStat,
    ) -> Result<(), LayerError> {
        let display_name = path.display().to_string();

        if stat.st_nlink > 1 {
            let key = (stat.st_dev, stat.st_ino);
            if let Some(first) = self.links.get(&key) {
                let mut header = self.header(stat, EntryType::Link);
                header.set_size(0);
                let first = first.clone();
                self.builder
                    .append_link(&mut header, path, &first)
                    .map_err(|err| LayerError::io("write the tar entry for", &display_name, err))?;
                self.entries += 1;
                return Ok(());
            }
            self.links.insert(key, path.to_path_buf());
        }

        let (file, _) = real::open_regular(dir, name, OFlag::O_RDONLY)
            .map_err(|err| LayerError::io("open", &display_name, err))?;
        let xattrs = self.records(stat, user_xattrs(file.as_fd(), &display_name)?);
        let mut header = self.header(stat, EntryType::Regular);
        header.set_size(stat.st_size as u64);
        let file = File::from(file);
        // A file that changes size while it is read would corrupt the tar:
        // `take` stops at the stated size, and the check below catches a
        // file that shrank.
        let mut data = CountingReader {
            inner: io::Read::take(file, stat.st_size as u64),
            count: 0,
        };
        self.append(&mut header, path, &xattrs, &mut data)?;
        if data.count != stat.st_size as u64 {
            return Err(LayerError::io(
                "read",
                display_name,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was written to the tar",
                ),
            ));
        }
        Ok(())
    }

    /// Writes an empty `.wh.` marker file at `path`, with the owner of the
    /// whiteout or opaque directory `stat` describes.
    fn marker(&mut self, path: &Path, stat: &FileStat) -> Result<(), LayerError> {
        let mut header = self.header(stat, EntryType::Regular);
        header.set_mode(MARKER_MODE);
        header.set_size(0);
        let records = self.records(stat, Vec::new());
        self.append(&mut header, path, &records, io::empty())
    }

    /// Returns the clamped modification time of `stat`: seconds, and the
    /// nanoseconds when the clamp left the time alone.
    fn mtime(&self, stat: &FileStat) -> (u64, u32) {
        let seconds = stat.st_mtime.max(0) as u64;
        let nanos = if stat.st_mtime < 0 {
            0
        } else {
            stat.st_mtime_nsec as u32
        };
        match self.clamp {
            Some(clamp) if seconds >= clamp => (clamp, 0),
            _ => (seconds, nanos),
        }
    }

    /// Returns a GNU header with the type, mode, owner and clamped time of
    /// `stat`; size 0.
    fn header(&self, stat: &FileStat, entry_type: EntryType) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(stat.st_mode & 0o7777);
        header.set_uid(stat.st_uid.into());
        header.set_gid(stat.st_gid.into());
        header.set_mtime(self.mtime(stat).0);
        header.set_size(0);
        header
    }

    /// Returns the PAX records of an entry: `mtime` when it has
    /// nanoseconds, then its xattrs.
    fn records(&self, stat: &FileStat, xattrs: Vec<(OsString, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        let mut records = Vec::new();
        let (seconds, nanos) = self.mtime(stat);
        if nanos != 0 {
            records.push((
                "mtime".to_string(),
                format!("{seconds}.{nanos:09}").into_bytes(),
            ));
        }
        for (name, value) in xattrs {
            records.push((format!("SCHILY.xattr.{}", name.to_string_lossy()), value));
        }
        records
    }

    fn append(
        &mut self,
        header: &mut Header,
        path: &Path,
        records: &[(String, Vec<u8>)],
        data: impl io::Read,
    ) -> Result<(), LayerError> {
        let display_name = path.display().to_string();
        self.append_pax(records, &display_name)?;
        self.builder
            .append_data(header, path, data)
            .map_err(|err| LayerError::io("write the tar entry for", &display_name, err))?;
        self.entries += 1;
        Ok(())
    }

    fn append_pax(
        &mut self,
        records: &[(String, Vec<u8>)],
        display_name: &str,
    ) -> Result<(), LayerError> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()));
        self.builder
            .append_pax_extensions(records)
            .map_err(|err| LayerError::io("write the xattrs of", display_name, err))
    }
}

/// Counts the bytes read, to detect a file that shrank during export.
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: io::Read> io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.count += read as u64;
        Ok(read)
    }
}

fn whiteout_path(parent: &Path, name: &OsStr) -> PathBuf {
    let mut marker = WHITEOUT_PREFIX.to_vec();
    marker.extend_from_slice(name.as_bytes());
    parent.join(OsStr::from_bytes(&marker))
}

/// Returns the names in `dir`, sorted by their bytes.
fn sorted_names(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<OsString>, LayerError> {
    let display_name = if path.as_os_str().is_empty() {
        "the layer's root".to_string()
    } else {
        path.display().to_string()
    };
    let reader = real::reopen_dir(dir).map_err(|err| LayerError::io("open", &display_name, err))?;
    let mut listing = nix::dir::Dir::from_fd(reader)
        .map_err(|err| LayerError::io("read", &display_name, err.into()))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(|err| LayerError::io("read", &display_name, err.into()))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn opaque_value(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    OPAQUE_XATTRS
        .iter()
        .find_map(|name| xattr::get(dir, OsStr::new(name)).ok().flatten())
}

fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    matches!(opaque_value(dir).as_deref(), Some(b"y"))
}

fn is_xattr_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    WHITEOUT_XATTRS
        .iter()
        .any(|attr| matches!(xattr::get_at(dir, name, OsStr::new(attr)), Ok(Some(_))))
}

/// Returns the xattrs of the object `fd` refers to, overlay metadata left
/// out, sorted by name.
fn user_xattrs(
    fd: BorrowedFd<'_>,
    display_name: &str,
) -> Result<Vec<(OsString, Vec<u8>)>, LayerError> {
    let names =
        xattr::list(fd).map_err(|err| LayerError::io("list the xattrs of", display_name, err))?;
    collect_xattrs(names, |name| xattr::get(fd, name), display_name)
}

/// Like [`user_xattrs`] for `name` in `dir`, without following a symlink.
fn user_xattrs_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    display_name: &str,
) -> Result<Vec<(OsString, Vec<u8>)>, LayerError> {
    let names = match xattr::list_at(dir, name) {
        Ok(names) => names,
        // Symlinks on some filesystems refuse xattr calls outright.
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => return Ok(Vec::new()),
        Err(err) => return Err(LayerError::io("list the xattrs of", display_name, err)),
    };
    collect_xattrs(names, |attr| xattr::get_at(dir, name, attr), display_name)
}

fn collect_xattrs(
    mut names: Vec<OsString>,
    get: impl Fn(&OsStr) -> io::Result<Option<Vec<u8>>>,
    display_name: &str,
) -> Result<Vec<(OsString, Vec<u8>)>, LayerError> {
    names.retain(|name| !is_overlay_xattr(name.as_bytes()));
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut xattrs = Vec::new();
    for name in names {
        if let Some(value) =
            get(&name).map_err(|err| LayerError::io("read the xattrs of", display_name, err))?
        {
            xattrs.push((name, value));
        }
    }
    Ok(xattrs)
}
