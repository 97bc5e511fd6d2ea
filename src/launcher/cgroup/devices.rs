//! Device access control: the container may create any device node
//! (`mknod` keeps working, as in Docker, which keeps `CAP_MKNOD`), but may
//! open only the devices of [`DEFAULT_RULES`]. The kernel checks the rules
//! on every open of a device node, wherever the node lies.
//!
//! - cgroup v1: the devices controller. Writing `a` to `devices.deny`
//!   removes every permission, then each rule goes to `devices.allow`.
//! - cgroup v2 has no devices controller. A `BPF_PROG_TYPE_CGROUP_DEVICE`
//!   program attached to the container's cgroup decides each access, as
//!   runc and crun do on v2. [`program`] assembles it from the same rules.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use super::error::CgroupError;
use super::files::CgroupFiles;
use crate::sys::bpf::{self, Instruction};

/// Access bits, as the v2 program context and the v1 `rwm` letters name them.
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;
const ALL_ACCESS: u8 = MKNOD | READ | WRITE;

/// The kind of device a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
    /// Both kinds; only the v1 `a` rule uses it.
    All,
}

/// One allow rule: a device kind, a major and minor number (`None` for
/// any), and the access it allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

const fn char_device(major: u32, minor: Option<u32>) -> DeviceRule {
    DeviceRule {
        kind: DeviceKind::Char,
        major: Some(major),
        minor,
        access: ALL_ACCESS,
    }
}

/// Docker's default device rules (moby `oci/defaults.go` and runc's
/// `AllowedDevices`): `mknod` of any node, and read and write of null,
/// zero, full, random, urandom, tty, console, ptmx and the pseudo-terminals.
pub const DEFAULT_RULES: &[DeviceRule] = &[
    DeviceRule {
        kind: DeviceKind::Char,
        major: None,
        minor: None,
        access: MKNOD,
    },
    DeviceRule {
        kind: DeviceKind::Block,
        major: None,
        minor: None,
        access: MKNOD,
    },
    char_device(1, Some(3)),
    char_device(1, Some(5)),
    char_device(1, Some(7)),
    char_device(1, Some(8)),
    char_device(1, Some(9)),
    char_device(5, Some(0)),
    char_device(5, Some(1)),
    char_device(5, Some(2)),
    char_device(136, None),
];

/// Formats the rule as the v1 `devices.allow` file takes it: `c 1:3 rwm`.
impl fmt::Display for DeviceRule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
            DeviceKind::All => 'a',
        };
        let number = |value: Option<u32>| value.map_or("*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, letter) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(letter);
            }
        }
        write!(
            formatter,
            "{kind} {}:{} {access}",
            number(self.major),
            number(self.minor)
        )
    }
}

/// Denies every device to the v1 devices cgroup `dir`, then allows `rules`.
/// Must run before a process joins, and while `dir` has no child cgroup.
pub fn apply_v1(
    files: &dyn CgroupFiles,
    dir: &Path,
    rules: &[DeviceRule],
) -> Result<(), CgroupError> {
    files.write(dir, "devices.deny", "a")?;
    for rule in rules {
        files.write(dir, "devices.allow", &rule.to_string())?;
    }
    Ok(())
}

/// Loads the device program for `rules` and attaches it to the cgroup v2
/// directory `dir`. The attachment ends when the cgroup is removed.
pub fn attach_v2(dir: &Path, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let attach_error = |error| CgroupError::DeviceFilter {
        path: dir.to_path_buf(),
        error,
    };
    let cgroup = File::open(dir).map_err(attach_error)?;
    let program =
        bpf::load_cgroup_device_program(&program(rules), c"Apache-2.0", "unionfs_devices")
            .map_err(attach_error)?;
    bpf::attach_cgroup_device_program(cgroup.as_fd(), program.as_fd()).map_err(attach_error)
}

/// eBPF opcodes used by [`program`] (`linux/bpf_common.h`, `linux/bpf.h`).
mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: 32-bit load from memory.
    pub const LOAD_WORD: u8 = 0x61;
    /// `BPF_ALU64 | BPF_MOV | BPF_X`: copy a register.
    pub const MOVE_REGISTER: u8 = 0xbf;
    /// `BPF_ALU64 | BPF_MOV | BPF_K`: set a register to a constant.
    pub const MOVE_CONSTANT: u8 = 0xb7;
    /// `BPF_ALU64 | BPF_AND | BPF_K`.
    pub const AND_CONSTANT: u8 = 0x57;
    /// `BPF_ALU64 | BPF_RSH | BPF_K`.
    pub const SHIFT_RIGHT_CONSTANT: u8 = 0x77;
    /// `BPF_JMP | BPF_JNE | BPF_K`: jump when a register differs from a constant.
    pub const JUMP_NOT_EQUAL: u8 = 0x55;
    /// `BPF_JMP | BPF_EXIT`: return r0.
    pub const EXIT: u8 = 0x95;
}

/// Registers of the program: r1 contains the context on entry, r0 the result.
const RESULT: u8 = 0;
const CONTEXT: u8 = 1;
const ACCESS: u8 = 2;
const KIND: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

/// Device kinds in the program context (`BPF_DEVCG_DEV_BLOCK`, `_CHAR`).
const CONTEXT_BLOCK: i32 = 1;
const CONTEXT_CHAR: i32 = 2;

/// Assembles a cgroup device program that returns 1 (allow) when an access
/// matches one of `rules` and 0 (deny) otherwise.
///
/// The context is `struct bpf_cgroup_dev_ctx`: `access_type` (the access
/// bits in the upper 16 bits, the device kind in the lower 16), `major`,
/// `minor`, each a u32. Each rule is one block that jumps to the next block
/// on the first field that does not match.
pub fn program(rules: &[DeviceRule]) -> Vec<Instruction> {
    let mut instructions = vec![
        Instruction::new(op::LOAD_WORD, ACCESS, CONTEXT, 0, 0),
        Instruction::new(op::MOVE_REGISTER, KIND, ACCESS, 0, 0),
        Instruction::new(op::AND_CONSTANT, KIND, 0, 0, 0xffff),
        Instruction::new(op::SHIFT_RIGHT_CONSTANT, ACCESS, 0, 0, 16),
        Instruction::new(op::LOAD_WORD, MAJOR, CONTEXT, 4, 0),
        Instruction::new(op::LOAD_WORD, MINOR, CONTEXT, 8, 0),
    ];
    for rule in rules {
        instructions.extend(rule_block(rule));
    }
    instructions.push(Instruction::new(op::MOVE_CONSTANT, RESULT, 0, 0, 0));
    instructions.push(Instruction::new(op::EXIT, 0, 0, 0, 0));
    instructions
}

/// Returns the instructions that allow the accesses `rule` matches and fall
/// through to the next block otherwise.
fn rule_block(rule: &DeviceRule) -> Vec<Instruction> {
    // Jumps are built with offset 0 and pointed at the block's end below.
    let skip_unless =
        |register: u8, value: i32| Instruction::new(op::JUMP_NOT_EQUAL, register, 0, 0, value);
    let mut block = Vec::new();
    match rule.kind {
        DeviceKind::Char => block.push(skip_unless(KIND, CONTEXT_CHAR)),
        DeviceKind::Block => block.push(skip_unless(KIND, CONTEXT_BLOCK)),
        DeviceKind::All => {}
    }
    // An access that requests any bit outside the rule's does not match.
    let outside = i32::from(!rule.access & ALL_ACCESS);
    block.push(Instruction::new(op::MOVE_REGISTER, SCRATCH, ACCESS, 0, 0));
    block.push(Instruction::new(op::AND_CONSTANT, SCRATCH, 0, 0, outside));
    block.push(skip_unless(SCRATCH, 0));
    if let Some(major) = rule.major {
        block.push(skip_unless(MAJOR, major as i32));
    }
    if let Some(minor) = rule.minor {
        block.push(skip_unless(MINOR, minor as i32));
    }
    block.push(Instruction::new(op::MOVE_CONSTANT, RESULT, 0, 0, 1));
    block.push(Instruction::new(op::EXIT, 0, 0, 0, 0));

    let length = block.len();
    for (index, instruction) in block.iter_mut().enumerate() {
        if instruction.code == op::JUMP_NOT_EQUAL {
            instruction.offset = (length - index - 1) as i16;
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    /// Runs `program` on one access, interpreting the opcodes `program`
    /// emits; returns r0 at exit.
    fn run(program: &[Instruction], kind: i32, access: u8, major: u32, minor: u32) -> u64 {
        let context = [(u32::from(access) << 16) | kind as u32, major, minor];
        let mut registers = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let instruction = program[pc];
            let dst = usize::from(instruction.dst());
            let src = usize::from(instruction.src());
            let immediate = instruction.immediate as i64 as u64;
            pc += 1;
            match instruction.code {
                op::LOAD_WORD => {
                    assert_eq!(src, usize::from(CONTEXT));
                    registers[dst] = u64::from(context[instruction.offset as usize / 4]);
                }
                op::MOVE_REGISTER => registers[dst] = registers[src],
                op::MOVE_CONSTANT => registers[dst] = immediate,
                op::AND_CONSTANT => registers[dst] &= immediate,
                op::SHIFT_RIGHT_CONSTANT => registers[dst] >>= immediate,
                op::JUMP_NOT_EQUAL => {
                    if registers[dst] != immediate {
                        pc += instruction.offset as usize;
                    }
                }
                op::EXIT => return registers[usize::from(RESULT)],
                code => panic!("unexpected opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn program_allows_default_set_only() {
        let program = program(DEFAULT_RULES);
        let cases = [
            (CONTEXT_CHAR, READ | WRITE, 1, 3, 1, "null"),
            (CONTEXT_CHAR, READ, 1, 9, 1, "urandom"),
            (CONTEXT_CHAR, READ | WRITE, 5, 2, 1, "ptmx"),
            (CONTEXT_CHAR, READ | WRITE, 136, 7, 1, "a pseudo-terminal"),
            (CONTEXT_CHAR, MKNOD, 10, 229, 1, "mknod of fuse"),
            (CONTEXT_BLOCK, MKNOD, 8, 0, 1, "mknod of a disk"),
            (CONTEXT_CHAR, READ | WRITE, 10, 229, 0, "fuse"),
            (CONTEXT_CHAR, READ, 10, 237, 0, "loop-control"),
            (CONTEXT_CHAR, READ, 1, 11, 0, "kmsg"),
            (CONTEXT_CHAR, READ, 1, 1, 0, "mem"),
            (CONTEXT_BLOCK, READ, 8, 0, 0, "a disk"),
            (
                CONTEXT_BLOCK,
                READ,
                1,
                3,
                0,
                "a block device numbered as null",
            ),
            (
                CONTEXT_CHAR,
                READ | MKNOD,
                10,
                229,
                0,
                "mknod and read of fuse",
            ),
        ];
        for (kind, access, major, minor, expected, what) in cases {
            assert_eq!(
                run(&program, kind, access, major, minor),
                expected,
                "{what} ({kind} {major}:{minor} access {access})"
            );
        }
    }

    #[test]
    fn program_empty_rules_denies() {
        let program = program(&[]);

        assert_eq!(run(&program, CONTEXT_CHAR, READ, 1, 3), 0);
    }

    #[test]
    fn program_all_kind_rule() {
        let rule = DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: READ,
        };
        let program = program(&[rule]);

        assert_eq!(run(&program, CONTEXT_BLOCK, READ, 8, 1), 1);
        assert_eq!(run(&program, CONTEXT_CHAR, READ, 4, 1), 1);
        assert_eq!(run(&program, CONTEXT_CHAR, WRITE, 4, 1), 0);
    }

    #[test]
    fn rules_format_as_v1() {
        let formatted: Vec<String> = DEFAULT_RULES.iter().map(ToString::to_string).collect();

        assert_eq!(formatted[0], "c *:* m");
        assert_eq!(formatted[1], "b *:* m");
        assert_eq!(formatted[2], "c 1:3 rwm");
        assert_eq!(formatted.last().unwrap(), "c 136:* rwm");
    }

    #[test]
    fn apply_v1_denies_then_allows() {
        let dir = fake::cgroup_dir(&[("devices.deny", ""), ("devices.allow", "")]);

        apply_v1(&HostFiles, dir.path(), DEFAULT_RULES).unwrap();

        assert_eq!(fake::content(dir.path(), "devices.deny"), "a");
        // The fake file keeps only the last write.
        assert_eq!(fake::content(dir.path(), "devices.allow"), "c 136:* rwm");
    }
}
