//! What the container may do: capabilities, `no_new_privs`, masked and
//! read-only paths, `/dev`, inherited descriptors, users.

use crate::fixture::{Container, assert_status, stdout};

/// Docker's default capability set as a /proc/PID/status mask.
const DOCKER_DEFAULT_MASK: u64 = 0xa80425fb;

/// Capability numbers from `linux/capability.h`.
const CAP_CHOWN: u64 = 0;
const CAP_SYS_ADMIN: u64 = 21;

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

#[test]
fn default_capabilities_and_no_new_privs() {
    let container = Container::new("caps");
    let output = container.sh(&[], "cat /proc/self/status");
    assert_status(&output, 0);
    let status = stdout(&output);
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let mask = u64::from_str_radix(&status_field(&status, field), 16).unwrap();
        assert_eq!(mask, DOCKER_DEFAULT_MASK, "{field} {mask:x}");
    }
    assert_eq!(
        u64::from_str_radix(&status_field(&status, "CapAmb:"), 16).unwrap(),
        0
    );
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
}

#[test]
fn cap_add_and_drop() {
    let container = Container::new("capadd");
    let output = container.sh(
        &["--cap-add", "SYS_ADMIN", "--cap-drop", "CHOWN"],
        "grep CapEff /proc/self/status",
    );
    assert_status(&output, 0);
    let mask = u64::from_str_radix(stdout(&output).split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(
        mask,
        (DOCKER_DEFAULT_MASK | 1 << CAP_SYS_ADMIN) & !(1 << CAP_CHOWN)
    );
}

#[test]
fn mount_denied_without_sys_admin() {
    let container = Container::new("nomount");
    let output = container.sh(&[], "mkdir -p /mnt/x && mount -t tmpfs none /mnt/x");
    assert_ne!(
        output.status.code(),
        Some(0),
        "mount succeeded without CAP_SYS_ADMIN"
    );
}

#[test]
fn non_root_user_has_no_capabilities() {
    let container = Container::new("user");
    let output = container.sh(
        &["-u", "65534:65534"],
        "id -u; id -g; grep CapEff /proc/self/status; echo $HOME",
    );
    assert_status(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "65534");
    assert_eq!(lines[1], "65534");
    assert_eq!(lines[2], "CapEff:\t0000000000000000");
    assert_eq!(lines[3], "/nonexistent");
}

#[test]
fn user_by_name() {
    let container = Container::new("username");
    let output = container.sh(&["-u", "nobody"], "id -un");
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "nobody\n");
}

#[test]
fn masked_and_read_only_paths() {
    let container = Container::new("masked");
    let script = "ls -A /proc/acpi | wc -l; \
                  if echo x > /proc/sys/kernel/hostname; then echo sys-writable; else echo sys-read-only; fi; \
                  if touch /sys/x 2>/dev/null; then echo sysfs-writable; else echo sysfs-read-only; fi; \
                  grep -c . /proc/keys || true";
    let output = container.sh(&["--cap-add", "SYS_ADMIN"], script);
    assert_status(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["0", "sys-read-only", "sysfs-read-only", "0"],
        "{text}"
    );
}

#[test]
fn dev_has_expected_nodes() {
    let container = Container::new("dev");
    let script = "for d in null zero full random urandom tty; do stat -c '%n %t:%T %a' /dev/$d; done; \
                  readlink /dev/ptmx; test -c /dev/pts/ptmx && echo pts; \
                  grep -E ' /dev/(shm|pts|mqueue) ' /proc/mounts | cut -d' ' -f2,3";
    let output = container.sh(&[], script);
    assert_status(&output, 0);
    let expected = "/dev/null 1:3 666\n/dev/zero 1:5 666\n/dev/full 1:7 666\n\
                    /dev/random 1:8 666\n/dev/urandom 1:9 666\n/dev/tty 5:0 666\n\
                    pts/ptmx\npts\n/dev/pts devpts\n/dev/shm tmpfs\n/dev/mqueue mqueue\n";
    assert_eq!(stdout(&output), expected);
}

/// A descriptor the launcher inherits without close-on-exec does not reach
/// the command.
#[test]
fn no_host_descriptor_inherited() {
    let container = Container::new("fds");
    let script = format!(
        "exec 7</etc/hostname; exec {} run --name {} {} -- ls /proc/self/fd",
        crate::fixture::unionfs_bin(),
        container.name,
        container.layers()
    );
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert_status(&output, 0);
    let text = stdout(&output);
    let fds: Vec<&str> = text.lines().collect();
    // 0-2, and the directory ls itself reads.
    assert_eq!(fds, ["0", "1", "2", "3"]);
}

/// The container's PID 1 runs the command's binary, never the launcher's.
#[test]
fn pid_1_exe_is_command() {
    let container = Container::new("exe");
    let output = container.sh(&[], "readlink /proc/1/exe");
    assert_status(&output, 0);
    assert_eq!(stdout(&output), "/bin/busybox\n");
}
