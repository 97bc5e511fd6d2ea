"""Helpers shared by the benchmark modules: logging, commands, mounts, caches."""

import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("UNIONFS_CACHE", os.path.join(REPO_ROOT, ".cache"))
BENCH_CACHE = os.path.join(CACHE_DIR, "bench")


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A failed benchmark step. The message names the step and the cause."""


def run(args, **kwargs):
    """Runs a command, raising BenchError with its stderr when it fails."""
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.PIPE)
    result = subprocess.run(args, check=False, **kwargs)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip() if result.stderr else ""
        raise BenchError(f"command failed with status {result.returncode}: {' '.join(args)}: {stderr[-2000:]}")
    return result


def sh(script, **kwargs):
    """Runs a bash script with pipefail, raising BenchError when it fails."""
    return run(["bash", "-o", "pipefail", "-ec", script], **kwargs)


def drop_caches():
    """Writes back dirty data, then drops the page cache, dentries and inodes."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def mount_points():
    """Returns the mount points listed in /proc/self/mountinfo, decoded."""
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            field = line.split()[4]
            points.append(field.encode().decode("unicode_escape"))
    return points


def is_mounted(path):
    return os.path.realpath(path) in mount_points()


def wait_for_mount(path, process, timeout_seconds=30.0):
    """Waits until PATH is a mount point; fails if PROCESS exits first."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if is_mounted(path):
            return
        if process is not None and process.poll() is not None:
            raise BenchError(f"the daemon exited with status {process.returncode} before mounting {path}")
        time.sleep(0.02)
    raise BenchError(f"timed out after {timeout_seconds:.0f} s waiting for the mount on {path}")


def unmount(path):
    """Unmounts PATH, retrying a busy mount before detaching it lazily."""
    for _ in range(50):
        if not is_mounted(path):
            return
        result = subprocess.run(["umount", path], stderr=subprocess.PIPE, check=False)
        if result.returncode == 0:
            return
        time.sleep(0.1)
    log(f"warning: {path} stayed busy for 5 s; detaching it with umount -l")
    subprocess.run(["umount", "-l", path], check=False)


def unmount_below(directory):
    """Unmounts every mount at or below DIRECTORY, deepest first."""
    directory = os.path.realpath(directory)
    below = [p for p in mount_points() if p == directory or p.startswith(directory + "/")]
    for point in sorted(set(below), reverse=True):
        log(f"unmounting leftover mount {point}")
        unmount(point)


def remove_tree(path):
    """Removes PATH without crossing into another filesystem."""
    if os.path.lexists(path):
        unmount_below(path)
        run(["rm", "-rf", "--one-file-system", "--", path])


def read_proc_status(pid):
    """Returns VmHWM and VmRSS of process PID in KiB, or None when it is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(rest.split()[0])
    except FileNotFoundError:
        return None
    return values
