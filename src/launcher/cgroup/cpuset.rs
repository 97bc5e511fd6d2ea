//! The cpuset controller: which CPUs the container may run on.
//!
//! CPU lists use the kernel's list format, such as `0-1,3`. A new v1 cpuset
//! cgroup starts with empty `cpuset.cpus` and `cpuset.mems`, and a process
//! cannot join it (ENOSPC) until both are set. So every v1 cpuset cgroup the
//! launcher creates, the `unionfs` parent included, gets the CPUs requested
//! or its parent's, and its parent's memory nodes.
//!
//! A v2 cpuset with empty `cpuset.cpus` uses its parent's CPUs, so v2 writes
//! only a requested list. The parent's usable CPUs are in
//! `cpuset.cpus.effective`.

use std::collections::BTreeSet;
use std::path::Path;

use super::error::CgroupError;
use super::files::CgroupFiles;

const OPTION: &str = "--cpuset-cpus";

/// Parses a CPU list such as `0-1,3` into CPU numbers. An empty list is
/// valid and gives no CPUs. Returns the reason when the text is invalid.
pub fn parse_cpu_list(text: &str) -> Result<BTreeSet<u32>, String> {
    let mut cpus = BTreeSet::new();
    let text = text.trim();
    if text.is_empty() {
        return Ok(cpus);
    }

    for item in text.split(',') {
        let parse = |number: &str| {
            number
                .parse::<u32>()
                .map_err(|_| format!("{number:?} is not a CPU number; use a list such as 0-1,3"))
        };
        match item.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse(first)?, parse(last)?);
                if first > last {
                    return Err(format!(
                        "the range {item} is reversed; write {last}-{first}"
                    ));
                }
                cpus.extend(first..=last);
            }
            None => {
                cpus.insert(parse(item)?);
            }
        }
    }
    Ok(cpus)
}

/// Checks that `requested` is a valid CPU list naming only CPUs in the
/// parent's list `available`, read from `source`.
fn check_available(requested: &str, available: &str, source: &Path) -> Result<(), CgroupError> {
    let invalid = |reason: String| CgroupError::InvalidLimit {
        option: OPTION,
        value: requested.to_string(),
        reason,
    };

    let requested_cpus = parse_cpu_list(requested).map_err(invalid)?;
    if requested_cpus.is_empty() {
        return Err(invalid("the list names no CPU".to_string()));
    }
    let available_cpus = parse_cpu_list(available).map_err(|_| CgroupError::Parse {
        path: source.to_path_buf(),
        content: available.to_string(),
    })?;

    let missing: Vec<String> = requested_cpus
        .difference(&available_cpus)
        .map(|cpu| cpu.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(invalid(format!(
        "CPU {} does not exist or is not available to this cgroup; available CPUs are {} (from {})",
        missing.join(","),
        available.trim(),
        source.display()
    )))
}

/// Gives the v1 cpuset cgroup `dir` its parent's CPUs and memory nodes if
/// its own are empty. Used on the `unionfs` parent, whose own parent is the
/// hierarchy root.
pub fn inherit_v1(files: &dyn CgroupFiles, dir: &Path, parent: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if files.read(dir, file)?.trim().is_empty() {
            let inherited = files.read(parent, file)?;
            files.write(dir, file, inherited.trim())?;
        }
    }
    Ok(())
}

/// Sets `cpuset.cpus` of the v1 cgroup `dir` to `requested`, or to the
/// parent's CPUs if None, and `cpuset.mems` to the parent's memory nodes.
pub fn apply_v1(
    files: &dyn CgroupFiles,
    dir: &Path,
    parent: &Path,
    requested: Option<&str>,
) -> Result<(), CgroupError> {
    let parent_cpus = files.read(parent, "cpuset.cpus")?;
    let parent_mems = files.read(parent, "cpuset.mems")?;

    let cpus = match requested {
        Some(requested) => {
            check_available(requested, &parent_cpus, &parent.join("cpuset.cpus"))?;
            requested.trim()
        }
        None => parent_cpus.trim(),
    };
    files.write(dir, "cpuset.cpus", cpus)?;
    files.write(dir, "cpuset.mems", parent_mems.trim())
}

/// Sets `cpuset.cpus` of the v2 cgroup `dir` to `requested`, after checking
/// it against the parent's effective CPUs.
pub fn apply_v2(
    files: &dyn CgroupFiles,
    dir: &Path,
    parent: &Path,
    requested: &str,
) -> Result<(), CgroupError> {
    let available = files.read(parent, "cpuset.cpus.effective")?;
    check_available(requested, &available, &parent.join("cpuset.cpus.effective"))?;
    files.write(dir, "cpuset.cpus", requested.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::cgroup::files::{HostFiles, fake};

    #[test]
    fn cpu_list_parses_ranges() {
        let cpus = parse_cpu_list("0-2,5,7-7\n").unwrap();

        assert_eq!(cpus.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 5, 7]);
        assert!(parse_cpu_list("").unwrap().is_empty());
    }

    #[test]
    fn cpu_list_rejects_invalid() {
        for text in ["a", "0-", "3-1", "0,,1", "-1", "0 1"] {
            assert!(
                parse_cpu_list(text).is_err(),
                "parse_cpu_list({text:?}) accepted"
            );
        }
    }

    #[test]
    fn inherit_v1_fills_empty_files() {
        let root = fake::cgroup_dir(&[("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0\n")]);
        let parent = fake::cgroup_dir(&[("cpuset.cpus", "\n"), ("cpuset.mems", "\n")]);

        inherit_v1(&HostFiles, parent.path(), root.path()).unwrap();

        assert_eq!(fake::content(parent.path(), "cpuset.cpus"), "0-3");
        assert_eq!(fake::content(parent.path(), "cpuset.mems"), "0");
    }

    #[test]
    fn inherit_v1_keeps_set_files() {
        let root = fake::cgroup_dir(&[("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0\n")]);
        let parent = fake::cgroup_dir(&[("cpuset.cpus", "1\n"), ("cpuset.mems", "0\n")]);

        inherit_v1(&HostFiles, parent.path(), root.path()).unwrap();

        assert_eq!(fake::content(parent.path(), "cpuset.cpus"), "1\n");
    }

    #[test]
    fn apply_v1_requested_cpus() {
        let parent = fake::cgroup_dir(&[("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0\n")]);
        let dir = fake::cgroup_dir(&[("cpuset.cpus", ""), ("cpuset.mems", "")]);

        apply_v1(&HostFiles, dir.path(), parent.path(), Some("0,2")).unwrap();

        assert_eq!(fake::content(dir.path(), "cpuset.cpus"), "0,2");
        assert_eq!(fake::content(dir.path(), "cpuset.mems"), "0");
    }

    #[test]
    fn apply_v1_inherits_cpus() {
        let parent = fake::cgroup_dir(&[("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0-1\n")]);
        let dir = fake::cgroup_dir(&[("cpuset.cpus", ""), ("cpuset.mems", "")]);

        apply_v1(&HostFiles, dir.path(), parent.path(), None).unwrap();

        assert_eq!(fake::content(dir.path(), "cpuset.cpus"), "0-3");
        assert_eq!(fake::content(dir.path(), "cpuset.mems"), "0-1");
    }

    #[test]
    fn apply_v1_rejects_missing_cpu() {
        let parent = fake::cgroup_dir(&[("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n")]);
        let dir = fake::cgroup_dir(&[("cpuset.cpus", ""), ("cpuset.mems", "")]);

        let error = apply_v1(&HostFiles, dir.path(), parent.path(), Some("1-2,9")).unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains("invalid --cpuset-cpus value 1-2,9"),
            "{message}"
        );
        assert!(message.contains("CPU 2,9 does not exist"), "{message}");
        assert!(message.contains("available CPUs are 0-1"), "{message}");
        assert_eq!(
            fake::content(dir.path(), "cpuset.cpus"),
            "",
            "nothing is written"
        );
    }

    #[test]
    fn apply_v2_checks_effective_cpus() {
        let parent = fake::cgroup_dir(&[("cpuset.cpus.effective", "0-1\n")]);
        let dir = fake::cgroup_dir(&[("cpuset.cpus", "")]);

        apply_v2(&HostFiles, dir.path(), parent.path(), "1").unwrap();
        let error = apply_v2(&HostFiles, dir.path(), parent.path(), "4").unwrap_err();

        assert_eq!(fake::content(dir.path(), "cpuset.cpus"), "1");
        assert!(
            error.to_string().contains("cpuset.cpus.effective"),
            "{error}"
        );
    }
}
