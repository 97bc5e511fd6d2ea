//! Mounting: opening `/dev/fuse`, `mount(2)`, serving the FUSE session,
//! detaching from the caller, and unmounting.
//!
//! The daemon detaches only once the mount is live: the parent waits on a
//! pipe for the child's report and exits 0 only after the kernel answered the
//! FUSE handshake. The detached child keeps no inherited stdin, stdout or
//! stderr, so a caller reading its stderr until it closes (podman) returns.
//! Each daemon records its pid under `/run/unionfs/fuse/`, keyed by the
//! mount's device number, so `unionfs umount` can wait for it to exit.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fuser::{Config, Session, SessionACL};
use log::{info, warn};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::fs::{DEFAULT_TTL, UnionFs};
use crate::options::MountOptions;
use crate::stack::LayerStack;
use crate::sys::process::{Forked, fork_single_threaded};
use crate::union::Union;

/// Where daemons record their pids, one file per mount.
const PID_DIR: &str = "/run/unionfs/fuse";

/// What `unionfs mount` was asked to do.
pub struct MountRequest {
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    pub foreground: bool,
}

/// Mounts the union and serves it until it is unmounted. In the background
/// form this returns in the caller once the mount is live, and never in the
/// daemon.
pub fn mount(mut request: MountRequest) -> Result<()> {
    let stack = LayerStack::open(&request.options, &request.mountpoint)?;
    // The daemon changes to `/`, so a relative mountpoint must be resolved now.
    request.mountpoint = request.mountpoint.canonicalize()?;
    raise_fd_limit();
    if request.foreground {
        return serve(stack, &request, &mut None);
    }
    let (read_end, write_end) =
        nix::unistd::pipe().context("cannot create a pipe to the daemon")?;
    match fork_single_threaded().context("cannot start the daemon")? {
        Forked::Parent(child) => {
            drop(write_end);
            // The daemon shares the stack's open files, and dropping them
            // here would release the work dir's flock for both processes.
            std::mem::forget(stack);
            wait_for_daemon(read_end, child)
        }
        Forked::Child => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            let mut report = Some(File::from(write_end));
            let result = serve(stack, &request, &mut report);
            if let (Err(err), Some(report)) = (&result, report.as_mut()) {
                // The parent prints this; it is still reading the pipe.
                let _ = write!(report, "{err:#}");
            }
            std::process::exit(i32::from(result.is_err()));
        }
    }
}

/// Waits for the daemon's report: empty means the mount is live, any text is
/// the error that stopped it.
fn wait_for_daemon(read_end: OwnedFd, child: nix::unistd::Pid) -> Result<()> {
    let mut message = String::new();
    File::from(read_end)
        .read_to_string(&mut message)
        .context("cannot read the daemon's report")?;
    if let Some(error) = message.strip_prefix("ready") {
        if error.is_empty() {
            return Ok(());
        }
    }
    let _ = nix::sys::wait::waitpid(child, None);
    if message.is_empty() {
        bail!(
            "the daemon (pid {child}) exited before the mount was live; run with -f -v to see why"
        );
    }
    bail!("{message}")
}

/// Raises the open file limit as far as the system allows: the daemon
/// holds one descriptor per layer for every directory the kernel keeps
/// cached.
// NOTE: the kernel decides how many directories stay cached, so a walk of
// enough directories can still exhaust the limit; requests then fail with
// EMFILE until the kernel forgets some.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // Root may raise the hard limit up to the kernel's nr_open.
    let system_max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let wanted = system_max.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_err() {
        if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            warn!("cannot raise the open file limit to {hard}: {err}");
        }
    }
}

/// Mounts and serves. `report` receives "ready" once the mount is live and
/// is closed then, which lets the waiting parent exit.
fn serve(stack: LayerStack, request: &MountRequest, report: &mut Option<File>) -> Result<()> {
    nix::sys::stat::umask(Mode::empty());
    let options = &request.options;
    let union = Union::new(stack).context("cannot read the layers' root directories")?;
    let fuse = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse; load the fuse module (modprobe fuse)")?;
    let allow_other = options.allow_other || nix::unistd::geteuid().is_root();
    // Catch signals before the mount exists: one that arrives before the
    // watcher thread runs waits for it instead of killing the daemon.
    let signals = catch_signals();
    mount_fuse(&fuse, request, allow_other)?;
    let mountpoint = request.mountpoint.clone();

    let config = session_config(options);
    let acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let notifier = union.notifier_slot();
    let session = match Session::from_fd(
        UnionFs::new(union, DEFAULT_TTL),
        OwnedFd::from(fuse),
        acl,
        config,
    ) {
        Ok(session) => session,
        Err(err) => {
            let _ = unmount(&mountpoint, true);
            return Err(err).context("the FUSE handshake with the kernel failed");
        }
    };
    let _ = notifier.set(session.notifier());
    let pid_file = PidFile::create(&mountpoint);
    info!("mounted {} on {}", options.fsname, mountpoint.display());
    if let Some(mut report) = report.take() {
        report
            .write_all(b"ready")
            .context("cannot report to the parent")?;
        drop(report);
        detach_stdio();
    }
    if let Some(signals) = signals {
        watch_signals(signals, mountpoint.clone());
    }

    let result = session.run();
    drop(pid_file);
    info!("unmounted {}", mountpoint.display());
    match result {
        // After `umount -l` the kernel may end the connection as aborted
        // once the last open file closes; the mount is gone either way.
        Err(err)
            if err.raw_os_error() == Some(libc::ECONNABORTED) && !is_unionfs_mount(&mountpoint) =>
        {
            Ok(())
        }
        result => result.context("the FUSE session ended with an error"),
    }
}

/// Returns true while a unionfs mount is listed at `mountpoint`.
fn is_unionfs_mount(mountpoint: &Path) -> bool {
    find_mount(mountpoint).is_some_and(|mount| mount.fstype == "fuse.unionfs")
}

fn session_config(options: &MountOptions) -> Config {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = Config::default();
    config.n_threads = Some(options.threads.unwrap_or((cpus * 2).max(4)));
    config.clone_fd = true;
    config
}

/// Calls mount(2) for a `fuse.unionfs` filesystem served through `fuse`.
fn mount_fuse(fuse: &File, request: &MountRequest, allow_other: bool) -> Result<()> {
    let options = &request.options;
    let root_mode = nix::sys::stat::stat(&request.mountpoint).map_or(0o40755, |stat| stat.st_mode);
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        fuse.as_raw_fd(),
        root_mode & libc::S_IFMT | 0o755,
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    nix::mount::mount(
        Some(options.fsname.as_str()),
        &request.mountpoint,
        Some("fuse.unionfs"),
        mount_flags(options),
        Some(data.as_str()),
    )
    .with_context(|| {
        format!(
            "cannot mount on {}; mounting needs root (CAP_SYS_ADMIN)",
            request.mountpoint.display()
        )
    })
}

fn mount_flags(options: &MountOptions) -> MsFlags {
    let pairs = [
        (!options.suid, MsFlags::MS_NOSUID),
        (!options.dev, MsFlags::MS_NODEV),
        (!options.exec, MsFlags::MS_NOEXEC),
        (options.read_only, MsFlags::MS_RDONLY),
        (options.noatime, MsFlags::MS_NOATIME),
        (options.sync, MsFlags::MS_SYNCHRONOUS),
        (options.dirsync, MsFlags::MS_DIRSYNC),
    ];
    pairs
        .iter()
        .filter(|(on, _)| *on)
        .fold(MsFlags::empty(), |flags, (_, flag)| flags | *flag)
}

/// Points stdin, stdout and stderr at /dev/null.
fn detach_stdio() {
    let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") else {
        return;
    };
    let _ = nix::unistd::dup2_stdin(null.as_fd());
    let _ = nix::unistd::dup2_stdout(null.as_fd());
    let _ = nix::unistd::dup2_stderr(null.as_fd());
}

/// Starts catching SIGINT, SIGTERM and SIGHUP.
fn catch_signals() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => Some(signals),
        Err(err) => {
            warn!("cannot catch signals, so SIGTERM will not unmount cleanly: {err}");
            None
        }
    }
}

/// Unmounts on the first caught signal; the session then ends by itself.
fn watch_signals(mut signals: signal_hook::iterator::Signals, mountpoint: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!("signal {signal}: unmounting {}", mountpoint.display());
                if let Err(err) = unmount(&mountpoint, false) {
                    warn!(
                        "cannot unmount {} ({err}); detaching it instead",
                        mountpoint.display()
                    );
                    let _ = unmount(&mountpoint, true);
                }
            }
        });
    if let Err(err) = spawned {
        warn!("cannot start the signal thread: {err}");
    }
}

/// Unmounts `mountpoint`; `lazy` detaches it even while busy.
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    Ok(nix::mount::umount2(mountpoint, flags)?)
}

/// Unmounts a unionfs mount and waits for its daemon to exit. A lazy
/// unmount returns at once: the daemon serves until the last user leaves.
pub fn umount_command(mountpoint: &Path, lazy: bool, timeout: Duration) -> Result<()> {
    // A mount whose daemon died answers ENOTCONN or ECONNABORTED; it can
    // still be unmounted.
    if let Err(err) = mountpoint.symlink_metadata() {
        if !matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ) {
            bail!("mountpoint {}: {err}; check the path", mountpoint.display());
        }
    }
    let Some(mount) = find_mount(mountpoint) else {
        bail!(
            "{} is not a mountpoint; check the path",
            mountpoint.display()
        );
    };
    if mount.fstype != "fuse.unionfs" {
        bail!(
            "{} is a {} mount, not a unionfs one; unmount it with umount",
            mountpoint.display(),
            mount.fstype
        );
    }
    let daemon = PidFile::read(&mount.device);
    match unmount(mountpoint, lazy) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) => bail!(
            "{} is busy (a process uses files in it); stop those processes or pass --lazy",
            mountpoint.display()
        ),
        Err(err) => {
            return Err(err).with_context(|| format!("cannot unmount {}", mountpoint.display()));
        }
    }
    if lazy {
        return Ok(());
    }
    if let Some(daemon) = daemon {
        let deadline = Instant::now() + timeout;
        while daemon.is_alive() {
            if Instant::now() > deadline {
                bail!(
                    "unmounted {}, but its daemon (pid {}) has not exited after {timeout:?}",
                    mountpoint.display(),
                    daemon.pid
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Changes the flags of the unionfs mount at `mountpoint`, as
/// `mount -o remount,...` asks through mount.fuse3. Flags not named in
/// `options` (the `-o` arguments, `remount` among them) keep their current
/// values; layer and FUSE options are ignored, since a remount cannot
/// change them.
pub fn remount(mountpoint: &Path, options: &[String]) -> Result<()> {
    let Some(mount) = find_mount(mountpoint) else {
        bail!(
            "{} is not a mountpoint; check the path",
            mountpoint.display()
        );
    };
    if mount.fstype != "fuse.unionfs" {
        bail!(
            "{} is a {} mount, not a unionfs one",
            mountpoint.display(),
            mount.fstype
        );
    }
    let mut flags = MsFlags::MS_REMOUNT;
    let current = mount.options.split(',').map(str::to_string);
    let requested = options
        .iter()
        .flat_map(|opt| opt.split(','))
        .map(str::to_string);
    for token in current.chain(requested) {
        let token = token.as_str();
        let (name, _) = token.split_once('=').unwrap_or((token, ""));
        match name {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "noatime" => {
                flags =
                    (flags - MsFlags::MS_RELATIME - MsFlags::MS_STRICTATIME) | MsFlags::MS_NOATIME
            }
            "relatime" | "atime" => {
                flags =
                    (flags - MsFlags::MS_NOATIME - MsFlags::MS_STRICTATIME) | MsFlags::MS_RELATIME
            }
            "strictatime" => {
                flags =
                    (flags - MsFlags::MS_NOATIME - MsFlags::MS_RELATIME) | MsFlags::MS_STRICTATIME
            }
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "diratime" => flags &= !MsFlags::MS_NODIRATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "async" => flags &= !MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            _ if REMOUNT_IGNORED.contains(&name) || name.starts_with("x-") || name.is_empty() => {}
            _ => bail!(
                "unknown mount option '{token}' for a remount; check the spelling or remove it"
            ),
        }
    }
    // A read-only remount fails with EBUSY while a file is open for writing,
    // so give writers that are closing right now a moment to finish.
    let mut attempts = 0;
    loop {
        match nix::mount::mount(None::<&str>, mountpoint, None::<&str>, flags, None::<&str>) {
            Err(nix::errno::Errno::EBUSY) if attempts < REMOUNT_BUSY_RETRIES => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(nix::errno::Errno::EBUSY) => bail!(
                "cannot remount {}: files there are still open for writing; close them and retry",
                mountpoint.display()
            ),
            result => {
                return result.with_context(|| format!("cannot remount {}", mountpoint.display()));
            }
        }
    }
}

/// Retries of a remount that fails with EBUSY, 50 ms apart.
const REMOUNT_BUSY_RETRIES: u32 = 20;

/// Options a remount accepts and ignores: mount(8) and mount.fuse3 repeat
/// the original mount's options, and the layers or FUSE settings they name
/// cannot change on a live mount.
const REMOUNT_IGNORED: &[&str] = &[
    "remount",
    "defaults",
    "nofail",
    "_netdev",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "user_id",
    "group_id",
    "default_permissions",
    "allow_other",
    "fsname",
    "subtype",
    "lowerdir",
    "upperdir",
    "workdir",
    "whiteout",
    "volatile",
    "threads",
    "comment",
];

/// A mount listed in /proc/self/mountinfo.
struct MountEntry {
    /// `major:minor` of the mounted filesystem.
    device: String,
    fstype: String,
    /// Per-mount options, such as `rw,nosuid,nodev,relatime`.
    options: String,
}

/// Returns the topmost mount at `path`, or `None` when no mount is there.
fn find_mount(path: &Path) -> Option<MountEntry> {
    let path = path.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let target = unescape_mountinfo(fields.get(4)?);
        if Path::new(&target) != path {
            return None;
        }
        // Optional fields end with "-", which the filesystem type follows.
        let separator = fields.iter().position(|field| *field == "-")?;
        Some(MountEntry {
            device: fields.get(2)?.to_string(),
            fstype: fields.get(separator + 1)?.to_string(),
            options: fields.get(5)?.to_string(),
        })
    })
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape_mountinfo(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match (bytes[i], escaped) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsStr::from_bytes(&out).to_os_string()
}

/// A daemon's pid and start time, which together name one process even
/// after the pid is reused.
struct Daemon {
    pid: i32,
    start: String,
}

impl Daemon {
    /// Returns true while the process runs; a zombie waiting for its new
    /// parent (init) to reap it has exited.
    fn is_alive(&self) -> bool {
        process_stat(self.pid).is_some_and(|(state, start)| state != "Z" && start == self.start)
    }
}

/// Returns the state and start time (fields 3 and 22) of process `pid`.
fn process_stat(pid: i32) -> Option<(String, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_string();
    let start = fields.nth(18)?.to_string();
    Some((state, start))
}

/// The pid file of a running daemon, removed when dropped.
struct PidFile(Option<PathBuf>);

impl PidFile {
    fn create(mountpoint: &Path) -> PidFile {
        let path = find_mount(mountpoint)
            .map(|mount| Path::new(PID_DIR).join(mount.device.replace(':', "-")));
        let written = path.as_ref().map(|path| {
            let pid = std::process::id() as i32;
            let start = process_stat(pid)
                .map(|(_, start)| start)
                .unwrap_or_default();
            let content = format!("{pid} {start}\n");
            crate::rundir::ensure_dir(Path::new(PID_DIR))
                .and_then(|()| crate::rundir::write_file(path, content.as_bytes()))
        });
        if let Some(Err(err)) = written {
            warn!(
                "cannot record the daemon's pid in {PID_DIR}: {err}; unionfs umount will not wait for it"
            );
            return PidFile(None);
        }
        PidFile(path)
    }

    fn read(device: &str) -> Option<Daemon> {
        let content =
            crate::rundir::read_file(&Path::new(PID_DIR).join(device.replace(':', "-"))).ok()?;
        let (pid, start) = content.trim().split_once(' ')?;
        Some(Daemon {
            pid: pid.parse().ok()?,
            start: start.to_string(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let Some(path) = &self.0 else {
            return;
        };
        // A new mount may have reused this device number and written its own
        // pid here already; leave that one alone.
        let ours = std::process::id().to_string();
        let content = crate::rundir::read_file(path).unwrap_or_default();
        if content.split_whitespace().next() == Some(ours.as_str()) {
            let _ = std::fs::remove_file(path);
        }
    }
}
