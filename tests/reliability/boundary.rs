//! The launcher as a security boundary, beyond tests/launcher/: from inside
//! `unionfs run` the container cannot reach or signal the FUSE daemon,
//! cannot unmount its root to reach the host, cannot raise its cgroup
//! limits, cannot mount a proc or sysfs that shows the host, cannot use
//! device nodes outside the allowed set, and cannot gain privileges from
//! setuid or capability files under `no_new_privs`. A container at its
//! memory and pids limits leaves the mount answering from outside. A
//! shared mount whose user's PID 1 is killed keeps serving other users.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::{Mount, Scratch};
use crate::launcher_fixture::{
    Container, STATE_DIR, assert_status, busybox, container_pids, stderr, stdout, wait_for,
};
use crate::support::within;

/// Runs `script` in a container over the busybox image with `options`.
fn sh(name: &str, options: &[&str], script: &str) -> (Container, std::process::Output) {
    let container = Container::new(name);
    let output = container.sh(options, script);
    (container, output)
}

#[test]
fn daemon_invisible_and_unkillable() {
    // Kill every process the container may signal, then read a file
    // through the root filesystem: the FUSE daemon must still serve it.
    // The bracket keeps the pattern from matching this script's own text.
    let script = "for p in /proc/[0-9]*; do cat $p/cmdline; echo; done | grep -c 'container[s]/'; \
                  kill -KILL -1; sleep 0.2; cat /etc/hostname >/dev/null && echo served";
    let (container, output) = sh("nodaemon", &[], script);
    assert_status(&output, 0);
    assert_eq!(
        stdout(&output),
        "0\nserved\n",
        "the container saw the daemon or lost its root: {}",
        stderr(&output)
    );
    container.assert_no_leftovers();
}

#[test]
fn root_unmount_does_not_reach_host() {
    // /work exists on the host, not in the busybox image.
    assert!(
        Path::new("/work").exists(),
        "the check needs /work on the host"
    );
    for options in [&[][..], &["--cap-add", "SYS_ADMIN"][..]] {
        let script = "umount / 2>/dev/null; umount -l / 2>/dev/null; \
                      if [ -e /work ]; then echo host-visible; else echo contained; fi";
        let (container, output) = sh("rootumount", options, script);
        assert_status(&output, 0);
        assert_eq!(
            stdout(&output),
            "contained\n",
            "unmounting / with {options:?} exposed the host"
        );
        container.assert_no_leftovers();
    }
}

#[test]
fn cgroup_limits_not_writable() {
    // Try to raise the memory limit by every path a container might have,
    // then allocate more than the original limit: the OOM killer must end it.
    let script = "for f in $(find /sys/fs/cgroup -name 'memory.max' -o -name 'memory.limit_in_bytes' \
                  -o -name 'pids.max' 2>/dev/null); do echo max > $f 2>/dev/null && echo wrote $f; done; \
                  mkdir -p /cg; mount -t cgroup2 none /cg 2>/dev/null && echo mounted-v2; \
                  mount -t cgroup -o memory none /cg 2>/dev/null && echo mounted-v1; \
                  exec dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null";
    let (container, output) = sh("cgwrite", &["-m", "64m"], script);
    assert_status(&output, 137);
    assert_eq!(
        stdout(&output),
        "",
        "the container changed or reached its cgroup limits"
    );
    container.assert_no_leftovers();
}

#[test]
fn new_proc_and_sysfs_show_no_host() {
    let denied = "mkdir -p /p /s; mount -t proc proc /p 2>/dev/null && echo proc-mounted; \
                  mount -t sysfs sysfs /s 2>/dev/null && echo sysfs-mounted; echo done";
    let (container, output) = sh("procdeny", &[], denied);
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "done\n", "mounted without CAP_SYS_ADMIN");
    container.assert_no_leftovers();

    // With CAP_SYS_ADMIN the new instances show the container's own
    // processes and network devices only.
    let allowed = "mkdir -p /p /s; mount -t proc proc /p && mount -t sysfs sysfs /s && \
                   n=0; for p in /p/[0-9]*; do n=$((n+1)); done; echo $n; ls /s/class/net";
    let (container, output) = sh("procnew", &["--cap-add", "SYS_ADMIN"], allowed);
    assert_status(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    let processes: usize = lines[0].parse().unwrap();
    assert!(
        processes <= 3,
        "a new proc shows {processes} processes: {text}"
    );
    assert_eq!(
        &lines[1..],
        ["lo"],
        "a new sysfs shows host network devices"
    );
    container.assert_no_leftovers();
}

/// Device nodes outside the allowed set (null, zero, full, random, urandom,
/// tty, ptmx) cannot be used: Docker's device cgroup lets a container
/// create any node but open only those. Here the container creates the
/// FUSE and loop-control devices (which the host can open) and tries them.
#[test]
fn device_nodes_beyond_allowed_set_unusable() {
    let script = "for node in 'fuse c 10 229' 'loop-control c 10 237' 'kmsg c 1 11'; do \
                    set -- $node; \
                    for dir in / /dev/ /tmp/; do \
                      mknod $dir$1 $2 $3 $4 2>/dev/null || continue; \
                      if (exec 3<>$dir$1) 2>/dev/null || (exec 3<$dir$1) 2>/dev/null; then \
                        echo opened $dir$1; fi; \
                      rm -f $dir$1; \
                    done; \
                  done; echo done";
    let (container, output) = sh("devnodes", &[], script);
    assert_status(&output, 0);
    assert_eq!(
        stdout(&output),
        "done\n",
        "the container opened device nodes outside the allowed set"
    );
    container.assert_no_leftovers();
}

/// Copies host program `program` into `layer` under `name` in /bin, with
/// the shared libraries `ldd` lists, at the same paths.
fn copy_with_libraries(program: &str, layer: &Path, name: &str) -> PathBuf {
    let path = String::from_utf8(
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let path = path.trim();
    let ldd = crate::fixture::run(Command::new("ldd").arg(path));
    for library in ldd.split_whitespace().filter(|word| word.starts_with('/')) {
        let target = layer.join(library.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(library, &target).unwrap();
    }
    let target = layer.join("bin").join(name);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::copy(path, &target).unwrap();
    target
}

/// An image layer with a setuid-root `id` and a `cat` with
/// `cap_dac_read_search`, both from the host with their libraries. Under
/// `no_new_privs` neither raises the privileges of uid 65534.
#[test]
fn setuid_and_capabilities_inert_under_no_new_privs() {
    let scratch = Scratch::new();
    let layer = scratch.path("privileged");
    let id = copy_with_libraries("id", &layer, "suid-id");
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).unwrap();
    let cat = copy_with_libraries("cat", &layer, "cap-cat");
    crate::fixture::run(
        Command::new("setcap")
            .arg("cap_dac_read_search+ep")
            .arg(&cat),
    );
    fs::create_dir_all(layer.join("root")).unwrap();
    fs::write(layer.join("root/secret"), "root only\n").unwrap();
    fs::set_permissions(layer.join("root/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(layer.join("root"), fs::Permissions::from_mode(0o700)).unwrap();

    let container = Container::new("nnp");
    let layers = format!(
        "{}:{}:{}",
        container.layer().display(),
        layer.display(),
        busybox().display()
    );
    let script = "/bin/suid-id -u; /bin/cap-cat /root/secret 2>/dev/null || echo denied; \
                  grep NoNewPrivs /proc/self/status";
    let output = Command::new(crate::launcher_fixture::unionfs_bin())
        .args(["run", "--name", &container.name, "-u", "65534:65534"])
        .arg(&layers)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_status(&output, 0);
    assert_eq!(
        stdout(&output),
        "65534\ndenied\nNoNewPrivs:\t1\n",
        "a setuid or capability file raised privileges under no_new_privs: {}",
        stderr(&output)
    );
    container.assert_no_leftovers();
}

/// Returns the merged view's mountpoint of container `name` on the host.
fn container_mountpoint(name: &str) -> Option<PathBuf> {
    let prefix = Path::new(STATE_DIR).join(name).display().to_string();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype_at = fields.iter().position(|field| *field == "-")? + 1;
        (fields.get(fstype_at) == Some(&"fuse.unionfs") && fields[4].starts_with(&prefix))
            .then(|| PathBuf::from(fields[4]))
    })
}

/// A container at its memory and pids limits: from outside, reads through
/// its root filesystem keep answering within a second.
#[test]
fn limits_leave_mount_responsive() {
    let container = Container::new("pressure");
    // Mark the start before the loops: once they hold every pid, touch
    // could not be forked.
    let script = "touch /tmp/started; \
                  (while :; do dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null; done) & \
                  (while :; do sleep 60 & done) 2>/dev/null & \
                  wait";
    let mut child = container.spawn(&["-m", "64m", "--pids-limit", "24"], script);
    let layer = container.layer();
    assert!(
        wait_for(Duration::from_secs(20), || layer
            .join("tmp/started")
            .exists()),
        "the container never started"
    );
    let mountpoint =
        container_mountpoint(&container.name).expect("the container's mount is listed");
    std::thread::sleep(Duration::from_secs(1));

    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let path = mountpoint.join("etc/passwd");
        let started = Instant::now();
        let read = within(Duration::from_secs(5), move || {
            fs::read_to_string(path).is_ok()
        });
        assert_eq!(
            read,
            Some(true),
            "a read through the container's root failed or hung"
        );
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("limits_leave_mount_responsive: slowest read {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "reads took up to {slowest:?}"
    );

    for pid in container_pids(&container.name) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
    container.assert_no_leftovers();
}

/// A mount shared by two users: the first runs a writer as PID 1 of its own
/// PID namespace, chrooted into the mount, and is killed with SIGKILL; the
/// mount keeps serving the second user, uid 65534.
#[test]
fn killed_pid_1_leaves_shared_mount_serving() {
    let scratch = Scratch::new();
    fs::set_permissions(scratch.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mount = Mount::unionfs(
        &scratch.dir.path().join("mnt"),
        Some(&scratch.path("upper")),
        Some(&scratch.path("work")),
        &[busybox().to_path_buf()],
        &[],
    );
    let mut chrooted = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "chroot"])
        .arg(&mount.root)
        .args(["/bin/sh", "-c", "while :; do echo data >> /data; done"])
        .spawn()
        .unwrap();
    let unshare = chrooted.id();
    let init = {
        let mut found = None;
        let started = Instant::now();
        while found.is_none() && started.elapsed() < Duration::from_secs(10) {
            found = child_of(unshare);
            std::thread::sleep(Duration::from_millis(20));
        }
        found.expect("the chrooted PID 1 never started")
    };
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = chrooted.wait();

    let other = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(mount.root.join("etc/passwd"))
        .output()
        .unwrap();
    assert!(
        other.status.success() && !other.stdout.is_empty(),
        "uid 65534 cannot read through the mount: {}",
        String::from_utf8_lossy(&other.stderr)
    );
    let data = fs::read_to_string(mount.root.join("data")).unwrap();
    assert!(
        data.lines().all(|line| line == "data"),
        "the killed writer left a torn line"
    );
}

/// Returns the pid of a child of process `parent`, from /proc.
fn child_of(parent: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}
