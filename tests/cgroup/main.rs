//! Tests of the launcher's cgroup module on this machine's real cgroups.
//!
//! They need root and skip with a message otherwise. Each test creates its
//! own cgroup named `test-PID-CASE` under `unionfs/` in every hierarchy it
//! joins, starts its processes inside, and on drop (also after a failed
//! assert) kills those processes and removes every directory it created.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::unistd::{Pid, Uid};
use unionfs::launcher::cgroup::{
    self, Cgroup, CgroupError, Controller, Layout, LayoutKind, Limits, PARENT,
};

const MIB: u64 = 1024 * 1024;
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns false, after saying why, when the tests cannot run here.
fn can_run() -> bool {
    if !Uid::effective().is_root() {
        eprintln!("skipped: cgroup tests need root");
        return false;
    }
    true
}

fn test_name(case: &str) -> String {
    format!("test-{}-{case}", std::process::id())
}

/// A cgroup and the processes a test started in it, all removed on drop.
struct Fixture {
    cgroup: Option<Cgroup>,
    /// The cgroup's directories, kept to clean up after a failed `remove`.
    paths: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Fixture {
    fn create_in(layout: &Layout, case: &str, limits: &Limits) -> Fixture {
        let cgroup = Cgroup::create_in(layout, &test_name(case), limits)
            .unwrap_or_else(|error| panic!("create cgroup: {error}"));
        let paths = cgroup.paths().into_iter().map(Path::to_path_buf).collect();
        Fixture {
            cgroup: Some(cgroup),
            paths,
            children: Vec::new(),
        }
    }

    fn create(case: &str, limits: &Limits) -> Fixture {
        Fixture::create_in(
            &Layout::detect().expect("detect cgroup layout"),
            case,
            limits,
        )
    }

    fn cgroup(&self) -> &Cgroup {
        self.cgroup.as_ref().expect("cgroup not removed yet")
    }

    /// Starts `args` in the cgroup and returns its index in `children`. The
    /// process starts as `sh`, which waits for a line on stdin while it is
    /// moved into the cgroup and only then execs `args`, so nothing the
    /// command does happens outside the cgroup.
    fn spawn(&mut self, args: &[&str]) -> usize {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "read line && exec \"$@\"", "sh"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn /bin/sh");
        let pid = Pid::from_raw(child.id() as i32);
        let added = self.cgroup().add(pid);
        let mut stdin = child.stdin.take().expect("child stdin");
        self.children.push(child);

        added.unwrap_or_else(|error| panic!("add child to cgroup: {error}"));
        stdin.write_all(b"go\n").expect("release child");
        self.children.len() - 1
    }

    fn pid(&self, index: usize) -> Pid {
        Pid::from_raw(self.children[index].id() as i32)
    }

    /// Waits up to `timeout` for child `index` to exit.
    fn wait_exit(&mut self, index: usize, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.children[index].try_wait().expect("wait for child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {} still running after {timeout:?}",
                self.pid(index)
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Kills everything in the cgroup, waits until it is empty, removes it
    /// and checks that each directory is gone.
    fn teardown(&mut self) {
        let cgroup = self.cgroup.take().expect("cgroup not removed yet");
        cgroup.kill_all().expect("kill_all");
        cgroup.wait_empty(EMPTY_TIMEOUT).expect("wait_empty");
        cgroup.remove().expect("remove cgroup");

        for path in &self.paths {
            assert!(
                !path.exists(),
                "{} still exists after remove",
                path.display()
            );
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.kill_all();
            let _ = cgroup.wait_empty(EMPTY_TIMEOUT);
            if let Err(error) = cgroup.remove() {
                eprintln!("cleanup: {error}");
            }
        }

        // After a failed remove: rmdir what is left, and the shared parent
        // if no other container uses it.
        for path in &self.paths {
            let _ = fs::remove_dir(path);
            if let Some(parent) = path.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// Returns `MOUNT_POINT/unionfs/NAME` for every hierarchy in `layout`.
fn candidate_paths(layout: &Layout, name: &str) -> Vec<PathBuf> {
    let mut mount_points: Vec<&Path> = layout
        .v1
        .iter()
        .map(|hierarchy| hierarchy.mount_point.as_path())
        .collect();
    mount_points.extend(
        layout
            .unified
            .iter()
            .map(|hierarchy| hierarchy.mount_point.as_path()),
    );
    mount_points
        .iter()
        .map(|mount_point| mount_point.join(PARENT).join(name))
        .collect()
}

fn read(dir: &Path, file: &str) -> String {
    let content =
        fs::read_to_string(dir.join(file)).unwrap_or_else(|error| panic!("read {file}: {error}"));
    content.trim().to_string()
}

fn read_number(dir: &Path, file: &str, key: Option<&str>) -> u64 {
    let content = read(dir, file);
    let value = match key {
        None => Some(content.as_str()),
        Some(key) => content
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')),
    };
    value
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number for {key:?} in {file}: {content:?}"))
}

/// Returns the CPUs available to new cgroups, from the cpuset root.
fn available_cpus(layout: &Layout) -> Option<String> {
    if let Some(hierarchy) = layout
        .v1
        .iter()
        .find(|hierarchy| hierarchy.controllers.contains(&Controller::Cpuset))
    {
        return Some(read(&hierarchy.mount_point, "cpuset.cpus"));
    }
    let unified = layout.unified.as_ref()?;
    unified
        .controllers
        .contains(&Controller::Cpuset)
        .then(|| read(&unified.mount_point, "cpuset.cpus.effective"))
}

#[test]
fn layout_detects_this_host() {
    if !can_run() {
        return;
    }

    let layout = Layout::detect().unwrap();

    eprintln!("layout: {:?}, {layout:?}", layout.kind());
    match layout.kind() {
        LayoutKind::V1 | LayoutKind::Hybrid => assert!(!layout.v1.is_empty()),
        LayoutKind::V2 => assert!(layout.unified.is_some()),
    }
}

#[test]
fn create_remove_leaves_nothing() {
    if !can_run() {
        return;
    }
    let layout = Layout::detect().unwrap();
    let Some(cpus) = available_cpus(&layout) else {
        eprintln!("skipped: no cpuset controller");
        return;
    };
    let limits = Limits {
        memory: Some(64 * MIB),
        cpus: Some(0.5),
        cpu_shares: Some(512),
        cpuset_cpus: Some("0".to_string()),
        pids: Some(64),
    };

    let mut fixture = Fixture::create_in(&layout, "remove", &limits);

    let cgroup = fixture.cgroup();
    for path in cgroup.paths() {
        assert!(path.is_dir(), "{} was not created", path.display());
    }
    let cpuset = cgroup.path(Controller::Cpuset).unwrap();
    assert_eq!(read(cpuset, "cpuset.cpus"), "0");
    assert!(
        !read(cpuset, "cpuset.mems").is_empty(),
        "cpuset.mems is empty"
    );
    assert!(!cpus.is_empty());
    let pids = cgroup.path(Controller::Pids).unwrap();
    assert_eq!(read(pids, "pids.max"), "64");
    if layout.kind() != LayoutKind::V2 {
        let memory = cgroup.path(Controller::Memory).unwrap();
        assert_eq!(read_number(memory, "memory.limit_in_bytes", None), 64 * MIB);
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                read_number(memory, "memory.memsw.limit_in_bytes", None),
                64 * MIB
            );
        }
        let cpu = cgroup.path(Controller::Cpu).unwrap();
        assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(cpu, "cpu.shares"), "512");
    }
    if layout.kind() == LayoutKind::Hybrid {
        assert!(
            cgroup.unified_path().is_some(),
            "a hybrid host joins the unified hierarchy"
        );
    }

    fixture.teardown();
    for path in candidate_paths(&layout, &test_name("remove")) {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

#[test]
fn child_in_every_hierarchy_then_killed() {
    if !can_run() {
        return;
    }
    let mut fixture = Fixture::create("procs", &Limits::default());
    let child = fixture.spawn(&["sleep", "60"]);
    let pid = fixture.pid(child);

    for path in fixture.cgroup().paths() {
        let listed = cgroup::read_procs(path).unwrap();
        assert!(
            listed.contains(&pid),
            "{pid} not in {}/cgroup.procs: {listed:?}",
            path.display()
        );
    }
    assert_eq!(fixture.cgroup().procs().unwrap(), vec![pid]);

    fixture.cgroup().kill_all().unwrap();
    fixture.cgroup().wait_empty(EMPTY_TIMEOUT).unwrap();
    let status = fixture.wait_exit(child, EMPTY_TIMEOUT);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(fixture.cgroup().procs().unwrap().is_empty());
    fixture.teardown();
}

#[test]
fn pids_limit_stops_fork_loop() {
    if !can_run() {
        return;
    }
    let limits = Limits {
        pids: Some(16),
        ..Limits::default()
    };
    let mut fixture = Fixture::create("pids", &limits);
    let pids_dir = fixture
        .cgroup()
        .path(Controller::Pids)
        .unwrap()
        .to_path_buf();

    fixture.spawn(&["sh", "-c", "while :; do sleep 60 & done 2>/dev/null"]);

    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        peak = peak.max(read_number(&pids_dir, "pids.current", None));
        peak = peak.max(fixture.cgroup().procs().unwrap().len() as u64);
        sleep(Duration::from_millis(10));
    }
    eprintln!("fork loop under --pids-limit 16 peaked at {peak} tasks");
    assert!(peak <= 16, "{peak} tasks under --pids-limit 16");
    assert!(peak >= 8, "the fork loop reached only {peak} tasks");
    assert!(
        read_number(&pids_dir, "pids.events", Some("max")) > 0,
        "no fork failed at the limit"
    );

    fixture.teardown();
}

#[test]
fn memory_limit_oom_kills() {
    if !can_run() {
        return;
    }
    let limits = Limits {
        memory: Some(32 * MIB),
        ..Limits::default()
    };
    let mut fixture = Fixture::create("oom", &limits);
    assert_eq!(fixture.cgroup().memory_limit(), Some(32 * MIB));

    let script = "b = bytearray(100 * 2**20)\nb[::4096] = b'x' * len(b[::4096])";
    let child = fixture.spawn(&["/usr/bin/python3", "-c", script]);
    let status = fixture.wait_exit(child, Duration::from_secs(60));

    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    assert!(
        fixture.cgroup().oom_killed().unwrap(),
        "oom_kill counter is 0"
    );
    fixture.teardown();
}

#[test]
fn sigkill_is_not_oom() {
    if !can_run() {
        return;
    }
    let limits = Limits {
        memory: Some(32 * MIB),
        ..Limits::default()
    };
    let mut fixture = Fixture::create("sigkill", &limits);
    let child = fixture.spawn(&["sleep", "60"]);

    fixture.children[child].kill().unwrap();
    let status = fixture.wait_exit(child, EMPTY_TIMEOUT);

    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        !fixture.cgroup().oom_killed().unwrap(),
        "a plain SIGKILL counted as an OOM kill"
    );
    fixture.teardown();
}

#[test]
fn cpus_limit_throttles_busy_loop() {
    if !can_run() {
        return;
    }
    let limits = Limits {
        cpus: Some(0.2),
        ..Limits::default()
    };
    let mut fixture = Fixture::create("cpus", &limits);
    fixture.spawn(&["sh", "-c", "while :; do :; done"]);

    let start = Instant::now();
    let usage_start = fixture
        .cgroup()
        .cpu_usage()
        .unwrap()
        .expect("CPU accounting");
    sleep(Duration::from_secs(3));
    let usage = fixture.cgroup().cpu_usage().unwrap().unwrap() - usage_start;
    let share = usage.as_secs_f64() / start.elapsed().as_secs_f64();

    eprintln!(
        "busy loop under --cpus 0.2 used {:.1}% of one CPU",
        share * 100.0
    );
    assert!(
        share > 0.10,
        "the busy loop got only {:.1}% of one CPU",
        share * 100.0
    );
    assert!(
        share < 0.35,
        "the busy loop got {:.1}% of one CPU under --cpus 0.2",
        share * 100.0
    );
    fixture.teardown();
}

#[test]
fn cpuset_pins_to_cpu_zero() {
    if !can_run() {
        return;
    }
    if available_cpus(&Layout::detect().unwrap()).is_none() {
        eprintln!("skipped: no cpuset controller");
        return;
    }
    let limits = Limits {
        cpuset_cpus: Some("0".to_string()),
        ..Limits::default()
    };
    let mut fixture = Fixture::create("cpuset", &limits);
    let child = fixture.spawn(&["sleep", "60"]);

    let status = read(
        Path::new(&format!("/proc/{}", fixture.pid(child))),
        "status",
    );
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"));

    assert_eq!(allowed.map(str::trim), Some("0"), "{status}");
    fixture.teardown();
}

#[test]
fn bad_input_leaves_nothing() {
    if !can_run() {
        return;
    }
    let layout = Layout::detect().unwrap();

    let error = cgroup::parse_memory("10x").unwrap_err();
    assert!(error.to_string().contains("\"10x\""), "{error}");
    assert!(error.to_string().contains("b, k, m, g or t"), "{error}");

    let Some(cpus) = available_cpus(&layout) else {
        eprintln!("skipped the cpuset case: no cpuset controller");
        return;
    };
    let highest = cgroup::cpuset::parse_cpu_list(&cpus)
        .unwrap()
        .into_iter()
        .max()
        .unwrap();
    let missing_cpu = (highest + 1).to_string();
    let name = test_name("bad-input");
    for cpuset_cpus in [missing_cpu.as_str(), "0-", "1-0"] {
        let limits = Limits {
            memory: Some(32 * MIB),
            cpuset_cpus: Some(cpuset_cpus.to_string()),
            ..Limits::default()
        };

        let error = Cgroup::create_in(&layout, &name, &limits).unwrap_err();

        let message = error.to_string();
        assert!(
            message.contains(&format!("invalid --cpuset-cpus value {cpuset_cpus}")),
            "{message}"
        );
        for path in candidate_paths(&layout, &name) {
            assert!(
                !path.exists(),
                "{} left behind after: {message}",
                path.display()
            );
        }
    }
}

#[test]
fn name_in_use_is_rejected() {
    if !can_run() {
        return;
    }
    let fixture = Fixture::create("in-use", &Limits::default());

    let error = Cgroup::create(&test_name("in-use"), &Limits::default()).unwrap_err();

    assert!(
        matches!(error, CgroupError::AlreadyExists { .. }),
        "{error}"
    );
    for path in fixture.cgroup().paths() {
        assert!(
            path.is_dir(),
            "the failed create removed {}",
            path.display()
        );
    }
}

#[test]
fn remove_with_process_fails() {
    if !can_run() {
        return;
    }
    let mut fixture = Fixture::create("busy", &Limits::default());
    fixture.spawn(&["sleep", "60"]);

    let error = fixture.cgroup.take().unwrap().remove().unwrap_err();

    let message = error.to_string();
    assert!(message.starts_with("failed to remove cgroup"), "{message}");
    assert!(message.contains("a process is still in it"), "{message}");
}

/// Runs the v2 code path on this host's unified hierarchy by leaving the v1
/// hierarchies out of the layout. On a hybrid host the unified hierarchy
/// offers none of the launcher's controllers, so limits there are expected
/// to fail with an error naming `cgroup.controllers`.
#[test]
fn v2_path_on_unified_hierarchy() {
    if !can_run() {
        return;
    }
    let mut layout = Layout::detect().unwrap();
    layout.v1.clear();
    let Some(unified) = layout.unified.clone() else {
        eprintln!("skipped: no cgroup v2 hierarchy");
        return;
    };
    assert_eq!(layout.kind(), LayoutKind::V2);

    let mut fixture = Fixture::create_in(&layout, "v2", &Limits::default());
    assert_eq!(
        fixture.paths,
        vec![unified.mount_point.join(PARENT).join(test_name("v2"))]
    );
    let child = fixture.spawn(&["sh", "-c", "sleep 60 & sleep 60"]);
    let pid = fixture.pid(child);
    assert!(fixture.cgroup().procs().unwrap().contains(&pid));
    fixture.cgroup().kill_all().unwrap();
    fixture.cgroup().wait_empty(EMPTY_TIMEOUT).unwrap();
    fixture.teardown();

    let limits = Limits {
        memory: Some(32 * MIB),
        ..Limits::default()
    };
    let result = Cgroup::create_in(&layout, &test_name("v2-memory"), &limits);
    if unified.controllers.contains(&Controller::Memory) {
        let cgroup = result.unwrap();
        let memory = cgroup.path(Controller::Memory).unwrap().to_path_buf();
        assert_eq!(read_number(&memory, "memory.max", None), 32 * MIB);
        cgroup.remove().unwrap();
    } else {
        let message = result.unwrap_err().to_string();
        assert!(
            message.starts_with("--memory cannot be applied"),
            "{message}"
        );
        assert!(
            message.contains("cgroup.controllers does not list it"),
            "{message}"
        );
    }
    for path in candidate_paths(&layout, &test_name("v2-memory")) {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

/// Runs the pure v1 path by leaving the unified hierarchy out: kill_all
/// freezes through the v1 freezer and wait_empty polls `cgroup.procs`.
#[test]
fn v1_freezer_kills_fork_loop() {
    if !can_run() {
        return;
    }
    let mut layout = Layout::detect().unwrap();
    layout.unified = None;
    if !layout
        .v1
        .iter()
        .any(|hierarchy| hierarchy.controllers.contains(&Controller::Freezer))
    {
        eprintln!("skipped: no v1 freezer hierarchy");
        return;
    }
    assert_eq!(layout.kind(), LayoutKind::V1);
    let limits = Limits {
        pids: Some(32),
        ..Limits::default()
    };

    let mut fixture = Fixture::create_in(&layout, "freezer", &limits);
    fixture.spawn(&["sh", "-c", "while :; do sleep 60 & done 2>/dev/null"]);
    sleep(Duration::from_millis(300));
    assert!(
        fixture.cgroup().procs().unwrap().len() > 1,
        "the fork loop started no process"
    );

    fixture.cgroup().kill_all().unwrap();
    fixture.cgroup().wait_empty(EMPTY_TIMEOUT).unwrap();
    fixture.teardown();
}
