//! A recording [`Syscalls`] for unit tests: every call is stored in order,
//! and nothing touches the kernel, so the container-side sequence is
//! checked without root.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::capabilities::Capabilities;
use super::syscalls::{Kind, MountSpec, Source, StdioPlan, Syscalls};
use super::user::Credentials;

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Unshare(CloneFlags),
    MakeMountsPrivate,
    Mount {
        source: String,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
    },
    RemountReadOnly(PathBuf),
    MkdirAll(PathBuf),
    Mknod(PathBuf, u32, u64, u64),
    Symlink(PathBuf, PathBuf),
    SetHostname(String),
    SetLinkUp(String),
    PivotRoot,
    LimitBoundingSet(usize),
    SetupStdio(StdioPlan),
    SetCredentials(Credentials),
    SetCapabilities(usize),
    Chdir(PathBuf),
    SetNoNewPrivs,
    CloseInheritedFds,
    Exec(Vec<OsString>, Vec<OsString>),
}

/// The fake. `existing` lists container paths that exist, with their kind.
/// `files` gives the content `read_file` returns. `fail` names calls (by
/// method name) that fail with `EPERM`.
#[derive(Default)]
pub struct Recorder {
    pub calls: RefCell<Vec<Call>>,
    pub existing: HashMap<PathBuf, Kind>,
    pub files: HashMap<PathBuf, String>,
    pub fail: HashSet<&'static str>,
    pub exec_error: Option<i32>,
}

impl Recorder {
    fn record(&self, name: &'static str, call: Call) -> io::Result<()> {
        self.calls.borrow_mut().push(call);
        if self.fail.contains(name) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }

    /// Returns the recorded calls.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Syscalls for Recorder {
    fn unshare(&self, flags: CloneFlags) -> io::Result<()> {
        self.record("unshare", Call::Unshare(flags))
    }
    fn make_mounts_private(&self) -> io::Result<()> {
        self.record("make_mounts_private", Call::MakeMountsPrivate)
    }
    fn mount(&self, spec: &MountSpec<'_>) -> io::Result<()> {
        let source = match spec.source {
            Source::Name(name) => name.to_string(),
            Source::Host(path) => format!("host:{}", path.display()),
            Source::InRoot(path) => format!("root:{}", path.display()),
        };
        self.record(
            "mount",
            Call::Mount {
                source,
                target: spec.target.to_path_buf(),
                fstype: spec.fstype.map(str::to_string),
                flags: spec.flags,
            },
        )
    }
    fn remount_read_only(&self, target: &Path) -> io::Result<()> {
        self.record(
            "remount_read_only",
            Call::RemountReadOnly(target.to_path_buf()),
        )
    }
    fn kind(&self, path: &Path) -> io::Result<Option<Kind>> {
        Ok(self.existing.get(path).copied())
    }
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record("mkdir_all", Call::MkdirAll(path.to_path_buf()))
    }
    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        self.record(
            "mknod_char",
            Call::Mknod(path.to_path_buf(), mode, major, minor),
        )
    }
    fn symlink(&self, value: &Path, path: &Path) -> io::Result<()> {
        self.record(
            "symlink",
            Call::Symlink(value.to_path_buf(), path.to_path_buf()),
        )
    }
    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record("set_hostname", Call::SetHostname(name.to_string()))
    }
    fn set_link_up(&self, interface: &str) -> io::Result<()> {
        self.record("set_link_up", Call::SetLinkUp(interface.to_string()))
    }
    fn pivot_root(&self) -> io::Result<()> {
        self.record("pivot_root", Call::PivotRoot)
    }
    fn read_file(&self, path: &Path) -> io::Result<String> {
        Ok(self.files.get(path).cloned().unwrap_or_default())
    }
    fn limit_bounding_set(&self, keep: &Capabilities) -> io::Result<()> {
        self.record("limit_bounding_set", Call::LimitBoundingSet(keep.len()))
    }
    fn setup_stdio(&self, plan: StdioPlan) -> io::Result<()> {
        self.record("setup_stdio", Call::SetupStdio(plan))
    }
    fn set_credentials(&self, credentials: &Credentials) -> io::Result<()> {
        self.record("set_credentials", Call::SetCredentials(credentials.clone()))
    }
    fn set_capabilities(&self, keep: &Capabilities) -> io::Result<()> {
        self.record("set_capabilities", Call::SetCapabilities(keep.len()))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record("chdir", Call::Chdir(path.to_path_buf()))
    }
    fn set_no_new_privs(&self) -> io::Result<()> {
        self.record("set_no_new_privs", Call::SetNoNewPrivs)
    }
    fn close_inherited_fds(&self) -> io::Result<()> {
        self.record("close_inherited_fds", Call::CloseInheritedFds)
    }
    fn exec(&self, argv: &[OsString], env: &[OsString]) -> io::Error {
        self.calls
            .borrow_mut()
            .push(Call::Exec(argv.to_vec(), env.to_vec()));
        io::Error::from_raw_os_error(self.exec_error.unwrap_or(libc::ENOENT))
    }
}
