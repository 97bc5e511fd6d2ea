//! Order of the container-side setup, checked against the recording fake.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::args::RunArgs;
use super::config::RunConfig;
use super::fake::{Call, Recorder};
use super::init;
use super::syscalls::Kind;

fn config(change: impl FnOnce(&mut RunArgs)) -> RunConfig {
    let mut args = RunArgs {
        layers: "/c:/i".to_string(),
        command: vec![
            OsString::from("sh"),
            OsString::from("-c"),
            OsString::from("true"),
        ],
        net: "none".to_string(),
        stop_timeout: 10,
        ..RunArgs::default()
    };
    change(&mut args);
    RunConfig::from_args(args, "box".to_string()).unwrap()
}

fn position(calls: &[Call], wanted: impl Fn(&Call) -> bool, what: &str) -> usize {
    calls
        .iter()
        .position(wanted)
        .unwrap_or_else(|| panic!("no {what} in {calls:#?}"))
}

fn mount_target(call: &Call) -> Option<&Path> {
    match call {
        Call::Mount { target, .. } => Some(target),
        _ => None,
    }
}

fn recorder() -> Recorder {
    let mut sys = Recorder::default();
    sys.existing
        .insert(PathBuf::from("/proc/kcore"), Kind::Other);
    sys.existing
        .insert(PathBuf::from("/proc/acpi"), Kind::Directory);
    sys.existing
        .insert(PathBuf::from("/proc/sys"), Kind::Directory);
    sys.files.insert(
        PathBuf::from("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n".into(),
    );
    sys
}

#[test]
fn setup_order() {
    let sys = recorder();
    let config = config(|args| {
        args.volume = vec!["/srv:/data:ro".into()];
        args.workdir = Some("/work".into());
    });
    let error = init::run(&sys, &config);
    assert_eq!(error.status, init::EXIT_NOT_FOUND);
    let calls = sys.calls();

    let private = position(
        &calls,
        |c| *c == Call::MakeMountsPrivate,
        "make_mounts_private",
    );
    let proc = position(
        &calls,
        |c| mount_target(c) == Some(Path::new("/proc")),
        "/proc mount",
    );
    let dev = position(
        &calls,
        |c| mount_target(c) == Some(Path::new("/dev")),
        "/dev mount",
    );
    let null = position(
        &calls,
        |c| matches!(c, Call::Mknod(p, 0o666, 1, 3) if p == Path::new("/dev/null")),
        "/dev/null",
    );
    let volume = position(
        &calls,
        |c| mount_target(c) == Some(Path::new("/data")),
        "volume mount",
    );
    let volume_ro = position(
        &calls,
        |c| *c == Call::RemountReadOnly("/data".into()),
        "volume remount",
    );
    let kcore = position(
        &calls,
        |c| mount_target(c) == Some(Path::new("/proc/kcore")),
        "kcore mask",
    );
    let hostname = position(
        &calls,
        |c| *c == Call::SetHostname("box".into()),
        "hostname",
    );
    let loopback = position(&calls, |c| *c == Call::SetLinkUp("lo".into()), "loopback");
    let pivot = position(&calls, |c| *c == Call::PivotRoot, "pivot_root");
    let bounding = position(
        &calls,
        |c| matches!(c, Call::LimitBoundingSet(14)),
        "bounding set",
    );
    let stdio = position(&calls, |c| matches!(c, Call::SetupStdio(_)), "stdio");
    let credentials = position(
        &calls,
        |c| matches!(c, Call::SetCredentials(_)),
        "credentials",
    );
    let capabilities = position(
        &calls,
        |c| matches!(c, Call::SetCapabilities(14)),
        "capabilities",
    );
    let chdir = position(&calls, |c| *c == Call::Chdir("/work".into()), "chdir");
    let no_new_privs = position(&calls, |c| *c == Call::SetNoNewPrivs, "no_new_privs");
    let close = position(&calls, |c| *c == Call::CloseInheritedFds, "close fds");
    let exec = position(&calls, |c| matches!(c, Call::Exec(..)), "exec");

    assert_eq!(private, 0, "propagation must change before any mount");
    assert!(proc < kcore, "masks need the new /proc");
    assert!(dev < null, "/dev is mounted before its nodes are made");
    assert!(null < volume, "volumes come after /dev");
    assert!(dev < kcore, "masks bind /dev/null");
    assert!(volume < volume_ro);
    assert!(kcore < pivot);
    assert!(volume < pivot);
    assert!(hostname < pivot);
    assert!(loopback < pivot);
    assert!(pivot < bounding);
    assert!(bounding < stdio);
    assert!(stdio < credentials);
    assert!(
        credentials < capabilities,
        "setuid as root before the sets shrink"
    );
    assert!(capabilities < chdir);
    assert!(chdir < no_new_privs);
    assert!(no_new_privs < close);
    assert!(close < exec);
    assert_eq!(exec, calls.len() - 1);
}

#[test]
fn masks_by_kind() {
    let sys = recorder();
    let _ = init::run(&sys, &config(|_| {}));
    let calls = sys.calls();
    let mount_of = |path: &str| {
        calls
            .iter()
            .find(|c| mount_target(c) == Some(Path::new(path)))
            .cloned()
            .unwrap_or_else(|| panic!("no mount on {path}"))
    };
    let Call::Mount { source, flags, .. } = mount_of("/proc/kcore") else {
        unreachable!()
    };
    assert_eq!(source, "root:/dev/null");
    assert!(flags.contains(MsFlags::MS_BIND));
    let Call::Mount { source, flags, .. } = mount_of("/proc/acpi") else {
        unreachable!()
    };
    assert_eq!(source, "tmpfs");
    assert!(flags.contains(MsFlags::MS_RDONLY));
    assert!(calls.contains(&Call::RemountReadOnly("/proc/sys".into())));
    // Paths the container does not have are skipped.
    assert!(
        !calls
            .iter()
            .any(|c| mount_target(c) == Some(Path::new("/proc/scsi")))
    );
}

#[test]
fn sys_read_only_proc_hardened() {
    let sys = recorder();
    let _ = init::run(&sys, &config(|_| {}));
    for call in sys.calls() {
        if let Call::Mount { target, flags, .. } = &call {
            if target == Path::new("/sys") {
                assert!(flags.contains(MsFlags::MS_RDONLY));
            }
            if target == Path::new("/proc") {
                assert!(
                    flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)
                );
            }
        }
    }
}

#[test]
fn host_network_keeps_loopback() {
    let sys = recorder();
    let _ = init::run(&sys, &config(|args| args.net = "host".into()));
    assert!(!sys.calls().iter().any(|c| matches!(c, Call::SetLinkUp(_))));
    let flags = init::namespace_flags(super::config::Network::Host);
    assert!(!flags.contains(nix::sched::CloneFlags::CLONE_NEWNET));
    assert!(flags.contains(nix::sched::CloneFlags::CLONE_NEWPID));
}

#[test]
fn failure_stops_sequence() {
    let mut sys = recorder();
    sys.fail.insert("pivot_root");
    let error = init::run(&sys, &config(|_| {}));
    assert_eq!(error.status, init::EXIT_LAUNCH_FAILED);
    assert!(error.message.contains("pivot_root"), "{}", error.message);
    let calls = sys.calls();
    assert_eq!(calls.last(), Some(&Call::PivotRoot));
    assert!(!calls.iter().any(|c| matches!(c, Call::Exec(..))));
}

#[test]
fn exec_errors_map_to_status() {
    for (errno, status) in [
        (libc::ENOENT, init::EXIT_NOT_FOUND),
        (libc::EACCES, init::EXIT_CANNOT_EXECUTE),
        (libc::ENOEXEC, init::EXIT_CANNOT_EXECUTE),
        (libc::E2BIG, init::EXIT_LAUNCH_FAILED),
    ] {
        let mut sys = recorder();
        sys.exec_error = Some(errno);
        let error = init::run(&sys, &config(|_| {}));
        assert_eq!(error.status, status, "errno {errno}");
        assert!(error.message.contains("\"sh\""), "{}", error.message);
    }
}

#[test]
fn env_gets_home_from_passwd() {
    let sys = recorder();
    let _ = init::run(&sys, &config(|_| {}));
    let Some(Call::Exec(argv, env)) = sys.calls().last().cloned() else {
        panic!("no exec")
    };
    assert_eq!(argv[0], "sh");
    assert!(env.contains(&OsString::from("HOME=/root")), "{env:?}");
    assert!(env.contains(&OsString::from("HOSTNAME=box")), "{env:?}");
}

#[test]
fn unknown_user_fails_before_credentials() {
    let sys = recorder();
    let error = init::run(&sys, &config(|args| args.user = Some("ghost".into())));
    assert_eq!(error.status, init::EXIT_LAUNCH_FAILED);
    assert!(error.message.contains("ghost"), "{}", error.message);
    assert!(
        !sys.calls()
            .iter()
            .any(|c| matches!(c, Call::SetCredentials(_)))
    );
}
