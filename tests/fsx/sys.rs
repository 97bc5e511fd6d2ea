//! System calls the exerciser needs beyond `std`: mmap, fallocate and
//! posix_fadvise, each returning `io::Error` with the errno.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).expect("sysconf(_SC_PAGESIZE) failed")
}

/// Reads up to `len` bytes at `offset`, fewer only at end of file.
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(count) => done += count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// A shared mapping of part of a file, unmapped on drop.
pub struct Mapping {
    address: *mut libc::c_void,
    len: usize,
    /// Distance from the page-aligned start of the mapping to the byte asked for.
    skip: usize,
}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset`. Touching a mapped page that
    /// lies wholly past the end of the file raises SIGBUS, so callers read
    /// only below the file's current size.
    pub fn new(file: &File, offset: u64, len: usize, writable: bool) -> io::Result<Mapping> {
        let page = page_size();
        let start = offset - offset % page;
        let skip = (offset - start) as usize;
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new mapping at an address the kernel picks touches no
        // existing memory. The caller keeps `offset + len` within the file,
        // so every mapped byte it reads or writes is backed.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                skip + len,
                protection,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            address,
            len: skip + len,
            skip,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(
                (self.address as *const u8).add(self.skip),
                self.len - self.skip,
            )
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only view.
        unsafe {
            std::slice::from_raw_parts_mut(
                (self.address as *mut u8).add(self.skip),
                self.len - self.skip,
            )
        }
    }

    fn sync(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping.
        if unsafe { libc::msync(self.address, self.len, libc::MS_SYNC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is exactly this mapping, and no slice of it outlives `self`.
        unsafe {
            libc::munmap(self.address, self.len);
        }
    }
}

/// Reads `len` bytes at `offset` through a fresh shared mapping. The range
/// must lie within the file.
pub fn map_read(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mapping = Mapping::new(file, offset, len, false)?;
    Ok(mapping.bytes().to_vec())
}

/// Writes `data` at `offset` through a fresh shared mapping and msyncs it.
/// The range must lie within the file.
pub fn map_write(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut mapping = Mapping::new(file, offset, data.len(), true)?;
    mapping.bytes_mut().copy_from_slice(data);
    mapping.sync()
}

pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate reads no memory of this process.
    let status = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops the file's clean cached pages, so the next reads come from the
/// filesystem instead of the page cache.
pub fn drop_cache(file: &File) -> io::Result<()> {
    // SAFETY: posix_fadvise reads no memory of this process.
    let status = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status));
    }
    Ok(())
}

/// truncate(2) by path, as opposed to ftruncate on a descriptor.
pub fn truncate_path(path: &Path, size: u64) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
