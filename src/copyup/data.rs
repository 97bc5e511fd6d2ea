//! Copying a file's data for copy-up, keeping holes.
//!
//! Order of attempts: a reflink of the whole file (`FICLONE`), then
//! `copy_file_range` over each data extent found with `SEEK_DATA` and
//! `SEEK_HOLE`, then plain reads and writes. Holes are never written, so a
//! sparse file stays sparse.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use log::trace;
use nix::errno::Errno;
use nix::unistd::Whence;

const CHUNK: usize = 1 << 20;

/// Copies the first `len` bytes of `src` into the empty file `dst` and sets
/// `dst`'s size to `len`.
pub fn copy(src: &File, dst: &File, len: u64) -> io::Result<()> {
    if len > 0
        && src.metadata()?.len() == len
        && crate::sys::file::clone_file(dst.as_fd(), src.as_fd()).is_ok()
    {
        trace!("copy-up data: reflinked {len} bytes");
        return Ok(());
    }
    let mut offset = 0u64;
    while offset < len {
        let Some((start, end)) = next_extent(src, offset, len)? else {
            break;
        };
        copy_range(src, dst, start, end - start)?;
        offset = end;
    }
    dst.set_len(len)
}

/// Returns the next data extent at or after `offset`, clipped to `len`, or
/// `None` when only holes remain.
fn next_extent(src: &File, offset: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let seek = |from: u64, whence| nix::unistd::lseek(src.as_fd(), from as i64, whence);
    let start = match seek(offset, Whence::SeekData) {
        Ok(start) => start as u64,
        Err(Errno::ENXIO) => return Ok(None),
        // No SEEK_DATA support: everything counts as data.
        Err(Errno::EINVAL) => return Ok(Some((offset, len))),
        Err(err) => return Err(err.into()),
    };
    if start >= len {
        return Ok(None);
    }
    let end = match seek(start, Whence::SeekHole) {
        Ok(end) => (end as u64).min(len),
        Err(_) => len,
    };
    Ok(Some((start, end)))
}

/// Copies `count` bytes at `offset` from `src` to the same offset of `dst`.
fn copy_range(src: &File, dst: &File, offset: u64, count: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < count {
        let mut off_in = (offset + done) as i64;
        let mut off_out = off_in;
        let want = (count - done).min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(
            src.as_fd(),
            Some(&mut off_in),
            dst.as_fd(),
            Some(&mut off_out),
            want,
        ) {
            Ok(0) => break,
            Ok(copied) => done += copied as u64,
            Err(Errno::EXDEV | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                return copy_by_reading(src, dst, offset + done, count - done);
            }
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

fn copy_by_reading(src: &File, dst: &File, offset: u64, count: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min(count as usize)];
    let mut done = 0u64;
    while done < count {
        let want = buf.len().min((count - done) as usize);
        let read = src.read_at(&mut buf[..want], offset + done)?;
        if read == 0 {
            break;
        }
        dst.write_all_at(&buf[..read], offset + done)?;
        done += read as u64;
    }
    Ok(())
}
