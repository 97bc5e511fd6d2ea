//! The memory controller: the limit, swap, and the OOM kill counter.
//!
//! v1 files: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (memory
//! plus swap, present with swap accounting), and `memory.oom_control`, whose
//! `oom_kill` line counts the processes the OOM killer killed in the cgroup.
//! v2 files: `memory.max`, `memory.swap.max`, and `memory.events` with the
//! same `oom_kill` counter.

use std::path::Path;

use super::error::CgroupError;
use super::files::{CgroupFiles, read_keyed};

const KIB: u64 = 1024;
const UNITS: [(char, u64); 5] = [
    ('b', 1),
    ('k', KIB),
    ('m', KIB * KIB),
    ('g', KIB * KIB * KIB),
    ('t', KIB * KIB * KIB * KIB),
];

/// Parses a memory size as `docker run -m` takes it: a number with an
/// optional unit b, k, m, g or t in either case, optionally followed by `b`
/// or `ib` (`100m`, `100MB` and `100MiB` are all 100 × 2^20 bytes). A
/// fraction is allowed and rounded down to whole bytes (`1.5k` is 1536).
pub fn parse_memory(text: &str) -> Result<u64, CgroupError> {
    let invalid = || CgroupError::InvalidMemory {
        value: text.to_string(),
    };

    let number_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let multiplier = unit_multiplier(unit).ok_or_else(invalid)?;

    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(invalid());
    }
    let whole: u64 = whole.parse().map_err(|_| invalid())?;
    let bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| too_large(text))?;
    if fraction.is_empty() {
        return Ok(bytes);
    }

    // The fraction has at most 19 digits, so its numerator fits a u128 and
    // the product with any multiplier up to 2^40 does too.
    let digits = fraction.len().min(19);
    let numerator: u128 = fraction[..digits].parse().map_err(|_| invalid())?;
    let fraction_bytes = numerator * u128::from(multiplier) / 10u128.pow(digits as u32);
    bytes
        .checked_add(fraction_bytes as u64)
        .ok_or_else(|| too_large(text))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    let unit = unit.to_ascii_lowercase();
    let mut chars = unit.chars();
    let Some(first) = chars.next() else {
        return Some(1);
    };
    let (_, multiplier) = UNITS.iter().find(|(letter, _)| *letter == first)?;

    let suffix = chars.as_str();
    let suffix_allowed = suffix.is_empty() || (first != 'b' && (suffix == "b" || suffix == "ib"));
    suffix_allowed.then_some(*multiplier)
}

fn too_large(text: &str) -> CgroupError {
    CgroupError::InvalidLimit {
        option: "--memory",
        value: text.to_string(),
        reason: "the size does not fit in 64 bits".to_string(),
    }
}

/// Formats a byte count with the largest binary unit that gives at least 1,
/// with up to one decimal: `100 MiB`, `1.5 GiB`, `512 bytes`.
pub fn format_memory(bytes: u64) -> String {
    const NAMES: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];

    let mut unit = None;
    for (index, name) in NAMES.iter().enumerate() {
        let size = KIB.pow(index as u32 + 1);
        if bytes >= size {
            unit = Some((name, size));
        }
    }
    let Some((name, size)) = unit else {
        return format!("{bytes} bytes");
    };

    let tenths = bytes as u128 * 10 / u128::from(size);
    if tenths % 10 == 0 {
        format!("{} {name}", tenths / 10)
    } else {
        format!("{}.{} {name}", tenths / 10, tenths % 10)
    }
}

/// Sets the v1 memory limit to `limit` bytes. The memory+swap limit gets the
/// same value when the kernel accounts swap, so swap cannot extend the limit.
/// It is written second, because the kernel rejects a memory+swap limit below
/// the memory limit.
pub fn apply_v1(files: &dyn CgroupFiles, dir: &Path, limit: u64) -> Result<(), CgroupError> {
    let value = limit.to_string();

    files.write(dir, "memory.limit_in_bytes", &value)?;
    if files.exists(dir, "memory.memsw.limit_in_bytes") {
        files.write(dir, "memory.memsw.limit_in_bytes", &value)?;
    }
    Ok(())
}

/// Sets the v2 memory limit to `limit` bytes and allows no swap, where the
/// kernel accounts swap.
pub fn apply_v2(files: &dyn CgroupFiles, dir: &Path, limit: u64) -> Result<(), CgroupError> {
    files.write(dir, "memory.max", &limit.to_string())?;
    if files.exists(dir, "memory.swap.max") {
        files.write(dir, "memory.swap.max", "0")?;
    }
    Ok(())
}

/// Returns how many processes the OOM killer killed in the v1 cgroup `dir`.
/// Returns 0 on older kernels, whose file has no `oom_kill` line.
pub fn oom_kills_v1(files: &dyn CgroupFiles, dir: &Path) -> Result<u64, CgroupError> {
    Ok(read_keyed(files, dir, "memory.oom_control", "oom_kill")?.unwrap_or(0))
}

/// Returns how many processes the OOM killer killed in the v2 cgroup `dir`
/// and its descendants.
pub fn oom_kills_v2(files: &dyn CgroupFiles, dir: &Path) -> Result<u64, CgroupError> {
    Ok(read_keyed(files, dir, "memory.events", "oom_kill")?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn parse_memory_units() {
        let cases = [
            ("1048576", MIB),
            ("1048576b", MIB),
            ("512k", 512 * KIB),
            ("512KB", 512 * KIB),
            ("100m", 100 * MIB),
            ("100MiB", 100 * MIB),
            ("1g", 1024 * MIB),
            ("1.5g", 1536 * MIB),
            ("1.5k", 1536),
            ("2t", 2 * 1024 * 1024 * MIB),
            ("0", 0),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_memory(text).unwrap(),
                expected,
                "parse_memory({text:?})"
            );
        }
    }

    #[test]
    fn parse_memory_rejects_invalid() {
        for text in [
            "", "10x", "m", "-1m", "1.5.2m", "1.m", ".5m", "10 m", "10bb", "10mbb", " 10m",
        ] {
            let error = parse_memory(text).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(&format!("{text:?}")),
                "parse_memory({text:?}): {message}"
            );
            assert!(
                message.contains("b, k, m, g or t"),
                "parse_memory({text:?}): {message}"
            );
        }
    }

    #[test]
    fn parse_memory_rejects_overflow() {
        let error = parse_memory("20000000t").unwrap_err();

        assert!(
            error.to_string().contains("does not fit in 64 bits"),
            "{error}"
        );
    }

    #[test]
    fn format_memory_units() {
        assert_eq!(format_memory(100 * MIB), "100 MiB");
        assert_eq!(format_memory(1536 * MIB), "1.5 GiB");
        assert_eq!(format_memory(512), "512 bytes");
        assert_eq!(format_memory(32 * MIB), "32 MiB");
    }

    #[test]
    fn apply_v1_sets_memory_and_swap() {
        let dir = fake::cgroup_dir(&[
            ("memory.limit_in_bytes", ""),
            ("memory.memsw.limit_in_bytes", ""),
        ]);

        apply_v1(&HostFiles, dir.path(), 32 * MIB).unwrap();

        assert_eq!(
            fake::content(dir.path(), "memory.limit_in_bytes"),
            "33554432"
        );
        assert_eq!(
            fake::content(dir.path(), "memory.memsw.limit_in_bytes"),
            "33554432"
        );
    }

    #[test]
    fn apply_v1_without_swap_accounting() {
        let dir = fake::cgroup_dir(&[("memory.limit_in_bytes", "")]);

        apply_v1(&HostFiles, dir.path(), 32 * MIB).unwrap();

        assert_eq!(
            fake::content(dir.path(), "memory.limit_in_bytes"),
            "33554432"
        );
        assert!(!dir.path().join("memory.memsw.limit_in_bytes").exists());
    }

    #[test]
    fn apply_v2_sets_max_and_no_swap() {
        let dir = fake::cgroup_dir(&[("memory.max", "max\n"), ("memory.swap.max", "max\n")]);

        apply_v2(&HostFiles, dir.path(), 100 * MIB).unwrap();

        assert_eq!(fake::content(dir.path(), "memory.max"), "104857600");
        assert_eq!(fake::content(dir.path(), "memory.swap.max"), "0");
    }

    #[test]
    fn apply_v2_error_names_value_and_path() {
        let dir = fake::cgroup_dir(&[]);

        let error = apply_v2(&HostFiles, dir.path(), 100 * MIB).unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("failed to write 104857600 to"),
            "{message}"
        );
        assert!(message.contains("memory.max"), "{message}");
    }

    #[test]
    fn oom_kill_counters() {
        let v1 = fake::cgroup_dir(&[(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )]);
        let v2 = fake::cgroup_dir(&[(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )]);
        let old_kernel =
            fake::cgroup_dir(&[("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")]);

        assert_eq!(oom_kills_v1(&HostFiles, v1.path()).unwrap(), 2);
        assert_eq!(oom_kills_v2(&HostFiles, v2.path()).unwrap(), 1);
        assert_eq!(oom_kills_v1(&HostFiles, old_kernel.path()).unwrap(), 0);
    }
}
