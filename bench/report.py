#!/usr/bin/env python3
"""Turns raw benchmark results into the results page.

Usage: bench/report.py RESULTS.jsonl [PAGE.md]
Prints the tables and, given PAGE.md, writes the whole page there.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402
from reasons import reason_for  # noqa: E402

REFERENCE = "overlayfs"
SYSTEM_ORDER = ["overlayfs", "unionfs", "fuse-overlayfs-1.10", "fuse-overlayfs-2.0", "plain"]
FUSE_PEERS = ["fuse-overlayfs-1.10", "fuse-overlayfs-2.0"]
MISSING_REASON = "**Reason (core engineer): _to be filled in_**"
RATIO_UNITS = ("s", "MiB/s", "IOPS")
GROUP_ORDER = ["Metadata", "Data", "Copy-up", "Namespace", "Programs", "Scaling", "Memory"]
# Two medians within this factor of each other count as a tie, because
# repeated runs on the shared 2-CPU machine differ by more than that.
TIE = 1.05


def load(path):
    metadata, records = {}, []
    with open(path) as results:
        for line in results:
            entry = json.loads(line)
            if "metadata" in entry:
                metadata = entry["metadata"]
            elif "metadata_end" in entry:
                metadata.update(entry["metadata_end"])
            else:
                records.append(entry)
    return metadata, records


class Table:
    """Medians per result key and system, and the ratios to kernel overlayfs."""

    def __init__(self, metadata, records, workload_classes):
        self.metadata = metadata
        self.labels = metadata.get("label_values", {})
        present = {record["system"] for record in records}
        self.systems = [name for name in SYSTEM_ORDER if name in present]
        self.results = []
        self.groups = {}
        for workload_class in workload_classes:
            for result in workload_class.results:
                self.results.append(result)
                self.groups[result.key] = workload_class.group
        self.samples = {}
        self.errors = []
        self.hwm = {}
        for record in records:
            system = record["system"]
            if "error" in record:
                self.errors.append(record)
                continue
            for key, value in record["values"].items():
                self.samples.setdefault((key, system), []).append(value)
            if "hwm_mib" in record:
                self.hwm[system] = max(self.hwm.get(system, 0), record["hwm_mib"])
        self.failed = {(record["workload"], record["system"]) for record in self.errors}

    def label(self, result):
        try:
            return result.label.format(**self.labels)
        except (KeyError, IndexError):
            return result.label

    def median(self, key, system):
        values = self.samples.get((key, system))
        return statistics.median(values) if values else None

    def count(self, key, system):
        return len(self.samples.get((key, system), []))

    def ratio(self, result, system):
        """Returns how many times slower SYSTEM is than kernel overlayfs (above 1: slower)."""
        if result.unit not in RATIO_UNITS:
            return None
        value = self.median(result.key, system)
        reference = self.median(result.key, REFERENCE)
        if value is None or reference is None or value <= 0 or reference <= 0:
            return None
        return reference / value if result.higher_is_better else value / reference

    def measured_keys(self):
        """Returns the results that have samples or failures, grouped in GROUP_ORDER."""
        measured = [result for result in self.results
                    if any((result.key, system) in self.samples for system in self.systems)
                    or any(workload == result.key for workload, _ in self.failed)]
        return sorted(measured, key=lambda result: GROUP_ORDER.index(self.groups[result.key]))


def format_value(value, unit):
    if value is None:
        return "–"
    if unit == "s":
        if value < 0.001:
            return f"{value * 1e6:.0f} µs"
        if value < 1:
            return f"{value * 1000:.1f} ms"
        return f"{value:.2f} s"
    if unit == "IOPS":
        return f"{value / 1000:.1f}k IOPS"
    if unit == "MiB/s":
        return f"{value:.0f} MiB/s"
    return f"{value:.1f} {unit}"


def format_cell(table, result, system):
    value = table.median(result.key, system)
    if value is None:
        if (result.key, system) in table.failed:
            return "failed"
        return "–"
    text = format_value(value, result.unit)
    ratio = table.ratio(result, system)
    if ratio is not None and system != REFERENCE:
        text += f" ({ratio:.2f}×)"
    return text


def render_table(table):
    names = [table.metadata.get("labels", {}).get(system, system) for system in table.systems]
    lines = ["| workload | " + " | ".join(names) + " |",
             "| --- | " + " | ".join("---:" for _ in names) + " |"]
    group = None
    for result in table.measured_keys():
        if table.groups[result.key] != group:
            group = table.groups[result.key]
            lines.append(f"| **{group}** |" + " |" * len(names))
        label = table.label(result)
        if label.startswith("  "):
            label = "&nbsp;&nbsp;" + label.strip()
        cells = [format_cell(table, result, system) for system in table.systems]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class Target:
    """One target from the performance goals and how this run is judged against it."""

    def __init__(self, text, check):
        self.text = text
        self.check = check


def check_ratio_limit(limit, prefixes):
    def check(table):
        findings, missed, measured = [], False, False
        for result in table.measured_keys():
            if not any(result.key.startswith(prefix) for prefix in prefixes) or result.unit not in RATIO_UNITS:
                continue
            ratio = table.ratio(result, "unionfs")
            if ratio is None:
                continue
            measured = True
            if ratio > limit:
                missed = True
                findings.append(f"{table.label(result)}: {ratio:.2f}×")
        return status(measured, missed), findings
    return check


def status(measured, missed):
    if not measured:
        return "not measured"
    return "missed" if missed else "met"


def check_allocated(limit_mib, key):
    def check(table):
        value = table.median(key, "unionfs")
        if value is None:
            return "not measured", []
        reference = table.median(key, REFERENCE)
        note = f"unionfs {value:.2f} MiB" + (f", kernel overlayfs {reference:.2f} MiB" if reference is not None else "")
        return ("met" if value <= limit_mib else "missed"), [note]
    return check


def check_not_slower_than_peers(table):
    slower, ties, measured = [], [], False
    for result in table.measured_keys():
        if result.unit not in RATIO_UNITS:
            continue
        mine = table.median(result.key, "unionfs")
        if mine is None:
            continue
        for peer in FUSE_PEERS:
            theirs = table.median(result.key, peer)
            if theirs is None:
                continue
            measured = True
            factor = theirs / mine if result.higher_is_better else mine / theirs
            if factor <= 1:
                continue
            finding = (factor, f"{table.label(result)}: {factor:.2f}× slower than {table.metadata['labels'][peer]}")
            (slower if factor > TIE else ties).append(finding)
    findings = [text for _, text in sorted(slower, reverse=True)]
    if ties:
        findings.append(f"within {TIE:.2f}× (a tie on this machine): "
                        + "; ".join(text for _, text in sorted(ties, reverse=True)))
    return status(measured, bool(slower)), findings


def check_scaling(table):
    findings, missed, measured = [], False, False
    for kind in ("walk", "read", "randread"):
        speedups = scaling_speedups(table, kind, "unionfs")
        if not speedups:
            continue
        measured = True
        text = ", ".join(f"{clients} clients {speedup:.2f}×" for clients, speedup in speedups.items())
        findings.append(f"{kind}: {text} the throughput of 1 client")
        if speedups.get(2, 0) <= TIE:
            missed = True
    return status(measured, missed), findings


def scaling_speedups(table, kind, system):
    """Returns {clients: throughput relative to 1 client} for one scaling workload."""
    base = table.median(f"scale.{kind}.1", system)
    if base is None:
        return {}
    speedups = {}
    for clients in workloads.CLIENT_COUNTS[1:]:
        value = table.median(f"scale.{kind}.{clients}", system)
        if value is None:
            continue
        speedups[clients] = value / base if kind == "randread" else base / value
    return speedups


def check_debian_rss(table):
    value = table.median("mem.debian.hwm", "unionfs")
    if value is None:
        return "not measured", []
    return ("met" if value < 64 else "missed"), [f"VmHWM {value:.1f} MiB"]


def check_forget(table):
    start, half, final = (table.median(f"mem.million.{key}", "unionfs") for key in ("start", "half", "hwm"))
    if start is None or half is None or final is None:
        return "not measured", []
    first_growth = half - start
    second_growth = final - half
    note = (f"peak RSS grew by {first_growth:.1f} MiB over the first half and by {second_growth:.1f} MiB "
            "over the second")
    return ("met" if second_growth <= first_growth / 2 else "missed"), [note]


TARGETS = [
    Target("Sequential read and write and random reads within 1.1× of kernel overlayfs",
           check_ratio_limit(1.1, ["data.seqread", "data.seqwrite", "data.randread"])),
    Target("Warm metadata walks and program start-up within 1.5×",
           check_ratio_limit(1.5, [f"meta.{kind}.warm" for kind in workloads.WALKS] + ["prog."])),
    Target("Cold metadata walks within 2×", check_ratio_limit(2.0, [f"meta.{kind}.cold" for kind in workloads.WALKS])),
    Target("A copy-up of a large dense file (append one byte) within 1.2×", check_ratio_limit(1.2, ["copyup.append"])),
    Target("O_TRUNC copies no data (the upper copy contains at most 0.01 MiB)",
           check_allocated(0.01, "copyup.otrunc.allocated")),
    Target("chmod copies no data (the upper copy contains at most 0.01 MiB)",
           check_allocated(0.01, "copyup.chmod.allocated")),
    Target("A sparse file copies only its data (the file has 1 MiB of data, and the upper copy may contain at most "
           "1.25 MiB)",
           check_allocated(1.25, "copyup.sparse.allocated")),
    Target("rm -rf of a lower tree and small-file creation within 2×",
           check_ratio_limit(2.0, ["ns.rm.lower", "ns.create."])),
    Target(f"Never slower than fuse-overlayfs 1.10 or 2.0 on any workload (a gap of at most {TIE:.2f}× "
           "counts as a tie)", check_not_slower_than_peers),
    Target(f"Throughput grows with concurrent clients (2 clients give more than {TIE:.2f}× the throughput of 1 "
           "client on every scaling workload)", check_scaling),
    Target("Daemon peak RSS under 64 MiB walking the Debian rootfs", check_debian_rss),
    Target("Inodes the kernel has forgotten are freed (after the kernel forgets every inode walked in the "
           "first half of the million-entry layer, walking the second half grows the peak RSS by at most half as "
           "much as the first half did)", check_forget),
]


def render_targets(table, with_reasons):
    lines = []
    for target in TARGETS:
        verdict, findings = target.check(table)
        lines.append(f"- **{verdict}**: {target.text}.")
        for finding in findings:
            lines.append(f"  - {finding}")
        if verdict == "missed" and with_reasons:
            reason = reason_for(target.text)
            lines.append(f"  - Reason: {reason}" if reason else f"  - {MISSING_REASON}")
    return "\n".join(lines)


def render_scaling(table):
    lines = ["| workload | " + " | ".join(table.metadata.get("labels", {}).get(s, s) for s in table.systems) + " |",
             "| --- | " + " | ".join("---:" for _ in table.systems) + " |"]
    scaling = table.labels.get("scaling", "the source tree")
    for kind, label in (("walk", f"stat every entry of {scaling}"), ("read", f"read every file of {scaling}"),
                        ("randread", "fio random 4 KiB reads")):
        for clients in workloads.CLIENT_COUNTS[1:]:
            cells = []
            for system in table.systems:
                speedup = scaling_speedups(table, kind, system).get(clients)
                cells.append("–" if speedup is None else f"{speedup:.2f}×")
            lines.append(f"| {label}, {clients} clients | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_memory(table):
    daemons = [system for system in table.systems if system in table.hwm]
    if not daemons:
        return "No daemon memory was recorded."
    labels = table.metadata.get("labels", {})
    lines = ["| daemon | " + " | ".join(labels.get(s, s) for s in daemons) + " |",
             "| --- | " + " | ".join("---:" for _ in daemons) + " |"]
    rows = [("mem.debian.hwm", "peak RSS, stat walk of the Debian rootfs"),
            ("mem.full.hwm", "peak RSS, stat walk of the whole stack"),
            ("mem.million.start", "RSS after mounting the layer of {million} entries"),
            ("mem.million.half", "peak RSS after a stat walk of half of it"),
            ("mem.million.forgotten", "RSS after the kernel forgets every inode"),
            ("mem.million.hwm", "peak RSS after a stat walk of the other half")]
    for key, label in rows:
        cells = [format_value(table.median(key, system), "MiB") for system in daemons]
        lines.append(f"| {label.format(**table.labels)} | " + " | ".join(cells) + " |")
    lines.append("| highest peak RSS over every measurement of the run | "
                 + " | ".join(f"{table.hwm[system]:.1f} MiB" for system in daemons) + " |")
    return "\n".join(lines)


def render_failures(table):
    lines = []
    for name, reason in table.metadata.get("excluded", {}).items():
        lines.append(f"- {table.metadata['labels'].get(name, name)} was left out: {reason}")
    for record in table.errors:
        lines.append(f"- {record['workload']} on {record['system']} (repetition {record['rep'] + 1}) failed: "
                     f"{record['error'][:400]}")
    return "\n".join(lines) if lines else "None."


def render_text(metadata, records, workload_classes):
    table = Table(metadata, records, workload_classes)
    return "\n\n".join([
        f"Medians of {metadata.get('reps')} runs ({metadata.get('profile')} profile); "
        "in brackets: times slower than kernel overlayfs (above 1 is slower)",
        render_table(table),
        "Targets (unionfs):",
        render_targets(table, with_reasons=False),
        "Failures:",
        render_failures(table),
    ])


def render_layers(metadata):
    layers = metadata.get("layers")
    if not layers:
        return "The results file records no layer sizes."
    lines = ["| layer | entries |", "| --- | ---: |"]
    lines += [f"| {name} | {count:,} |" for name, count in layers]
    return "\n".join(lines)


def format_load(load):
    return ", ".join(f"{value:.2f}" for value in load) if load else "unknown"


def render_page(metadata, records, workload_classes):
    table = Table(metadata, records, workload_classes)
    versions = metadata.get("versions", {})
    labels = metadata.get("labels", {})
    system_lines = "\n".join(f"- {labels.get(name, name)}: {versions[name]}" for name in SYSTEM_ORDER
                             if name in versions)
    duration = metadata.get("duration_s")
    duration_text = f"{duration / 60:.0f} minutes" if duration else "unknown"
    profile = metadata.get("profile", "full")
    return PAGE_TEMPLATE.format(
        command=metadata.get("command", "sudo bench/run.sh") + (" --quick" if profile == "quick" else ""),
        date=metadata.get("date"),
        kernel=metadata.get("kernel"),
        cpu=metadata.get("cpu"),
        ram=metadata.get("memory"),
        commit=metadata.get("commit"),
        load_start=format_load(metadata.get("load_start")),
        load_end=format_load(metadata.get("load_end")),
        duration=duration_text,
        profile=profile,
        reps=metadata.get("reps"),
        systems=system_lines,
        layers=render_layers(metadata),
        table=render_table(table),
        targets=render_targets(table, with_reasons=True),
        scaling=render_scaling(table),
        memory=render_memory(table),
        failures=render_failures(table),
        **{f"label_{key}": value for key, value in table.labels.items()},
    )


PAGE_TEMPLATE = """# Benchmarks

unionfs against kernel overlayfs, fuse-overlayfs 1.10, fuse-overlayfs 2.0 and
a plain directory, on the same layers in the same run. The numbers below are
from one run of

```sh
{command}
```

on this machine:

| | |
| --- | --- |
| date | {date} |
| kernel | {kernel} |
| CPU | {cpu} |
| memory | {ram} |
| unionfs commit | {commit} |
| load average (1, 5, 15 min) at the start | {load_start} |
| load average at the end | {load_end} |
| duration | {duration} |
| profile, repetitions | {profile}, {reps} |

The machine is shared with other jobs, so absolute times vary from run to
run. Compare the ratios: each system's median over the median of kernel
overlayfs in the same run.

Systems:

{systems}

Layers, topmost first (entry counts include directories):

{layers}

## Method

- Layers, topmost first: the Linux 6.1 source from Debian's `linux-source`
  package under `usr/src/`; a middle layer that overrides and deletes a few
  hundred files of the bottom layer (overlay whiteouts), deletes whole
  directories and makes others opaque, and contains the data files; the
  Debian 12 minbase root filesystem from `scripts/rootfs.sh debian`. The
  plain directory contains the flattened merged view. `bench/layers.py` builds them
  once into `.cache/bench/`.
- Every measurement mounts afresh with its own empty upper and work dir, so
  each union starts with empty caches of its own. Before mounting, the
  benchmark reads the files the workload uses into the page cache
  (untimed), because other jobs on the machine evict them.
- Each metadata walk drops the page cache, dentries and inodes
  (`echo 3 > /proc/sys/vm/drop_caches`) after mounting and runs timed
  ("cold"), then runs again on the same mount ("warm").
- The systems take turns: each repetition runs every system on the same
  workload, starting with a different system each time.
- FUSE daemons run with `-o dev,suid` and their default settings otherwise;
  kernel overlayfs uses the kernel's defaults (no metacopy, no
  redirect_dir, no index).
- Peer behaviour seen with strace on this machine, which explains part of
  the differences: fuse-overlayfs 1.10 and 2.0.0 copy up with `sendfile`
  and do not fsync the copy (kernel overlayfs fsyncs it unless mounted
  `volatile`); fuse-overlayfs 2.0.0 opens lower-layer files for FUSE
  passthrough (`FUSE_DEV_IOC_BACKING_OPEN`) on a read-only open, so its
  reads of lower files bypass the daemon.
- fio uses psync, buffered I/O, and no fsync at the end of the write job,
  so it measures the filesystem's path to the page cache, not the disk.
  Random reads run for a fixed time and report IOPS.
- Copy-up times include the fsync each filesystem does on its copy. The
  "data in the upper copy" rows give the blocks allocated to the upper file
  afterwards, which shows whether data was copied.
- Programs run 100 times in a loop inside one `chroot` on the mount, after
  one untimed run. The minbase layer has no python3, so the benchmark runs perl instead.
- Scaling splits {label_scaling} into 1, 2 or 4 lists of about equal
  entry counts and runs one client per list at once. fio runs 1, 2 or 4
  jobs on the same file.
- Memory: the daemon's VmHWM and VmRSS from `/proc/PID/status`, on a mount
  of the Debian layer alone, of the whole stack, and of a layer of
  {label_million} entries (1,000 directories of 1,000 empty files in the full
  profile). On that layer the daemon walks one half, the kernel forgets
  every inode (`echo 2 > /proc/sys/vm/drop_caches`), and the daemon walks
  the other half. The memory walks run once.

## Results

Medians; in brackets, how many times slower than kernel overlayfs (above 1
is slower), computed from throughput for fio rows.

{table}

## Targets

How unionfs compares with each performance target in this run.

{targets}

## Scaling

Throughput with 2 and 4 concurrent clients relative to 1 client of the same
system (above 1: more throughput). The machine has 2 CPUs.

{scaling}

## Daemon memory

{memory}

## Failures

{failures}
"""


def main(argv):
    if len(argv) not in (1, 2):
        print("usage: bench/report.py RESULTS.jsonl [PAGE.md]", file=sys.stderr)
        return 2
    metadata, records = load(argv[0])
    workload_classes = workloads.build_workloads(None)
    print(render_text(metadata, records, workload_classes))
    if len(argv) == 2:
        with open(argv[1], "w") as page:
            page.write(render_page(metadata, records, workload_classes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
