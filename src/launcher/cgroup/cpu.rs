//! The cpu controller (CFS bandwidth and weight) and CPU accounting.
//!
//! `--cpus N` becomes a quota of N × 100 ms of CPU time per 100 ms period:
//! v1 `cpu.cfs_period_us` and `cpu.cfs_quota_us`, v2 `cpu.max` as
//! "QUOTA PERIOD" in microseconds. `--cpu-shares` is v1 `cpu.shares`
//! (2 to 262144, default 1024); v2 has `cpu.weight` (1 to 10000, default
//! 100) instead. Usage is v1 `cpuacct.usage` in nanoseconds, or the
//! `usage_usec` line of v2 `cpu.stat`.

use std::path::Path;
use std::time::Duration;

use super::error::CgroupError;
use super::files::{CgroupFiles, read_keyed};

/// The CFS period, 100 ms as in Docker, in microseconds.
pub const PERIOD_US: u64 = 100_000;

/// The smallest CFS quota the kernel accepts, 1 ms, in microseconds.
pub const MIN_QUOTA_US: u64 = 1_000;

/// The range the kernel accepts for v1 `cpu.shares`.
pub const SHARES_RANGE: std::ops::RangeInclusive<u64> = 2..=262_144;

/// Returns the CFS quota in microseconds per period for `cpus` CPUs.
pub fn quota_us(cpus: f64) -> u64 {
    (cpus * PERIOD_US as f64).round() as u64
}

/// Converts v1 `cpu.shares` to v2 `cpu.weight` with runc's linear map,
/// `1 + ((shares - 2) * 9999) / 262142`, which sends 2..=262144 onto 1..=10000.
/// NOTE: it sends the v1 default 1024 to 39, not the v2 default 100. Newer
/// opencontainers/cgroups releases use a quadratic map that keeps 1024 at 100.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.saturating_sub(2) * 9_999) / 262_142
}

/// Writes the v1 quota and shares that are given. The period is written
/// before the quota, because the kernel checks the quota against it.
pub fn apply_v1(
    files: &dyn CgroupFiles,
    dir: &Path,
    cpus: Option<f64>,
    shares: Option<u64>,
) -> Result<(), CgroupError> {
    if let Some(cpus) = cpus {
        files.write(dir, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
        files.write(dir, "cpu.cfs_quota_us", &quota_us(cpus).to_string())?;
    }
    if let Some(shares) = shares {
        files.write(dir, "cpu.shares", &shares.to_string())?;
    }
    Ok(())
}

/// Writes the v2 `cpu.max` and `cpu.weight` for the options that are given.
pub fn apply_v2(
    files: &dyn CgroupFiles,
    dir: &Path,
    cpus: Option<f64>,
    shares: Option<u64>,
) -> Result<(), CgroupError> {
    if let Some(cpus) = cpus {
        files.write(dir, "cpu.max", &format!("{} {PERIOD_US}", quota_us(cpus)))?;
    }
    if let Some(shares) = shares {
        files.write(dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
    }
    Ok(())
}

/// Returns the CPU time used by the processes of the v1 cpuacct cgroup `dir`.
pub fn usage_v1(files: &dyn CgroupFiles, dir: &Path) -> Result<Duration, CgroupError> {
    let content = files.read(dir, "cpuacct.usage")?;
    let nanoseconds: u64 = content.trim().parse().map_err(|_| CgroupError::Parse {
        path: dir.join("cpuacct.usage"),
        content,
    })?;
    Ok(Duration::from_nanos(nanoseconds))
}

/// Returns the CPU time used by the processes of the v2 cgroup `dir`. Every
/// non-root v2 cgroup has `cpu.stat`, with or without the cpu controller.
pub fn usage_v2(files: &dyn CgroupFiles, dir: &Path) -> Result<Duration, CgroupError> {
    match read_keyed(files, dir, "cpu.stat", "usage_usec")? {
        Some(microseconds) => Ok(Duration::from_micros(microseconds)),
        None => Err(CgroupError::Parse {
            path: dir.join("cpu.stat"),
            content: files.read(dir, "cpu.stat")?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    #[test]
    fn quota_for_fractions_of_a_cpu() {
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(0.2), 20_000);
        assert_eq!(quota_us(0.01), MIN_QUOTA_US);
        assert_eq!(quota_us(2.0), 200_000);
    }

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(512), 20);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn apply_v1_writes_period_quota_shares() {
        let dir = fake::cgroup_dir(&[
            ("cpu.cfs_period_us", ""),
            ("cpu.cfs_quota_us", ""),
            ("cpu.shares", ""),
        ]);

        apply_v1(&HostFiles, dir.path(), Some(0.5), Some(512)).unwrap();

        assert_eq!(fake::content(dir.path(), "cpu.cfs_period_us"), "100000");
        assert_eq!(fake::content(dir.path(), "cpu.cfs_quota_us"), "50000");
        assert_eq!(fake::content(dir.path(), "cpu.shares"), "512");
    }

    #[test]
    fn apply_v1_leaves_unset_options() {
        let dir = fake::cgroup_dir(&[
            ("cpu.cfs_period_us", ""),
            ("cpu.cfs_quota_us", "-1"),
            ("cpu.shares", "1024"),
        ]);

        apply_v1(&HostFiles, dir.path(), None, Some(256)).unwrap();

        assert_eq!(fake::content(dir.path(), "cpu.cfs_quota_us"), "-1");
        assert_eq!(fake::content(dir.path(), "cpu.shares"), "256");
    }

    #[test]
    fn apply_v2_writes_max_and_weight() {
        let dir = fake::cgroup_dir(&[("cpu.max", "max 100000\n"), ("cpu.weight", "100\n")]);

        apply_v2(&HostFiles, dir.path(), Some(0.2), Some(512)).unwrap();

        assert_eq!(fake::content(dir.path(), "cpu.max"), "20000 100000");
        assert_eq!(fake::content(dir.path(), "cpu.weight"), "20");
    }

    #[test]
    fn usage_from_cpuacct_and_cpu_stat() {
        let v1 = fake::cgroup_dir(&[("cpuacct.usage", "1500000000\n")]);
        let v2 = fake::cgroup_dir(&[(
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        )]);

        assert_eq!(
            usage_v1(&HostFiles, v1.path()).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            usage_v2(&HostFiles, v2.path()).unwrap(),
            Duration::from_millis(2500)
        );
    }
}
