"""The systems under test and how each one mounts a layer stack.

Every mount gets a fresh upper and work dir, so that no measurement reads
what another one wrote. FUSE daemons run in the foreground as children of this
process, so that their pid is known for /proc/PID/status and for the wait
after unmounting.
"""

import os
import shutil
import subprocess

from common import BENCH_CACHE, REPO_ROOT, BenchError, log, read_proc_status, remove_tree, run
from common import unmount, wait_for_mount

UNIONFS_BIN = os.path.join(REPO_ROOT, "target/release/unionfs")
FUSE_OVERLAYFS_110_BIN = "/usr/bin/fuse-overlayfs"
FUSE_OVERLAYFS_20_BIN = os.path.join(BENCH_CACHE, "fuse-overlayfs-2.0/bin/fuse-overlayfs")
DAEMON_EXIT_TIMEOUT = 30.0


class Mount:
    """One mounted view: ROOT is where workloads run."""

    def __init__(self, system, root, scratch, upper=None, process=None):
        self.system = system
        self.root = root
        self.scratch = scratch
        self.upper = upper
        self.process = process

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def memory(self):
        """Returns the daemon's VmHWM and VmRSS in KiB, or None for kernel mounts."""
        return read_proc_status(self.pid) if self.pid else None


class System:
    """A union filesystem (or the plain directory) that mounts layer stacks."""

    name = ""
    label = ""
    is_union = True

    def __init__(self, scratch_root):
        self.scratch_root = scratch_root
        self.counter = 0

    def mount(self, lowerdirs, flat=None, upper_setup=None):
        """Mounts LOWERDIRS under a fresh upper; UPPER_SETUP(upper) runs before mounting."""
        self.counter += 1
        scratch = os.path.join(self.scratch_root, f"{self.name}-{self.counter}")
        remove_tree(scratch)
        upper = os.path.join(scratch, "upper")
        work = os.path.join(scratch, "work")
        root = os.path.join(scratch, "mnt")
        for path in (upper, work, root):
            os.makedirs(path)
        if upper_setup:
            upper_setup(upper)
        process = self._start(lowerdirs, upper, work, root)
        return Mount(self, root, scratch, upper=upper, process=process)

    def _start(self, lowerdirs, upper, work, root):
        raise NotImplementedError

    def unmount(self, mount):
        unmount(mount.root)
        if mount.process is not None:
            try:
                mount.process.wait(timeout=DAEMON_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"warning: {self.name} daemon {mount.pid} still runs {DAEMON_EXIT_TIMEOUT:.0f} s "
                    "after unmounting; killing it")
                mount.process.kill()
                mount.process.wait()
        remove_tree(mount.scratch)


class KernelOverlay(System):
    name = "overlayfs"
    label = "kernel overlayfs"

    def _start(self, lowerdirs, upper, work, root):
        options = f"lowerdir={':'.join(lowerdirs)},upperdir={upper},workdir={work}"
        run(["mount", "-t", "overlay", "overlay", "-o", options, root])
        return None


class FuseDaemon(System):
    """A FUSE union daemon started in the foreground with overlayfs-style options."""

    binary = ""

    def command(self, options, root):
        return [self.binary, "-f", "-o", options, root]

    def _start(self, lowerdirs, upper, work, root):
        options = f"lowerdir={':'.join(lowerdirs)},upperdir={upper},workdir={work},dev,suid"
        log_path = os.path.join(os.path.dirname(root), "daemon.log")
        with open(log_path, "wb") as daemon_log:
            process = subprocess.Popen(self.command(options, root), stdin=subprocess.DEVNULL,
                                       stdout=daemon_log, stderr=daemon_log)
        try:
            wait_for_mount(root, process)
        except BenchError as error:
            if process.poll() is None:
                process.kill()
                process.wait()
            with open(log_path, errors="replace") as daemon_log:
                output = daemon_log.read().strip()[-1500:]
            raise BenchError(f"{self.label} did not mount: {error}; its output: {output}") from None
        return process


class Unionfs(FuseDaemon):
    name = "unionfs"
    label = "unionfs"
    binary = UNIONFS_BIN


def use_private_unionfs_copy(directory):
    """Runs a copy of target/release/unionfs in DIRECTORY from now on.

    Other jobs may rebuild target/ while the benchmark runs, and every
    measurement must run the same binary.
    """
    if not os.access(UNIONFS_BIN, os.X_OK):
        return
    copy = os.path.join(directory, "unionfs")
    shutil.copy2(UNIONFS_BIN, copy)
    Unionfs.binary = copy


class FuseOverlayfs110(FuseDaemon):
    name = "fuse-overlayfs-1.10"
    label = "fuse-overlayfs 1.10"
    binary = FUSE_OVERLAYFS_110_BIN


class FuseOverlayfs20(FuseDaemon):
    name = "fuse-overlayfs-2.0"
    label = "fuse-overlayfs 2.0"
    binary = FUSE_OVERLAYFS_20_BIN


class PlainDirectory(System):
    """The flattened tree in a plain directory: no union and no copy-up.

    Workloads write only to new names in it and remove them afterwards; a
    workload that removes or changes existing files works on a copy.
    """

    name = "plain"
    label = "plain directory"
    is_union = False

    def mount(self, lowerdirs, flat=None, upper_setup=None):
        if flat is None:
            raise BenchError("the plain directory needs the flattened tree")
        self.counter += 1
        scratch = os.path.join(self.scratch_root, f"{self.name}-{self.counter}")
        remove_tree(scratch)
        os.makedirs(scratch)
        return Mount(self, flat, scratch)

    def unmount(self, mount):
        remove_tree(mount.scratch)


ALL_SYSTEMS = [KernelOverlay, Unionfs, FuseOverlayfs110, FuseOverlayfs20, PlainDirectory]
REFERENCE = KernelOverlay.name


def check_system(system_class, scratch_root, lowerdirs, flat):
    """Mounts and unmounts once, returning None or the reason the system cannot run."""
    system = system_class(scratch_root)
    if isinstance(system, FuseDaemon) and not os.access(system.binary, os.X_OK):
        return f"{system.binary} not found or not executable"
    try:
        mount = system.mount(lowerdirs, flat=flat)
    except BenchError as error:
        return str(error)
    try:
        if not os.path.isdir(os.path.join(mount.root, "usr/bin")):
            return f"the merged view at {mount.root} has no usr/bin"
    finally:
        system.unmount(mount)
    return None


def version_of(system_class):
    """Returns a version string for the results page."""
    if system_class is KernelOverlay:
        return f"Linux {os.uname().release}"
    if system_class is PlainDirectory:
        return f"{filesystem_type(REPO_ROOT)} directory"
    binary = system_class.binary
    if not os.access(binary, os.X_OK):
        return "missing"
    if system_class is FuseOverlayfs110:
        package = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "fuse-overlayfs"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
        return f"Debian package fuse-overlayfs {package.stdout.decode().strip()}, {binary}"
    if system_class is Unionfs:
        head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, check=False).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                               stdout=subprocess.PIPE, check=False).stdout.decode().strip()
        return f"commit {head}" + (" with uncommitted changes in src/" if dirty else "")
    result = subprocess.run([binary, "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    versions = [line for line in result.stdout.decode(errors="replace").splitlines() if "version" in line]
    return f"{versions[0].strip()}, {binary}" if versions else binary


def filesystem_type(path):
    result = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", path], stdout=subprocess.PIPE, check=False)
    return result.stdout.decode().strip() or "unknown"
