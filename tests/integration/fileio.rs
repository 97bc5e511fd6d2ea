//! File I/O through open descriptors: syncing, space allocation, holes,
//! truncation, appends, large offsets, locks, statfs, unlinked open files
//! and shared mappings.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use nix::fcntl::FallocateFlags;
use nix::unistd::Whence;

use crate::fixture::{self, Mount, Pair, Scratch, errno};

const MIB: u64 = 1 << 20;

fn open_rw(path: &Path) -> File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()))
}

fn nix_errno<T>(result: nix::Result<T>) -> i32 {
    errno(result.map_err(io::Error::from))
}

/// Returns `lseek(fd, offset, whence)`, or the negated errno.
fn seek(file: &File, offset: i64, whence: Whence) -> i64 {
    match nix::unistd::lseek(file.as_fd(), offset, whence) {
        Ok(position) => position,
        Err(err) => -(err as i64),
    }
}

fn read_all_at(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let read = file.read_at(&mut buf, offset).unwrap();
    buf.truncate(read);
    buf
}

/// Fills a lower layer with two text files, a 64 KiB file and a sparse file
/// of 16 MiB with data at 8 MiB.
fn io_layer(_: usize, root: &Path) {
    fixture::write(root, "text", "0123456789\n");
    fixture::write(root, "other", "other\n");
    fs::write(root.join("block"), vec![b'x'; 64 * 1024]).unwrap();
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(16 * MIB).unwrap();
    sparse.write_all_at(b"data in the middle", 8 * MIB).unwrap();
    fixture::age(root);
}

#[test]
fn fsync_and_fdatasync() {
    let pair = Pair::new(1, io_layer);
    pair.both("fsync after writing a lower file", |root| {
        let mut file = open_rw(&root.join("text"));
        let written = errno(file.write_all(b"new"));
        (written, errno(file.sync_all()), errno(file.sync_data()))
    });
    pair.both("fsync of a read-only lower file", |root| {
        let file = File::open(root.join("other")).unwrap();
        (errno(file.sync_all()), errno(file.sync_data()))
    });
    pair.both("fsync of a new file", |root| {
        let mut file = File::create(root.join("created")).unwrap();
        let written = errno(file.write_all(b"created\n"));
        (written, errno(file.sync_all()), errno(file.sync_data()))
    });
    pair.finish();
}

#[test]
fn fallocate_and_punch_hole() {
    let pair = Pair::new(1, io_layer);
    let allocate = |file: &File, flags: FallocateFlags, offset: i64, len: i64| {
        nix_errno(nix::fcntl::fallocate(file.as_fd(), flags, offset, len))
    };
    let results = pair.both("fallocate on a copied-up file", |root| {
        let file = open_rw(&root.join("block"));
        let extend = allocate(&file, FallocateFlags::empty(), 0, MIB as i64);
        let size_after_extend = file.metadata().unwrap().len();
        let keep_size = allocate(
            &file,
            FallocateFlags::FALLOC_FL_KEEP_SIZE,
            2 * MIB as i64,
            64 * 1024,
        );
        let size_after_keep = file.metadata().unwrap().len();
        let punch = allocate(
            &file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            4096,
            8192,
        );
        let punched = read_all_at(&file, 4096, 8192);
        let first_hole = seek(&file, 0, Whence::SeekHole);
        let next_data = seek(&file, 4096, Whence::SeekData);
        (
            extend,
            size_after_extend,
            keep_size,
            size_after_keep,
            punch,
            punched.iter().all(|byte| *byte == 0),
            first_hole,
            next_data,
        )
    });
    assert_eq!(results.4, 0, "punching a hole");
    assert!(results.5, "a punched range must read as zeros");
    pair.both("fallocate on a read-only fd", |root| {
        let file = File::open(root.join("other")).unwrap();
        allocate(&file, FallocateFlags::empty(), 0, 4096)
    });
    pair.finish();
}

#[test]
fn seek_data_and_hole() {
    let pair = Pair::new(1, io_layer);
    let probe = |file: &File| {
        vec![
            seek(file, 0, Whence::SeekData),
            seek(file, 0, Whence::SeekHole),
            seek(file, 8 * MIB as i64, Whence::SeekData),
            seek(file, 8 * MIB as i64, Whence::SeekHole),
            seek(file, 12 * MIB as i64, Whence::SeekData),
            seek(file, 20 * MIB as i64, Whence::SeekHole),
        ]
    };
    pair.both("lower sparse file", |root| {
        probe(&File::open(root.join("sparse")).unwrap())
    });
    pair.both("sparse file made through the mount", |root| {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("holes"))
            .unwrap();
        file.write_all_at(b"data in the middle", 8 * MIB).unwrap();
        file.set_len(16 * MIB).unwrap();
        probe(&file)
    });
    pair.finish();
}

#[test]
fn ftruncate_through_fd() {
    let pair = Pair::new(1, io_layer);
    pair.both("shrink and grow a lower file", |root| {
        let file = open_rw(&root.join("text"));
        let shrink = errno(file.set_len(4));
        let shrunk = (file.metadata().unwrap().len(), read_all_at(&file, 0, 64));
        let grow = errno(file.set_len(100));
        let grown = (file.metadata().unwrap().len(), read_all_at(&file, 0, 128));
        (shrink, shrunk, grow, grown)
    });
    pair.both("ftruncate of a read-only fd", |root| {
        let file = File::open(root.join("other")).unwrap();
        errno(file.set_len(1))
    });
    pair.finish();
}

#[test]
fn append_from_two_fds() {
    let pair = Pair::new(1, io_layer);
    for name in ["text", "new"] {
        pair.both(&format!("alternate appends to {name}"), |root| {
            let open = || {
                fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(root.join(name))
                    .unwrap()
            };
            let (mut first, mut second) = (open(), open());
            for round in 0..3 {
                first
                    .write_all(format!("first {round}\n").as_bytes())
                    .unwrap();
                second
                    .write_all(format!("second {round}\n").as_bytes())
                    .unwrap();
            }
            fs::read_to_string(root.join(name)).unwrap()
        });
    }
    pair.finish();
}

#[test]
fn large_offset_pread_pwrite() {
    let pair = Pair::new(1, io_layer);
    let offsets = [5 << 30, 1 << 40];
    pair.both("pwrite and pread at large offsets", |root| {
        let file = open_rw(&root.join("block"));
        let mut results = Vec::new();
        for offset in offsets {
            let written = errno(file.write_all_at(b"far away", offset));
            let read = read_all_at(&file, offset, 16);
            results.push((written, read));
        }
        let size = file.metadata().unwrap().len();
        let past_end = read_all_at(&file, size + 4096, 16);
        let too_far = errno(file.write_all_at(b"x", 1 << 62));
        // Shrink the file again, so the final comparison need not read 1 TiB.
        file.set_len(64 * 1024).unwrap();
        (results, size, past_end, too_far)
    });
    pair.both("pread of a lower file at a large offset", |root| {
        let file = File::open(root.join("sparse")).unwrap();
        (
            read_all_at(&file, 8 * MIB, 18),
            read_all_at(&file, 1 << 40, 16),
        )
    });
    pair.finish();
}

fn flock(file: &File, operation: i32) -> i32 {
    // SAFETY: flock(2) on a descriptor this function borrows.
    let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
    if result == 0 {
        0
    } else {
        io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

#[test]
fn flock_conflict_between_fds() {
    let pair = Pair::new(1, io_layer);
    let results = pair.both("flock through two open files", |root| {
        let holder = File::open(root.join("other")).unwrap();
        let other = File::open(root.join("other")).unwrap();
        let lock = flock(&holder, libc::LOCK_EX);
        let exclusive = flock(&other, libc::LOCK_EX | libc::LOCK_NB);
        let shared = flock(&other, libc::LOCK_SH | libc::LOCK_NB);
        // Opening for write copies the file up; the lock must still hold.
        let writer = open_rw(&root.join("other"));
        let after_copy_up = flock(&writer, libc::LOCK_EX | libc::LOCK_NB);
        let unlock = flock(&holder, libc::LOCK_UN);
        let after_unlock = flock(&other, libc::LOCK_EX | libc::LOCK_NB);
        vec![lock, exclusive, shared, after_copy_up, unlock, after_unlock]
    });
    assert_eq!(results[1], libc::EWOULDBLOCK, "LOCK_EX on a second fd");
    assert_eq!(results[2], libc::EWOULDBLOCK, "LOCK_SH on a second fd");
    assert_eq!(
        results[3],
        libc::EWOULDBLOCK,
        "LOCK_EX on an fd opened after copy-up"
    );
    assert_eq!(results[5], 0, "LOCK_EX after the holder unlocked");
    pair.finish();
}

fn write_lock(start: i64, len: i64) -> libc::flock {
    // SAFETY: libc::flock is plain old data; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_start = start;
    lock.l_len = len;
    lock
}

/// The result of probing a POSIX write lock on bytes 0..100 from another
/// process.
#[derive(Debug, PartialEq, Eq)]
struct Conflict {
    /// F_GETLK reported a write lock.
    reported: bool,
    /// F_GETLK named the holder's pid.
    holder_pid: bool,
    /// errno of F_SETLK.
    setlk: i32,
}

/// Forks a child that opens `path` and probes a write lock on bytes 0..100.
fn probe_posix_lock_from_child(path: &Path) -> Conflict {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: the child only calls async-signal-safe functions (open, fcntl,
    // getppid, _exit) on data prepared before the fork.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed: {}", io::Error::last_os_error());
    if child == 0 {
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                libc::_exit(100);
            }

            let mut probe = write_lock(0, 100);
            if libc::fcntl(fd, libc::F_GETLK, &mut probe) != 0 {
                libc::_exit(101);
            }

            let mut code = 0;
            if probe.l_type == libc::F_WRLCK as i16 {
                code |= 1;
            }
            if probe.l_pid == libc::getppid() {
                code |= 2;
            }
            let take = write_lock(0, 100);
            if libc::fcntl(fd, libc::F_SETLK, &take) != 0 {
                let err = *libc::__errno_location();
                code |= if err == libc::EAGAIN || err == libc::EACCES {
                    4
                } else {
                    8
                };
            }
            libc::_exit(code);
        }
    }

    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "lock probe child did not exit");
    let code = libc::WEXITSTATUS(status);
    assert!(code < 100, "lock probe child failed with code {code}");
    Conflict {
        reported: code & 1 != 0,
        holder_pid: code & 2 != 0,
        setlk: match code & 12 {
            4 => libc::EAGAIN,
            8 => -1,
            _ => 0,
        },
    }
}

#[test]
fn posix_lock_conflict_between_processes() {
    let pair = Pair::new(1, io_layer);
    let conflict = pair.both("F_SETLK held, F_GETLK from a child", |root| {
        let path = root.join("text");
        let holder = open_rw(&path);
        let lock = write_lock(0, 100);
        // SAFETY: F_SETLK with a valid flock on a descriptor we own.
        let locked = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_SETLK, &lock) };
        assert_eq!(locked, 0, "F_SETLK: {}", io::Error::last_os_error());
        probe_posix_lock_from_child(&path)
    });
    assert!(conflict.reported, "F_GETLK must report the write lock");
    assert!(conflict.holder_pid, "F_GETLK must name the holder");
    assert_eq!(conflict.setlk, libc::EAGAIN, "F_SETLK must fail");

    let ofd = pair.both("F_OFD_SETLK held, F_OFD_GETLK on a second fd", |root| {
        let holder = open_rw(&root.join("other"));
        let other = open_rw(&root.join("other"));
        let lock = write_lock(0, 100);
        // SAFETY: OFD lock calls with valid flock values on owned descriptors.
        unsafe {
            assert_eq!(libc::fcntl(holder.as_raw_fd(), libc::F_OFD_SETLK, &lock), 0);
            let mut probe = write_lock(0, 100);
            assert_eq!(
                libc::fcntl(other.as_raw_fd(), libc::F_OFD_GETLK, &mut probe),
                0
            );
            let take = libc::fcntl(other.as_raw_fd(), libc::F_OFD_SETLK, &lock);
            let take_errno = if take == 0 {
                0
            } else {
                io::Error::last_os_error().raw_os_error().unwrap_or(-1)
            };
            (probe.l_type == libc::F_WRLCK as i16, take_errno)
        }
    });
    assert!(ofd.0, "F_OFD_GETLK must report the write lock");
    assert_eq!(ofd.1, libc::EAGAIN, "F_OFD_SETLK must fail");
    pair.finish();
}

/// Unmounts a tmpfs when dropped, lazily so that a failing test leaves no
/// busy mount behind.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn statfs_reports_upper_fs() {
    let scratch = Scratch::new();
    let tmpfs = Tmpfs {
        path: scratch.path("tmpfs"),
    };
    fixture::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m,nr_inodes=5000", "tmpfs"])
            .arg(&tmpfs.path),
    );
    let lower = scratch.path("lower");
    fixture::write(&lower, "file", "lower\n");
    let upper = tmpfs.path.join("upper");
    let kernel_upper = tmpfs.path.join("kernel-upper");
    let (work, kernel_work) = (tmpfs.path.join("work"), tmpfs.path.join("kernel-work"));
    for dir in [&upper, &kernel_upper, &work, &kernel_work] {
        fs::create_dir(dir).unwrap();
    }
    let lowers = [lower];
    let union_root = scratch.dir.path().join("union");
    let kernel_root = scratch.dir.path().join("kernel");
    let mut union = Mount::unionfs(&union_root, Some(&upper), Some(&work), &lowers, &[]);
    let mut kernel = Mount::overlay(
        &kernel_root,
        Some(&kernel_upper),
        Some(&kernel_work),
        &lowers,
    );

    let merged = nix::sys::statvfs::statvfs(&union_root).unwrap();
    let real = nix::sys::statvfs::statvfs(&upper).unwrap();
    let oracle = nix::sys::statvfs::statvfs(&kernel_root).unwrap();
    assert_eq!(merged.block_size(), real.block_size(), "f_bsize");
    assert_eq!(merged.fragment_size(), real.fragment_size(), "f_frsize");
    assert_eq!(merged.blocks(), real.blocks(), "f_blocks");
    assert_eq!(merged.blocks_free(), real.blocks_free(), "f_bfree");
    assert_eq!(
        merged.blocks_available(),
        real.blocks_available(),
        "f_bavail"
    );
    assert_eq!(merged.files(), real.files(), "f_files");
    assert_eq!(merged.files_free(), real.files_free(), "f_ffree");
    assert_eq!(merged.name_max(), real.name_max(), "f_namemax");
    assert_eq!(
        merged.blocks(),
        oracle.blocks(),
        "f_blocks: unionfs (left) and kernel overlayfs (right) differ"
    );
    assert_eq!(
        merged.files(),
        oracle.files(),
        "f_files: unionfs (left) and kernel overlayfs (right) differ"
    );

    union.unmount();
    kernel.unmount();
    drop(tmpfs);
}

/// The results of [`use_unlinked`]: write errno, data read, (size, nlink,
/// mode), chmod errno, mode after it, truncate errno, (size, data) after it.
type UnlinkedUse = (i32, Vec<u8>, (u64, u64, u32), i32, u32, i32, (u64, Vec<u8>));

/// Writes, reads, fstats, fchmods and ftruncates through a descriptor of an
/// unlinked file, and returns the results in that order.
fn use_unlinked(file: &File) -> UnlinkedUse {
    let written = errno(file.write_all_at(b" and more", 5));
    let read = read_all_at(file, 0, 64);
    let meta = file.metadata().unwrap();
    let fstat = (meta.len(), meta.nlink(), meta.mode() & 0o7777);
    let chmod = errno(file.set_permissions(fs::Permissions::from_mode(0o600)));
    let mode = file.metadata().unwrap().mode() & 0o7777;
    let truncate = errno(file.set_len(3));
    let truncated = (file.metadata().unwrap().len(), read_all_at(file, 0, 64));
    (written, read, fstat, chmod, mode, truncate, truncated)
}

#[test]
fn unlinked_open_file_stays_usable() {
    let pair = Pair::new(1, io_layer);
    pair.both("lower file opened for write, then unlinked", |root| {
        let file = open_rw(&root.join("text"));
        let unlinked = errno(fs::remove_file(root.join("text")));
        (unlinked, use_unlinked(&file))
    });
    pair.both("new file, unlinked", |root| {
        fs::write(root.join("new"), "new file\n").unwrap();
        let file = open_rw(&root.join("new"));
        let unlinked = errno(fs::remove_file(root.join("new")));
        (unlinked, use_unlinked(&file))
    });
    pair.both("lower file opened read-only, then unlinked", |root| {
        let mut file = File::open(root.join("other")).unwrap();
        let unlinked = errno(fs::remove_file(root.join("other")));
        let mut data = String::new();
        let read = errno(file.read_to_string(&mut data));
        let meta = file.metadata().unwrap();
        (unlinked, read, data, meta.len())
    });
    pair.finish();
}

/// Maps `len` bytes of `file` shared and writable, writes `data` at the
/// start of the mapping, syncs and unmaps it.
fn write_through_mapping(file: &File, len: usize, data: &[u8]) {
    // SAFETY: maps an fd this function borrows; the mapping is written only
    // within `len` bytes and unmapped before returning.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            map,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(data.as_ptr(), map as *mut u8, data.len());
        assert_eq!(libc::msync(map, len, libc::MS_SYNC), 0, "msync");
        assert_eq!(libc::munmap(map, len), 0, "munmap");
    }
}

#[test]
fn mmap_shared_write_visible() {
    let pair = Pair::new(1, io_layer);
    let reads = pair.both("MAP_SHARED write into a lower file", |root| {
        let file = open_rw(&root.join("block"));
        let reader = File::open(root.join("block")).unwrap();
        write_through_mapping(&file, 64 * 1024, b"mapped write");
        let seen = read_all_at(&reader, 0, 12);
        drop(file);
        let after_close = fs::read(root.join("block")).unwrap()[..12].to_vec();
        (seen, after_close)
    });
    assert_eq!(reads.0, b"mapped write", "read() through another fd");
    pair.both("MAP_SHARED write into a new file", |root| {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("mapped"))
            .unwrap();
        file.set_len(8192).unwrap();
        write_through_mapping(&file, 8192, b"new mapping");
        drop(file);
        fs::read(root.join("mapped")).unwrap()[..11].to_vec()
    });
    pair.finish();
}

#[test]
fn read_leaves_lower_atime() {
    let pair = Pair::new(1, io_layer);
    pair.both("read a lower file", |root| {
        fs::read_to_string(root.join("text")).unwrap()
    });
    pair.both("merged atime after the read", |root| {
        let meta = fs::metadata(root.join("text")).unwrap();
        (meta.atime(), meta.atime_nsec())
    });
    pair.finish();
}

/// POSIX ACLs in a lower layer decide access through the merged view, as
/// under kernel overlayfs: a named-user entry without permissions denies
/// that user what the other bits allow, and a copy-up keeps the ACL.
#[test]
fn lower_acl_enforced() {
    let pair = Pair::new(1, |_, root| {
        fixture::write(root, "denied.txt", "secret\n");
        fixture::write(root, "granted.txt", "shared\n");
        fs::set_permissions(root.join("granted.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        for (name, entry) in [
            ("denied.txt", "u:65534:---"),
            ("granted.txt", "u:65534:r--"),
        ] {
            fixture::run(
                Command::new("setfacl")
                    .args(["-m", entry])
                    .arg(root.join(name)),
            );
        }
        fixture::age(root);
    });
    let read_as_nobody = |root: &Path| {
        ["denied.txt", "granted.txt"].map(|name| {
            Command::new("setpriv")
                .args([
                    "--reuid",
                    "65534",
                    "--regid",
                    "65534",
                    "--clear-groups",
                    "cat",
                ])
                .arg(root.join(name))
                .output()
                .unwrap()
                .status
                .success()
        })
    };
    assert_eq!(pair.both("read as nobody", read_as_nobody), [false, true]);
    pair.both("chmod copies up", |root| {
        errno(fs::set_permissions(
            root.join("denied.txt"),
            fs::Permissions::from_mode(0o644),
        ))
    });
    assert_eq!(
        pair.both("read after copy-up", read_as_nobody),
        [false, true]
    );
    pair.finish();
}

/// Setting an access ACL drops the setgid bit when the caller is outside
/// the file's group, as the kernel does for its own filesystems.
#[test]
fn acl_by_non_member_drops_setgid() {
    let pair = Pair::new(1, |_, root| {
        for name in ["outside", "member"] {
            fixture::write(root, name, "data\n");
            std::os::unix::fs::chown(root.join(name), Some(65534), Some(0)).unwrap();
            fs::set_permissions(root.join(name), fs::Permissions::from_mode(0o2775)).unwrap();
        }
        fixture::age(root);
    });
    let modes = pair.both("setfacl as the owner", |root| {
        [("outside", "--clear-groups"), ("member", "--groups=0")].map(|(name, groups)| {
            let status = Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", groups])
                .args(["setfacl", "-m", "u:1:r"])
                .arg(root.join(name))
                .status()
                .unwrap();
            assert!(status.success(), "setfacl on {name} failed");
            fs::metadata(root.join(name)).unwrap().permissions().mode() & 0o7777
        })
    });
    assert_eq!(modes, [0o775, 0o2775]);
    pair.finish();
}
