//! The two bpf(2) commands behind a cgroup v2 device filter: loading a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attaching it to a cgroup.
//!
//! The attribute layouts are the leading fields of `union bpf_attr` in
//! `linux/bpf.h`. The kernel accepts an attribute shorter than its own
//! union and treats the missing tail as zero.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `BPF_PROG_LOAD` and `BPF_PROG_ATTACH` from `enum bpf_cmd`.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE` from `enum bpf_prog_type`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` from `enum bpf_attach_type`.
const BPF_CGROUP_DEVICE: u32 = 6;
/// Size of the buffer for the verifier's log, returned on a failed load.
const LOG_SIZE: usize = 64 * 1024;

/// One eBPF instruction, `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub code: u8,
    /// Destination register in the low 4 bits, source register in the high 4.
    pub registers: u8,
    pub offset: i16,
    pub immediate: i32,
}

impl Instruction {
    pub const fn new(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> Instruction {
        Instruction {
            code,
            registers: (src << 4) | (dst & 0x0f),
            offset,
            immediate,
        }
    }

    pub fn dst(self) -> u8 {
        self.registers & 0x0f
    }

    pub fn src(self) -> u8 {
        self.registers >> 4
    }
}

/// The `BPF_PROG_LOAD` fields of `union bpf_attr`, up to
/// `expected_attach_type`. Only the kernel reads them.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct ProgramLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` fields of `union bpf_attr`. Only the kernel reads them.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct ProgramAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<usize> {
    // SAFETY: `attr` is a live, initialized `#[repr(C)]` struct whose
    // leading fields match `union bpf_attr` for `command`, and the size
    // passed is its own, so the kernel reads and writes only inside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    super::check(ret)
}

/// Loads `instructions` as a cgroup device program named `name` (at most
/// 15 bytes are kept). On a verifier rejection the error carries the
/// verifier's log.
pub fn load_cgroup_device_program(
    instructions: &[Instruction],
    license: &CStr,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut log = vec![0u8; LOG_SIZE];
    let mut prog_name = [0u8; 16];
    for (slot, byte) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    let mut attr = ProgramLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(instructions.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: LOG_SIZE as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgramLoad::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returns a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(error) => {
            let end = log.iter().position(|byte| *byte == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            let verifier = verifier.trim();
            if verifier.is_empty() {
                Err(error)
            } else {
                Err(io::Error::new(
                    error.kind(),
                    format!("{error}; verifier log: {verifier}"),
                ))
            }
        }
    }
}

/// Attaches the device program `program` to the cgroup v2 directory opened
/// as `cgroup`. The attachment lasts until the cgroup is removed, so the
/// program descriptor may be closed afterwards.
pub fn attach_cgroup_device_program(
    cgroup: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
) -> io::Result<()> {
    let mut attr = ProgramAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgramAttach::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}
