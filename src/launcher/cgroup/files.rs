//! Reads and writes of cgroup control files, behind a trait so that each
//! controller can be unit-tested against a temporary directory standing in
//! for the cgroup filesystem.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::error::CgroupError;

/// Access to the control files of cgroup directories.
pub trait CgroupFiles {
    /// Reads the whole file `dir/file`.
    fn read(&self, dir: &Path, file: &str) -> Result<String, CgroupError>;

    /// Writes `value` to the existing file `dir/file`, opened with `O_TRUNC`
    /// as runc does. The file is never created, because the kernel provides
    /// every control file and a missing one means the controller is absent.
    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), CgroupError>;

    /// Returns true if `dir/file` exists. Some files depend on kernel
    /// options, such as `memory.memsw.*` on swap accounting.
    fn exists(&self, dir: &Path, file: &str) -> bool;
}

/// The files of the mounted cgroup hierarchies.
pub struct HostFiles;

impl CgroupFiles for HostFiles {
    fn read(&self, dir: &Path, file: &str) -> Result<String, CgroupError> {
        let path = dir.join(file);
        fs::read_to_string(&path).map_err(|error| CgroupError::Read { path, error })
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = dir.join(file);
        let result = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut opened| opened.write_all(value.as_bytes()));
        log::trace!("cgroup: write {value} to {}: {result:?}", path.display());

        result.map_err(|error| CgroupError::Write {
            path,
            value: value.to_string(),
            error,
        })
    }

    fn exists(&self, dir: &Path, file: &str) -> bool {
        dir.join(file).exists()
    }
}

/// Reads `dir/file` and returns the value of the line `key VALUE`, as found
/// in flat-keyed files such as `cgroup.events`, `memory.events` and
/// `cpu.stat`. Returns None if no line has the key.
pub fn read_keyed(
    files: &dyn CgroupFiles,
    dir: &Path,
    file: &str,
    key: &str,
) -> Result<Option<u64>, CgroupError> {
    let content = files.read(dir, file)?;

    for line in content.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some(key) {
            continue;
        }
        return match fields.next().and_then(|value| value.parse().ok()) {
            Some(value) => Ok(Some(value)),
            None => Err(CgroupError::Parse {
                path: dir.join(file),
                content,
            }),
        };
    }
    Ok(None)
}

/// Temporary directories that stand in for cgroup directories in unit tests.
#[cfg(test)]
pub mod fake {
    use std::fs;
    use std::path::Path;

    use tempfile::TempDir;

    /// Creates a directory holding `files`, each a (name, content) pair.
    pub fn cgroup_dir(files: &[(&str, &str)]) -> TempDir {
        let dir = tempfile::tempdir().expect("create temp dir");
        add_files(dir.path(), files);
        dir
    }

    /// Creates `files` in `dir`, each a (name, content) pair.
    pub fn add_files(dir: &Path, files: &[(&str, &str)]) {
        for (name, content) in files {
            fs::write(dir.join(name), content).expect("write fake control file");
        }
    }

    /// Returns the content of `dir/file`.
    pub fn content(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).expect("read fake control file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requires_existing_file() {
        let dir = fake::cgroup_dir(&[]);

        let error = HostFiles.write(dir.path(), "pids.max", "16").unwrap_err();

        let message = error.to_string();
        assert!(message.contains("failed to write 16 to"), "{message}");
        assert!(message.contains("pids.max"), "{message}");
        assert!(!dir.path().join("pids.max").exists());
    }

    #[test]
    fn read_keyed_finds_value() {
        let dir = fake::cgroup_dir(&[("cgroup.events", "populated 1\nfrozen 0\n")]);

        let frozen = read_keyed(&HostFiles, dir.path(), "cgroup.events", "frozen").unwrap();
        let missing = read_keyed(&HostFiles, dir.path(), "cgroup.events", "other").unwrap();

        assert_eq!(frozen, Some(0));
        assert_eq!(missing, None);
    }

    #[test]
    fn read_keyed_rejects_non_number() {
        let dir = fake::cgroup_dir(&[("memory.events", "oom_kill many\n")]);

        let error = read_keyed(&HostFiles, dir.path(), "memory.events", "oom_kill").unwrap_err();

        assert!(matches!(error, CgroupError::Parse { .. }), "{error}");
    }
}
