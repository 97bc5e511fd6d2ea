"""Reasons unionfs misses a performance target, as the results page states them.

Each entry is keyed by the start of a target's text in report.TARGETS and
is printed under that target whenever a run misses it. The reasons were
checked on this machine (Linux 6.18, 2 CPUs) with strace, perf and the
daemon's /proc/PID/io; keep them in step with the code.
"""

REASONS = {
    "Sequential read and write and random reads": (
        "On a writable stack unionfs serves lower-layer files through the daemon. Every read the page "
        "cache misses is a FUSE round trip: up to 1 MiB for sequential reads, one 4 KiB page for random "
        "ones. perf shows the daemon's time in the kernel's FUSE copy and wake-up paths, not in unionfs. "
        "FUSE passthrough would remove the round trip, but the kernel binds an inode to one backing file "
        "while any handle is open. After a copy-up, open handles would keep reading the lower file, and "
        "a write through a new handle would go to the lower file too. fuse-overlayfs 2.0 does pass lower "
        "files through: on this machine a read-only open, then an O_WRONLY|O_TRUNC open and a write, "
        "changed the lower layer's file. unionfs passes through upper-layer files (the upper-file row), "
        "and lower files too on a stack with no writable layer. A sequential write of a new file goes "
        "through passthrough; its ratio moves between runs on this machine as much as the plain "
        "directory's does."
    ),
    "Warm metadata walks": (
        "Attributes and names stay cached in the kernel, but FUSE caches no extended attributes. ls -l "
        "asks for security.selinux on every name, a round trip through the daemon each time, which "
        "kernel overlayfs answers in the kernel. ls -l also asks for system.posix_acl_access and, on "
        "directories, system.posix_acl_default; unionfs asks for FUSE_POSIX_ACL, so the kernel caches "
        "those itself (ls -lR of /usr/share/doc went from 0.52 s to 0.17 s, medians of 5, when it was "
        "added)."
    ),
    "Cold metadata walks": (
        "A cold walk costs one FUSE round trip per lookup and per directory read, on top of the lookups "
        "unionfs makes in each layer. Kernel overlayfs makes the same layer lookups without the round "
        "trip. unionfs is faster than both fuse-overlayfs versions on every cold walk."
    ),
    "chmod copies no data": (
        "A metadata-only copy-up is kernel overlayfs's metacopy feature. It is off by default and marks "
        "the upper file with trusted.overlay.metacopy. Kernel overlayfs mounted without metacopy=on "
        "refuses such files: on this machine stat gave EPERM and the kernel logged 'refusing to follow "
        "metacopy origin'. unionfs writes the default format, so its upper layer works under kernel "
        "overlayfs with default options. Like kernel overlayfs, chmod then copies the data."
    ),
    "rm -rf of a lower tree and small-file creation": (
        "Every create, unlink and rmdir is a FUSE round trip. Each removal of a lower name also writes a "
        "whiteout through the work dir, and the nested-tree create runs a mkdir per directory. On these "
        "workloads unionfs is faster than both fuse-overlayfs versions or within the tie margin. The "
        "plain directory is itself several times slower than kernel overlayfs on the nested create, so "
        "part of that row is the disk."
    ),
    "Never slower than fuse-overlayfs": (
        "Reads of lower files (fio, and reading every file): fuse-overlayfs 2.0 passes them through, "
        "which can write into the lower layer (see the first target). fuse-overlayfs 1.10 answers reads "
        "with splice (strace shows file to pipe to /dev/fuse), which keeps the data out of its own "
        "memory; fuser 0.18 has no splice reply, so unionfs copies the data in and out of the daemon. A 1 GiB copy-up (append, chmod): both "
        "fuse-overlayfs versions skip the fsync of the copy, which kernel overlayfs and unionfs do. "
        "Without it, a crash can leave an empty or partial upper file in place of the lower one; with "
        "-o volatile unionfs skips the fsync too. A sequential write of a new file passes through in "
        "both, and its ratio moves between runs as much as the plain directory's does."
    ),
    "Throughput grows with concurrent clients": (
        "The machine has 2 CPUs shared with other jobs. One client of a FUSE walk already keeps both "
        "busy (the client and a daemon thread), so a second client mostly adds contention. Kernel "
        "overlayfs needs no second process and gains there. With 4 clients unionfs gains more than "
        "kernel overlayfs and both fuse-overlayfs versions on every scaling workload."
    ),
}


def reason_for(target_text):
    """Returns the reason recorded for a missed target, or None."""
    for start, reason in REASONS.items():
        if target_text.startswith(start):
            return reason
    return None
