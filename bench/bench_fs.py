#!/usr/bin/env python3
"""Filesystem benchmark: hsync against ``rsync -a --delete``.

Generates a seeded tree (default: 100,000 files in 5,000 directories, about 450 MB, like the
baseline tree T1 in the project notes), then times both tools on five scenarios, interleaved
round by round because the disk is shared and noisy:

  a  initial sync into an empty destination (against ``rsync -a; sync -f DST`` timed as
     one command: the same durability as hsync's syncfs; plain ``rsync -a`` for information)
  b  no-op re-sync
  c  re-sync after renaming the directory that holds about 10% of the tree's files
  d  re-sync after deleting DELETES files spread over the tree (default min(1000, 1%))
     (``rsync -a --delete; sync -f DST`` beside it for information: hsync's deletes are
     durable when it exits)
  e  re-sync after renaming a directory of 300 files of 1 MiB each (a copy of the tree
     with that directory added)
  s  start-up alone: ``hsync --version`` and a no-op ``hsync sync`` of a 10-file tree (as
     typed, and with ``--json`` as the other scenarios run it)
     against ``python -c pass`` (hsync's interpreter) and ``rsync`` of the same tree

``--sizes 5k,20k,100k`` runs all of it per tree size (files/20 directories each, same
shape) and prints one table of ratios per size; add ``1m`` for the million-file tree
(long to build; 3 rounds there).

Each command is timed as a whole process (wall clock) and its peak RSS is read with
``os.wait4``. Results: a markdown table on stdout and a JSON file (``--out``).
Stdlib only. Run ``python bench/bench_fs.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GEN_VERSION = 1  # bump when the generator changes: cached trees are keyed by it
MIB = 1 << 20
KIB = 1 << 10
BUF_SIZE = 4 * MIB  # random bytes reused for all file contents (with a unique header)
MTIME_BASE_NS = 1_600_000_000 * 10**9  # 2020-09-13
MTIME_SPAN_NS = 3 * 365 * 86400 * 10**9
PARETO_ALPHA = 0.73  # tail 4 KiB .. 1 MiB; gives ~450 MB for 100k files
SCENARIOS = "abcdes"
TOOLS = ("hsync", "rsync", "rsync+sync")
# The peer each scenario's ratio is taken against (a: the same durability as hsync).
PEER = {"a": "rsync+sync"}

DESCRIPTIONS = {
    "a": "initial sync into an empty destination",
    "b": "no-op re-sync",
    "c": "rename of a directory of {tenth} files (about 10% of the tree)",
    "d": "{deletes} files deleted",
    "e": "rename of a directory of {big_count} x {big} files",
    "s": "start-up alone",
}
# Maximum hsync/rsync ratio (median of the per-round ratios) asked for by the issue.
TARGETS: dict[str, float] = {"a": 0.8, "b": 0.8, "c": 0.3, "d": 0.7, "e": 0.1, "s": 2.5}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- generation


@dataclass
class MainManifest:
    """What the generator made; stored next to the cached tree as manifest.json."""

    files: int
    dirs: int
    total_bytes: int
    bulk_dir: str  # relative path of the directory holding exactly `batch` files
    delete_files: list[str]  # `batch` files outside bulk_dir, spread over the tree
    depth_histogram: dict[str, int]
    seconds: float


@dataclass
class BigManifest:
    files: int
    total_bytes: int
    bulk_dir: str
    seconds: float


def _file_size(rng: random.Random) -> int:
    """5% empty, 88% 1 B..4 KiB, 7% truncated Pareto 4 KiB..1 MiB."""
    u = rng.random()
    if u < 0.05:
        return 0
    if u < 0.93:
        return int(rng.randint(1, 4 * KIB))
    lo = float(4 * KIB) ** -PARETO_ALPHA
    hi = float(MIB) ** -PARETO_ALPHA
    return min(MIB, int((lo - rng.random() * (lo - hi)) ** (-1.0 / PARETO_ALPHA)))


class _Writer:
    """Writes files whose content is a unique 8-byte header plus a slice of one buffer."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.buf = memoryview(rng.randbytes(BUF_SIZE))
        self.serial = 0
        self.total = 0

    def write(self, path: str, size: int, mode: int) -> None:
        self.serial += 1
        header = struct.pack("<Q", self.serial)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if size <= len(header):
                os.write(fd, header[:size])
            else:
                off = self.rng.randrange(BUF_SIZE - size + len(header) + 1)
                os.writev(fd, [header, self.buf[off : off + size - len(header)]])
            os.fchmod(fd, mode)
            mtime = MTIME_BASE_NS + self.rng.randrange(MTIME_SPAN_NS)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        self.total += size


def _random_mode(rng: random.Random) -> int:
    u = rng.random()
    if u < 0.90:
        return 0o644
    if u < 0.97:
        return 0o755
    return 0o600


def generate_main(
    root: Path, files: int, dirs: int, depth: int, batch: int, seed: int
) -> MainManifest:
    """Create `dirs` directories (root excluded, depth <= `depth`) and `files` files."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    writer = _Writer(rng)
    if dirs < 2 or files < 2 * batch:
        raise SystemExit(f"need --dirs >= 2 and --files >= 2 * batch ({2 * batch})")

    # Directory shape: each new directory picks the older of two random eligible parents,
    # which keeps the tree bushy near the top and caps the depth.
    rels: list[str] = [""]
    levels: list[int] = [0]
    eligible: list[int] = [0]
    for i in range(1, dirs):  # the last directory is the bulk one, added below
        a = eligible[rng.randrange(len(eligible))]
        b = eligible[rng.randrange(len(eligible))]
        parent = min(a, b)
        name = f"d{i:05d}"
        rels.append(f"{rels[parent]}/{name}" if rels[parent] else name)
        levels.append(levels[parent] + 1)
        if levels[-1] < depth:
            eligible.append(i)
    # The bulk directory sits at depth 3 (or as deep as the tree allows).
    want = min(3, depth) - 1
    candidates = [i for i, lv in enumerate(levels) if lv == want] or [0]
    bulk_parent = candidates[rng.randrange(len(candidates))]
    bulk_rel = f"{rels[bulk_parent]}/bulk" if rels[bulk_parent] else "bulk"
    bulk_index = len(rels)
    rels.append(bulk_rel)
    levels.append(levels[bulk_parent] + 1)

    root.mkdir(parents=True)
    for rel in rels[1:]:
        os.mkdir(root / rel)

    # Files: the bulk directory gets exactly `batch`; the rest are spread with skewed
    # weights (a few big directories, many small ones).
    weights = [rng.paretovariate(1.2) for _ in range(bulk_index)]
    weights[0] *= 0.2  # few files at the top level
    cum: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    owners = rng.choices(range(bulk_index), cum_weights=cum, k=files - batch)
    owners.sort()
    owners.extend([bulk_index] * batch)
    exts = (".dat", ".txt", ".json", ".log", ".bin", "")
    file_rels: list[str] = []
    for n, owner in enumerate(owners):
        name = f"f{n:06d}{exts[n % len(exts)]}"
        rel = f"{rels[owner]}/{name}" if rels[owner] else name
        writer.write(str(root / rel), _file_size(rng), _random_mode(rng))
        if owner != bulk_index:
            file_rels.append(rel)
    delete_files = sorted(rng.sample(file_rels, batch))

    # Directory mtimes last, children before parents (a child was created after its parent).
    for i in range(len(rels) - 1, -1, -1):
        mtime = MTIME_BASE_NS + rng.randrange(MTIME_SPAN_NS)
        os.utime(root / rels[i] if rels[i] else root, ns=(mtime, mtime))

    hist: dict[str, int] = {}
    for lv in levels[1:]:
        hist[str(lv)] = hist.get(str(lv), 0) + 1
    return MainManifest(
        files=files,
        dirs=len(rels) - 1,
        total_bytes=writer.total,
        bulk_dir=bulk_rel,
        delete_files=delete_files,
        depth_histogram=hist,
        seconds=round(time.perf_counter() - t0, 3),
    )


def generate_big(root: Path, count: int, size: int, seed: int) -> BigManifest:
    """A small tree with one directory `data/big` of `count` files of `size` bytes."""
    t0 = time.perf_counter()
    rng = random.Random(seed + 1_000_003)
    writer = _Writer(rng)
    bulk = root / "data" / "big"
    bulk.mkdir(parents=True)
    (root / "other").mkdir()
    for i in range(10):
        writer.write(str(root / "other" / f"small{i}.txt"), _file_size(rng), 0o644)
    for i in range(count):
        writer.write(str(bulk / f"blob{i:05d}.bin"), size, 0o644)
    for d in (bulk, root / "data", root / "other", root):
        mtime = MTIME_BASE_NS + rng.randrange(MTIME_SPAN_NS)
        os.utime(d, ns=(mtime, mtime))
    return BigManifest(
        files=count + 10,
        total_bytes=writer.total,
        bulk_dir="data/big",
        seconds=round(time.perf_counter() - t0, 3),
    )


def cached_tree(trees: Path, key: str, make: Any, regen: bool) -> tuple[Path, dict[str, Any]]:
    """Return (tree dir, manifest dict); generate into a temp dir and rename when done."""
    final = trees / key
    manifest_path = final / "manifest.json"
    if regen and final.exists():
        shutil.rmtree(final)
    if manifest_path.exists():
        return final, json.loads(manifest_path.read_text())
    tmp = trees / f"{key}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"generating {key} ...")
    manifest = make(tmp / "src")
    (tmp / "manifest.json").write_text(json.dumps(asdict(manifest), indent=1))
    os.sync()
    tmp.rename(final)
    log(
        f"generated {key}: {manifest.files} files, {manifest.total_bytes / 1e6:.1f} MB "
        f"in {manifest.seconds:.1f} s"
    )
    return final, json.loads(manifest_path.read_text())


# --------------------------------------------------------------------------- source mutations
# Scenarios c, d and e change the cached source tree. Each change is recorded in
# <tree>/mutation.json before it is made and removed once undone, so an interrupted run
# is repaired on the next start. Undoing also restores the parent directories' mtimes,
# so the cached tree stays what the generator made.


def _mtimes(paths: Sequence[Path]) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in paths}


def _restore_mtimes(saved: dict[str, int]) -> None:
    for p, ns in saved.items():
        os.utime(p, ns=(ns, ns))


class Mutation:
    """A reversible change of the source tree of one cached tree directory."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.record = tree / "mutation.json"

    def _save(self, data: dict[str, Any]) -> None:
        self.record.write_text(json.dumps(data))

    def repair(self) -> None:
        """Undo a change left by an interrupted run."""
        if not self.record.exists():
            return
        data = json.loads(self.record.read_text())
        log(f"repairing interrupted change of {self.tree.name}: {data['kind']}")
        if data["kind"] == "rename":
            self.rename_restore(data)
        elif data["kind"] == "delete":
            self.delete_restore(data)

    # rename: c and e alternate a -> b and b -> a, one rename per round
    def rename_toggle(self, rel: str) -> str:
        """Rename `rel` <-> `rel`-renamed in the source; returns 'forward' or 'back'."""
        src = self.tree / "src"
        a = src / rel
        b = src / f"{rel}-renamed"
        if self.record.exists():
            data = json.loads(self.record.read_text())
        else:
            data = {"kind": "rename", "a": str(a), "b": str(b), "mtimes": _mtimes([a.parent])}
            self._save(data)
        if a.exists():
            a.rename(b)
            return "forward"
        b.rename(a)
        return "back"

    def rename_restore(self, data: dict[str, Any] | None = None) -> None:
        if data is None:
            if not self.record.exists():
                return
            data = json.loads(self.record.read_text())
        a, b = Path(data["a"]), Path(data["b"])
        if b.exists() and not a.exists():
            b.rename(a)
        _restore_mtimes(data["mtimes"])
        self.record.unlink()

    # delete: move files aside (same filesystem: rename keeps inode and mtime), then back
    def delete_files(self, rels: Sequence[str], aside: Path) -> None:
        src = self.tree / "src"
        paths = [src / r for r in rels]
        data = {
            "kind": "delete",
            "aside": str(aside),
            "files": [str(p) for p in paths],
            "mtimes": _mtimes(sorted({p.parent for p in paths})),
        }
        self._save(data)
        aside.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(paths):
            p.rename(aside / str(i))

    def delete_restore(self, data: dict[str, Any] | None = None) -> None:
        if data is None:
            if not self.record.exists():
                return
            data = json.loads(self.record.read_text())
        aside = Path(data["aside"])
        for i, p in enumerate(data["files"]):
            moved = aside / str(i)
            if moved.exists():
                moved.rename(p)
        _restore_mtimes(data["mtimes"])
        shutil.rmtree(aside, ignore_errors=True)
        self.record.unlink()


# --------------------------------------------------------------------------- comparison


def warm(root: Path) -> int:
    """Read every file under ``root`` whole (untimed): each command of an initial copy
    then starts with the source in the page cache. Without it the first command of a
    round read whatever of the source another process's I/O (a big tree's benchmark
    beside this one) had evicted since the last round, and the next ones did not: the
    tool run first was billed for the disk reads (``bench/HISTORY.md``, "A fair initial
    copy"). The bytes read."""
    total = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    fd = os.open(e.path, os.O_RDONLY | os.O_NOATIME)
                    try:
                        while chunk := os.read(fd, MIB):
                            total += len(chunk)
                    finally:
                        os.close(fd)
    return total


def _disk_counters(path: Path) -> tuple[int, int, int] | None:
    """In-flight requests, discards completed and sectors written of the block device
    holding ``path`` (``/sys/dev/block/MAJ:MIN/stat``, a partition's or the disk's),
    None where it cannot be read."""
    dev = os.stat(path).st_dev
    try:
        fields = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat").read_text().split()
    except OSError:
        return None
    discards = int(fields[11]) if len(fields) > 11 else 0
    return int(fields[8]), discards, int(fields[6])


RECENTLY_DELETED = 305.0
"""Seconds after a delete within which ext4 without a journal does not reuse the freed
inode while its inode table block is dirty (``RECENTCY_DIRTY``, 300 s; 60 s when it is
clean, ``RECENTCY_MIN``), and a create scans past every such inode of its block group
to find one it may use: in ``open(O_CREAT)``, ``find_inode_bit`` -> ``recently_deleted``.
On this project's machine (a root filesystem without a journal) a create cost 330-680
us of kernel CPU within that window after 100,000 deletes, 14 us once it had passed
(bench/HISTORY.md, "The filesystem's recently deleted inodes"): a copy timed after the
previous round's deletes measured the kernel's scan, not the tool."""


def unjournaled_ext4(path: Path) -> bool:
    """Whether ``path`` is on an ext4 filesystem without a journal (its options in
    ``/proc/fs/ext4/DEV/options`` name no ``data=`` mode: only a journal has one)."""
    dev = os.stat(path).st_dev
    try:
        name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
        options = Path(f"/proc/fs/ext4/{name}/options").read_text().split()
    except OSError:
        return False
    return not any(o.startswith("data=") for o in options)


def deletes_window(path: Path, choice: float | None) -> float:
    """The seconds to wait after deleting trees in ``path`` before a timed copy into it:
    ``choice`` when given, else ``RECENTLY_DELETED`` on an ext4 without a journal (see
    there), else 0."""
    if choice is not None:
        return choice
    return RECENTLY_DELETED if unjournaled_ext4(path) else 0.0


_DELETED: list[float] = []
"""When this process last deleted a tree (``delete_tree``), ``time.monotonic()``."""


def delete_tree(path: Path) -> None:
    """``shutil.rmtree``, noting when (for ``wait_deletes``) if there was a tree."""
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        _DELETED[:] = [time.monotonic()]


def wait_deletes(window: float) -> float:
    """Flush, then sleep until ``window`` seconds have passed since this process last
    deleted a tree (none: no sleep); the seconds slept."""
    os.sync()
    left = _DELETED[0] + window - time.monotonic() if _DELETED else 0.0
    if left > 0:
        time.sleep(left)
    return max(left, 0.0)


def settle(path: Path, quiet: float = 0.3, limit: float = 10.0) -> float:
    """Flush everything (twice: the second commits the journal of the first, and ext4
    mounted ``discard`` issues the freed blocks' discards at commit), then wait until the
    device of ``path`` has issued no new discard for ``quiet`` seconds, or ``limit``
    seconds have passed (another process may be deleting too). Other writers are not
    waited for: the flush before each command (``Tool.sync``) bills nobody for them.
    The seconds waited."""
    t = time.perf_counter()
    os.sync()
    os.sync()
    last = _disk_counters(path)
    if last is None:
        return time.perf_counter() - t
    calm = time.perf_counter()
    while time.perf_counter() - t < limit:
        time.sleep(0.05)
        now = _disk_counters(path)
        if now is None or now[1] != last[1]:
            calm = time.perf_counter()
        elif time.perf_counter() - calm >= quiet:
            break
        last = now
    return time.perf_counter() - t


def snapshot(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """relative path -> (kind, size, mode bits, mtime_ns) for everything under root."""
    out: dict[str, tuple[str, int, int, int]] = {}
    stack = [(str(root), "")]
    while stack:
        path, prefix = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                rel = prefix + e.name
                if e.is_dir(follow_symlinks=False):
                    out[rel] = ("dir", 0, st.st_mode & 0o7777, st.st_mtime_ns)
                    stack.append((e.path, rel + "/"))
                elif e.is_symlink():
                    out[rel] = ("symlink", 0, 0, 0)
                elif e.is_file(follow_symlinks=False):
                    out[rel] = ("file", st.st_size, st.st_mode & 0o7777, st.st_mtime_ns)
                else:
                    out[rel] = ("special", 0, 0, 0)
    return out


@dataclass
class Comparison:
    hard: list[str] = field(default_factory=list)  # missing/extra keys, file payload, modes
    dir_mtimes: int = 0  # directories whose mtime differs (reported, not fatal)
    soft: list[str] = field(default_factory=list)  # examples of those
    root_meta: bool = False  # the destination root's own mode/mtime differ (not fatal)

    @property
    def equal(self) -> bool:
        return not self.hard


def root_meta(root: Path) -> tuple[int, int]:
    st = root.stat()
    return st.st_mode & 0o7777, st.st_mtime_ns


def compare(
    src: dict[str, tuple[str, int, int, int]], dst: Path, src_root: tuple[int, int]
) -> Comparison:
    """Compare a source snapshot with a destination on disk (metadata only)."""
    result = Comparison()
    if not dst.is_dir():
        result.hard.append(f"{dst} missing")
        return result
    result.root_meta = root_meta(dst) != src_root
    other = snapshot(dst)
    for rel in src.keys() - other.keys():
        result.hard.append(f"missing {rel}")
    for rel in other.keys() - src.keys():
        result.hard.append(f"extra {rel}")
    for rel, a in src.items():
        b = other.get(rel)
        if b is None or a == b:
            continue
        if a[0] == "dir" and b[0] == "dir" and a[2] == b[2]:
            result.dir_mtimes += 1
            if len(result.soft) < 5:
                result.soft.append(f"dir mtime {rel}: {a[3]} vs {b[3]}")
        else:
            result.hard.append(f"differs {rel}: {a} vs {b}")
    return result


# --------------------------------------------------------------------------- running tools


@dataclass
class Run:
    tool: str
    scenario: str
    round: int
    timed: bool
    seconds: float
    maxrss_kib: int | None
    returncode: int
    outer_seconds: float | None = None
    bytes_copied: int | None = None
    counts: dict[str, Any] | None = None
    tool_elapsed: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""
    verified: bool | None = None
    verify_problems: list[str] = field(default_factory=list)
    dir_mtime_mismatches: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# Why a launcher: a child's ru_maxrss starts from its parent's RSS high-water mark (the
# forked or vforked child shares or copies the parent's memory until exec, and the kernel
# keeps that peak across exec). Spawned straight from this process, /bin/true "uses"
# as much memory as the benchmark's own snapshots. So a small, fresh interpreter (-S -I:
# no site, nothing imported) spawns the tool, times it with perf_counter around
# posix_spawn + os.wait4, and writes "seconds maxrss_kib exitcode" to a file. Its own RSS
# (about 8 MiB) is the floor of what can be measured; bench measures it at start.
_LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
t1 = time.perf_counter()
with open(sys.argv[1], "w") as f:
    code = os.waitstatus_to_exitcode(status)
    f.write(f"{t1 - t0!r} {usage.ru_maxrss} {code} {usage.ru_utime + usage.ru_stime!r}\\n")
"""
_PHYS_KIB = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Process:
    seconds: float  # wall time of the tool's process, from spawn to reaped
    outer_seconds: float  # the same around the launcher (adds interpreter start-up)
    maxrss_kib: int | None  # peak RSS of the tool and the descendants it waited for
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float | None = None  # user + system time of the tool and its children


def run_process(argv: Sequence[str], logdir: Path, timeout: float | None = None) -> Process:
    """Run argv (argv[0] an absolute path) through the launcher; output goes to files.

    The launcher leads its own process group, so a timeout kills it and the tool together.
    """
    out_path, err_path = logdir / "stdout.txt", logdir / "stderr.txt"
    res_path = logdir / "launcher.txt"
    res_path.unlink(missing_ok=True)
    launcher = [sys.executable, "-S", "-I", "-c", _LAUNCHER, str(res_path), *argv]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            launcher, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        timer = None
        killed = threading.Event()
        if timeout:
            timer = threading.Timer(timeout, _kill_group, (proc.pid, killed))
            timer.start()
        try:
            _, status, _usage = os.wait4(proc.pid, 0)  # the launcher's rusage, not the tool's
        finally:
            if timer:
                timer.cancel()
        outer = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen from waiting
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    if killed.is_set():
        stderr += f"\n[bench] killed after {timeout} s (--timeout)"
    try:
        secs, rss, rc, cpu = res_path.read_text().split()
    except (OSError, ValueError):  # the launcher itself failed (e.g. no such executable)
        return Process(outer, outer, None, proc.returncode or 127, stdout, stderr)
    maxrss: int | None = int(rss)
    if maxrss is not None and maxrss > _PHYS_KIB:  # seen once here: a bogus 139 GB peak
        maxrss = None
    return Process(float(secs), outer, maxrss, int(rc), stdout, stderr, float(cpu))


def _kill_group(pgid: int, killed: threading.Event) -> None:
    killed.set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def rss_floor(logdir: Path) -> int | None:
    """Peak RSS the launcher reports for /bin/true: smaller values cannot be measured."""
    true = shutil.which("true")
    if not true:
        return None
    seen = [run_process([true], logdir).maxrss_kib for _ in range(3)]
    known = [x for x in seen if x is not None]
    return min(known) if known else None


class Tool:
    name = ""

    def __init__(self, exe: str, logdir: Path, timeout: float | None) -> None:
        self.timeout = timeout
        found = shutil.which(exe)
        if not found:
            raise SystemExit(f"{self.name} executable not found: {exe}")
        self.exe = str(Path(found).absolute())  # posix_spawn does not search PATH
        self.logdir = logdir

    def argv(self, src: Path, dst: Path, state: Path) -> list[str]:
        raise NotImplementedError

    def parse(self, run: Run, stdout: str) -> None:
        raise NotImplementedError

    def sync(self, src: Path, dst: Path, state: Path, scenario: str, rnd: int, timed: bool) -> Run:
        argv = self.argv(src, dst, state)
        os.sync()  # do not bill this command for the previous one's dirty pages
        proc = run_process(argv, self.logdir, self.timeout)
        run = Run(
            self.name,
            scenario,
            rnd,
            timed,
            round(proc.seconds, 4),
            proc.maxrss_kib,
            proc.returncode,
        )
        run.outer_seconds = round(proc.outer_seconds, 4)
        run.stderr_tail = proc.stderr[-2000:]
        try:
            self.parse(run, proc.stdout)
        except Exception as exc:  # a report we cannot read is data, not a crash
            run.extra["parse_error"] = repr(exc)
        if proc.returncode != 0:
            log(
                f"  ! {self.name} exit {proc.returncode}: {' '.join(argv)}\n"
                f"    stderr: {proc.stderr.strip()[-800:]}"
            )
        return run


class Rsync(Tool):
    name = "rsync"

    def argv(self, src: Path, dst: Path, state: Path) -> list[str]:
        return [self.exe, "-a", "--delete", "--stats", f"{src}/", f"{dst}/"]

    def parse(self, run: Run, stdout: str) -> None:
        def number(label: str) -> int | None:
            m = re.search(rf"^{re.escape(label)}: ([\d,.]+)", stdout, re.MULTILINE)
            return int(re.sub(r"[,.]", "", m.group(1))) if m else None

        literal = number("Literal data")
        run.bytes_copied = literal
        run.extra["total_transferred_file_size"] = number("Total transferred file size")
        run.extra["files_transferred"] = number("Number of regular files transferred")
        run.extra["deleted"] = number("Number of deleted files")


class RsyncSync(Rsync):
    """``rsync -a`` then ``sync -f DST`` (syncfs of the destination's filesystem, as hsync
    does once per batch), timed as one command: the fair peer of an initial copy."""

    name = "rsync+sync"
    script = 'for dst; do :; done; "$@" && sync -f "$dst"'

    def argv(self, src: Path, dst: Path, state: Path) -> list[str]:
        rsync = super().argv(src, dst, state)
        return ["/bin/sh", "-c", self.script, "sh", *rsync]


class Hsync(Tool):
    name = "hsync"

    def argv(self, src: Path, dst: Path, state: Path) -> list[str]:
        return [
            self.exe,
            "sync",
            str(src),
            str(dst),
            "--json",
            "--no-progress",
            "--state",
            str(state),
        ]

    def parse(self, run: Run, stdout: str) -> None:
        report = _last_json_object(stdout)
        if report is None:
            run.extra["stdout_head"] = stdout[:500]
            return
        bc = report.get("bytes_copied")
        run.bytes_copied = bc if isinstance(bc, int) else None
        counts = report.get("counts")
        run.counts = counts if isinstance(counts, dict) else None
        el = report.get("elapsed")
        run.tool_elapsed = float(el) if isinstance(el, int | float) else None
        errors = report.get("errors")
        if errors:
            run.extra["errors"] = errors if len(str(errors)) < 2000 else str(errors)[:2000]


def _last_json_object(text: str) -> dict[str, Any] | None:
    """The report: the whole stdout as JSON, else the last line that is a JSON object."""
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# --------------------------------------------------------------------------- scenarios


@dataclass
class SourceState:
    snap: dict[str, tuple[str, int, int, int]]
    root: tuple[int, int]

    @classmethod
    def of(cls, src: Path) -> SourceState:
        return cls(snapshot(src), root_meta(src))


@dataclass
class Pair:
    """One source tree and, per tool, a destination and a state file."""

    src: Path
    dst: dict[str, Path]
    state: dict[str, Path]


class Bench:
    def __init__(
        self, args: argparse.Namespace, tools: list[Tool], work: Path, extra: list[Tool]
    ) -> None:
        self.args = args
        self.tools = tools
        self.extra = extra  # tools of scenarios a and d only (rsync+sync)
        self.work = work
        self.runs: list[Run] = []
        self.warnings: list[str] = []
        self.settles: list[tuple[float, float]] = []  # scenario a: (deleted, settled) s

    def pair(self, label: str, tree: Path) -> Pair:
        # one destination per tree size: with --keep and several sizes, each size keeps
        # its own (a shared one made the second size start from the first one's tree)
        run = self.work / "run"
        name = f"{label}-f{self.args.files}"
        return Pair(
            src=tree / "src",
            dst={t.name: run / f"dst-{name}-{t.name}" for t in self.tools + self.extra},
            state={
                t.name: run / f"state-{name}-{t.name}" / "hsync.sqlite"
                for t in self.tools + self.extra
            },
        )

    def verify(self, pair: Pair, tool: Tool, source: SourceState, run: Run) -> bool:
        cmp = compare(source.snap, pair.dst[tool.name], source.root)
        run.verified = cmp.equal
        run.verify_problems = cmp.hard[:10] + cmp.soft
        run.dir_mtime_mismatches = cmp.dir_mtimes
        if not cmp.equal:
            msg = f"{tool.name}: destination differs from source ({len(cmp.hard)} problems)"
            log(f"  ! {msg}: {cmp.hard[:5]}")
        if cmp.dir_mtimes and cmp.equal and run.ok:  # noise after a failed run
            self.warn(
                f"{tool.name}: directory mtimes differ from the source after a sync "
                f"(first seen: {cmp.dir_mtimes} dirs, scenario {run.scenario}, e.g. {cmp.soft[0]})"
            )
        if cmp.root_meta and cmp.equal and run.ok:
            self.warn(f"{tool.name}: destination root mode/mtime differ from the source root")
        return cmp.equal

    def warn(self, msg: str) -> None:
        """Record a warning once (messages are compared up to their parenthesis)."""
        key = msg.split(" (", 1)[0]
        if all(w.split(" (", 1)[0] != key for w in self.warnings):
            self.warnings.append(msg)
            log(f"  warning: {msg}")

    def ensure_synced(self, pair: Pair, scenario: str, rnd: int, warmup: bool,
                      tools: list[Tool] | None = None) -> None:
        """Make the destinations equal to the source (untimed syncs where needed)."""
        source = SourceState.of(pair.src)
        for tool in tools or self.tools:
            state = pair.state[tool.name]
            if tool.name == "hsync":
                state.parent.mkdir(parents=True, exist_ok=True)
            cmp = compare(source.snap, pair.dst[tool.name], source.root)
            # Directory mtimes count here: a timed round starts from an equal destination.
            need = warmup or not cmp.equal or cmp.dir_mtimes > 0 or cmp.root_meta
            if tool.name == "hsync" and not state.exists():
                need = True  # build the history the timed rounds rely on
            if not need:
                continue
            run = tool.sync(pair.src, pair.dst[tool.name], state, scenario, rnd, timed=False)
            self.verify(pair, tool, source, run)
            self.runs.append(run)
            log(f"  [{scenario}] untimed {tool.name}: {run.seconds:.2f} s")

    def timed_round(
        self,
        pair: Pair,
        scenario: str,
        rnd: int,
        tools: list[Tool] | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        """One timed command per tool, the order rotated every round (each tool goes
        first, second, ... as often as the others over as many rounds as there are
        tools: in scenario a the command that runs first after the previous round's
        destinations were deleted is the slowest, whichever it is); ``before()`` runs
        (untimed) before each of them."""
        tools = tools or self.tools
        k = rnd % len(tools)
        order = tools[k:] + tools[:k]
        source = SourceState.of(pair.src)
        parts = []
        for tool in order:
            state = pair.state[tool.name]
            if tool.name == "hsync":
                state.parent.mkdir(parents=True, exist_ok=True)
            if before is not None:
                before()
            run = tool.sync(pair.src, pair.dst[tool.name], state, scenario, rnd, timed=True)
            self.verify(pair, tool, source, run)
            self.runs.append(run)
            bc = "n/a" if run.bytes_copied is None else f"{run.bytes_copied:,}"
            flag = "" if run.ok and run.verified else " FAILED"
            ops = ",".join(f"{k}={v}" for k, v in (run.counts or {}).items() if v)
            if ops:
                flag += f" {ops}"
            parts.append(
                f"{tool.name} {run.seconds:.3f} s, {_fmt_rss(run.maxrss_kib)}, {bc} B{flag}"
            )
        log(f"  [{scenario}] round {rnd + 1}/{self.args.rounds}: " + " | ".join(parts))

    # a
    def scenario_a(self, pair: Pair) -> None:
        # Each round starts from nothing of the previous one: its destinations are deleted
        # and the filesystem flushed and settled (untimed) before the first command, so a
        # timed command pays only for its own writes. A trash kept to the end (as before)
        # was flushed inside later timed commands (``syncfs``/``sync -f`` flush the whole
        # filesystem, and the deletes' journal and discards went with it) and made the disk
        # use grow with the rounds; now at most one destination per tool exists. On an
        # ext4 without a journal the deleted inodes are waited out too (``RECENTLY_DELETED``:
        # until then each create of the next round scans past them).
        tools = self.tools + self.extra
        for rnd in range(self.args.rounds):
            t = time.perf_counter()
            for tool in tools:
                dst, state_dir = pair.dst[tool.name], pair.state[tool.name].parent
                delete_tree(dst)
                delete_tree(state_dir)
                if tool.name == "hsync":
                    state_dir.mkdir(parents=True)
            deleted = time.perf_counter() - t
            window = deletes_window(self.work, self.args.after_deletes)
            slept = wait_deletes(window)
            waited = settle(self.work)
            log(f"  [a] round {rnd + 1}: old destinations deleted in {deleted:.2f} s, "
                f"{slept:.0f} s waited for their inodes to be reusable, "
                f"the disk settled in {waited:.2f} s")
            self.settles.append((round(deleted, 3), round(waited, 3)))
            self.timed_round(pair, "a", rnd, tools, before=lambda: warm(pair.src))
        # the last round's copies (and hsync's history of them) stay: they are what the
        # next scenarios start from (deleting a destination whose history stays makes
        # hsync refuse it as gone, as it should)

    # b
    def scenario_b(self, pair: Pair) -> None:
        self.ensure_synced(pair, "b", -1, warmup=True)
        for rnd in range(self.args.rounds):
            self.ensure_synced(pair, "b", rnd, warmup=False)
            self.timed_round(pair, "b", rnd)

    # c and e
    def scenario_rename(self, pair: Pair, tree: Path, bulk: str, scenario: str) -> None:
        mutation = Mutation(tree)
        self.ensure_synced(pair, scenario, -1, warmup=True)
        try:
            for rnd in range(self.args.rounds):
                self.ensure_synced(pair, scenario, rnd, warmup=False)
                mutation.rename_toggle(bulk)  # alternately forward and back
                self.timed_round(pair, scenario, rnd)
        finally:
            mutation.rename_restore()

    # d
    def scenario_d(self, pair: Pair, tree: Path, victims: list[str]) -> None:
        # rsync+sync beside plain rsync, for information: hsync's deletes are durable
        # when it exits (one syncfs), rsync's are not; the target is against plain rsync
        tools = self.tools + self.extra
        mutation = Mutation(tree)
        aside = self.work / "aside"
        self.ensure_synced(pair, "d", -1, warmup=True, tools=tools)
        try:
            for rnd in range(self.args.rounds):
                self.ensure_synced(pair, "d", rnd, warmup=False, tools=tools)
                mutation.delete_files(victims, aside)
                self.timed_round(pair, "d", rnd, tools)
                mutation.delete_restore()
        finally:
            mutation.delete_restore()

    # s
    def scenario_s(self, hsync: Tool | None, rsync: Tool | None) -> dict[str, Any]:
        """Start-up alone, interleaved: each command once per round, medians."""
        small = self.work / "startup"
        shutil.rmtree(small, ignore_errors=True)
        (small / "src" / "d").mkdir(parents=True)
        for i in range(10):
            (small / "src" / "d" / f"f{i}").write_text(f"{i}\n")
        cmds: dict[str, list[str]] = {}
        if hsync is not None:
            first = Path(hsync.exe).read_bytes()[:200].split(b"\n")[0]
            python = first[2:].decode().strip() if first.startswith(b"#!") else sys.executable
            cmds["python -c pass"] = [python, "-c", "pass"]
            cmds["hsync --version"] = [hsync.exe, "--version"]
            state = small / "state" / "hsync.sqlite"
            state.parent.mkdir()
            # as a user types it (its one line of text), then as this benchmark runs it
            argv = hsync.argv(small / "src", small / "dh", state)
            cmds["hsync sync (10 files, no-op)"] = [a for a in argv if a != "--json"]
            cmds["hsync sync --json (10 files, no-op)"] = argv
        if rsync is not None:
            cmds["rsync (10 files, no-op)"] = rsync.argv(small / "src", small / "dr", small)
        for argv in cmds.values():  # the first copy, untimed
            run_process(argv, self.work / "logs")
        times: dict[str, list[float]] = {k: [] for k in cmds}
        cpu: dict[str, list[float]] = {k: [] for k in cmds}
        rss: dict[str, int] = {}
        for rnd in range(self.args.startup_rounds):
            items = list(cmds.items())
            for name, argv in items if rnd % 2 == 0 else reversed(items):
                proc = run_process(argv, self.work / "logs")
                if proc.returncode != 0:
                    raise SystemExit(f"start-up: {' '.join(argv)}: exit {proc.returncode}")
                times[name].append(proc.seconds)
                if proc.cpu_seconds is not None:
                    cpu[name].append(proc.cpu_seconds)
                rss[name] = max(rss.get(name, 0), proc.maxrss_kib or 0)
        base = _median(times.get("python -c pass", []))
        cpu_base = _median(cpu.get("python -c pass", []))
        out = {
            name: {
                "median_seconds": _median(ts),
                "ratio_to_python": (_median(ts) or 0) / base if base else None,
                "median_cpu_seconds": _median(cpu[name]),
                "cpu_ratio_to_python": (_median(cpu[name]) or 0) / cpu_base if cpu_base else None,
                "max_rss_kib": rss.get(name),
            }
            for name, ts in times.items()
        }
        log(
            "  [s] " + ", ".join(f"{k} {v['median_seconds'] * 1000:.1f} ms" for k, v in out.items())
        )
        shutil.rmtree(small, ignore_errors=True)
        return out


# --------------------------------------------------------------------------- report


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _size_label(n: int) -> str:
    for unit, size in (("MiB", MIB), ("KiB", KIB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} B"


def summarize(bench: Bench, scenarios: str, fmt: dict[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for sc in scenarios:
        if sc == "s":
            continue
        timed = [r for r in bench.runs if r.scenario == sc and r.timed]
        entry: dict[str, Any] = {
            "description": DESCRIPTIONS[sc].format(**fmt),
            "target_ratio_max": TARGETS[sc],
        }
        by_round: dict[int, dict[str, Run]] = {}
        for r in timed:
            by_round.setdefault(r.round, {})[r.tool] = r
        for tool in TOOLS:
            good = [r for r in timed if r.tool == tool and r.ok and r.verified]
            mine = [r for r in timed if r.tool == tool]
            copied = [r.bytes_copied for r in good if r.bytes_copied is not None]
            entry[tool] = {
                "rounds_ok": len(good),
                "rounds_failed": len(mine) - len(good),
                "median_seconds": _median([r.seconds for r in good]),
                "seconds": [r.seconds for r in mine],
                "median_bytes_copied": _median(copied),
                "max_bytes_copied": max(copied) if copied else None,
                "bytes_copied_known": len(copied) == len(good) and bool(good),
                "max_rss_kib": max(
                    (r.maxrss_kib for r in mine if r.maxrss_kib is not None), default=None
                ),
                # hsync's own "elapsed" (its work without interpreter start-up)
                "median_tool_elapsed": _median(
                    [r.tool_elapsed for r in good if r.tool_elapsed is not None]
                ),
            }

        def ratios_to(peer: str, by_round: dict[int, dict[str, Run]] = by_round) -> list[float]:
            return [
                rs["hsync"].seconds / rs[peer].seconds
                for rs in by_round.values()
                if all(t in rs and rs[t].ok and rs[t].verified for t in ("hsync", peer))
                and rs[peer].seconds > 0
            ]

        entry["peer"] = PEER.get(sc, "rsync")
        ratios = ratios_to(entry["peer"])
        entry["ratios"] = [round(x, 4) for x in ratios]
        entry["median_ratio"] = _median(ratios)
        # the spread of the rounds: a median of 3-5 rounds means little when they swing
        entry["ratio_range"] = [round(min(ratios), 4), round(max(ratios), 4)] if ratios else None
        if entry["peer"] != "rsync":
            entry["median_ratio_vs_rsync"] = _median(ratios_to("rsync"))
        elif any("rsync+sync" in rs for rs in by_round.values()):
            entry["median_ratio_vs_rsync_sync"] = _median(ratios_to("rsync+sync"))
        met: bool | None = None
        why = ""
        if entry["median_ratio"] is not None:
            met = entry["median_ratio"] <= TARGETS[sc]
            if sc == "c":
                h = entry["hsync"]
                if not h["bytes_copied_known"]:
                    met, why = False, "hsync bytes_copied unknown"
                elif h["max_bytes_copied"] != 0:
                    met, why = False, "hsync copied bytes"
            if entry["hsync"]["rounds_failed"] or entry[entry["peer"]]["rounds_failed"]:
                why = (why + "; " if why else "") + "some rounds failed"
        entry["target_met"] = met
        entry["target_note"] = why
        summary[sc] = entry
    return summary


def _fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _fmt_bytes(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 10 * MIB:
        return f"{x / MIB:,.1f} MiB"
    return f"{int(x):,} B"


def _fmt_rss(kib: int | None, floor: int | None = None) -> str:
    if kib is None:
        return "n/a"
    if floor is not None and kib <= floor * 1.05:
        return f"<= {kib / 1024:,.1f} MiB"  # at the launcher's floor: the tool used less
    return f"{kib / 1024:,.1f} MiB"


def markdown_table(summary: dict[str, Any], rss_floor_kib: int | None) -> str:
    head = (
        "| scenario | hsync s (median) | peer s (median) | hsync/peer (median of rounds) "
        "| hsync bytes copied | peer bytes copied | hsync peak RSS | peer peak RSS "
        "| target | met |"
    )
    lines = [head, "|" + " --- |" * 10]
    for sc, e in summary.items():
        h, r = e["hsync"], e[e["peer"]]
        target = f"<= {TARGETS[sc]}x"
        if sc == "c":
            target += ", 0 B by hsync"
        if sc == "e":
            target += " (>= 10x faster)"
        ratio = "n/a" if e["median_ratio"] is None else f"{e['median_ratio']:.3f}x"
        if e.get("ratio_range"):
            lo, hi = e["ratio_range"]
            ratio += f" [{lo:.2f}-{hi:.2f}]"
        if e["peer"] != "rsync":
            plain = e.get("median_ratio_vs_rsync")
            ratio += f" vs {e['peer']}" + ("" if plain is None else f" ({plain:.3f}x vs rsync)")
        elif e.get("median_ratio_vs_rsync_sync") is not None:
            ratio += f" ({e['median_ratio_vs_rsync_sync']:.3f}x vs rsync+sync)"
        met = {True: "met", False: "NOT met", None: "n/a"}[e["target_met"]]
        if e["target_note"]:
            met += f" ({e['target_note']})"
        cells = [
            f"{sc}: {e['description']}",
            _fmt_s(h["median_seconds"]),
            _fmt_s(r["median_seconds"]),
            ratio,
            _fmt_bytes(h["median_bytes_copied"]),
            _fmt_bytes(r["median_bytes_copied"]),
            _fmt_rss(h["max_rss_kib"], rss_floor_kib),
            _fmt_rss(r["max_rss_kib"], rss_floor_kib),
            target,
            met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rounds = max((len(e[t]["seconds"]) for e in summary.values() for t in TOOLS), default=0)
    if not summary:
        return ""
    floor = "n/a" if rss_floor_kib is None else f"{rss_floor_kib / 1024:.1f} MiB"
    lines += [
        "",
        f"Seconds: wall time of the whole process, median over {rounds} interleaved rounds "
        "(only rounds that exited 0 and left DST equal to SRC). Ratio: median of the "
        "per-round hsync/rsync ratios, [lowest-highest] of them. Bytes: hsync's "
        "bytes_copied, rsync's Literal data. "
        f"Peak RSS: max over rounds; '<=' marks values at the measuring floor ({floor}).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def ensure_rsync(exe: str) -> str:
    found = shutil.which(exe)
    if found:
        return found
    if exe != "rsync":
        raise SystemExit(f"rsync not found: {exe}")
    log("rsync missing: apt-get install -y rsync")
    if subprocess.run(["apt-get", "install", "-y", "rsync"], check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], check=False)
        subprocess.run(["apt-get", "install", "-y", "rsync"], check=True)
    found = shutil.which("rsync")
    if not found:
        raise SystemExit("rsync still not found after apt-get install")
    return found


def default_hsync() -> str | None:
    beside = Path(sys.executable).parent / "hsync"  # the venv's console script
    if beside.exists():
        return str(beside)
    return shutil.which("hsync")


def version_of(argv: list[str]) -> str:
    """First line of `argv`'s output, for the record; never fails."""
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        return f"unavailable: {exc}"
    try:
        text, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, threading.Event())
        proc.communicate()
        return f"unknown ({' '.join(argv)}: timed out)"
    text = text.strip()
    if proc.returncode != 0 or not text:
        return f"unknown ({' '.join(argv)}: exit {proc.returncode})"
    return text.splitlines()[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/hsync-bench"),
        help="generated trees, destinations, state files (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--dirs", type=int, default=5_000)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="files in the generated bulk directory, and the pool d picks its deletes "
        "from (default min(1000, files // 10))",
    )
    p.add_argument("--big-size", type=int, default=MIB, help="file size in e (bytes)")
    p.add_argument("--big-count", type=int, default=300, help="files renamed in e")
    p.add_argument(
        "--deletes", type=int, default=None, help="files deleted in d (default min(1000, 1%%))"
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="run everything per tree size, e.g. 5k,20k,100k (add 1m for a million files: "
        "long to build, 3 rounds); --files/--dirs are then files and files/20",
    )
    p.add_argument(
        "--startup-rounds", type=int, default=20, help="interleaved rounds of s (start-up)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of a,b,c,d,e"
    )
    p.add_argument(
        "--tools",
        default="hsync,rsync",
        help="comma-separated subset of hsync,rsync (one tool: no ratios)",
    )
    p.add_argument("--hsync", default=None, help="hsync executable (default: venv's, else PATH)")
    p.add_argument("--rsync", default="rsync", help="rsync executable")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default WORKDIR/results.json)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="kill a sync that runs longer (seconds, 0: never; default %(default)s)",
    )
    p.add_argument(
        "--after-deletes",
        type=float,
        default=None,
        help="seconds to wait after a round's old destinations are deleted, before its "
        "initial copies (a): default 305 on an ext4 without a journal, which does not "
        "reuse a deleted inode for up to 300 s and makes every create scan past them "
        "meanwhile; else 0",
    )
    p.add_argument("--regen", action="store_true", help="regenerate the cached trees")
    p.add_argument("--keep", action="store_true", help="keep destinations after the run")
    args = p.parse_args(argv)
    return args


def _parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise SystemExit(f"--sizes: not a size: {text!r} (e.g. 5k,20k,100k,1m)") from None


def tenth_dir(tree: Path, manifest: dict[str, Any]) -> tuple[str, int]:
    """The directory whose subtree holds the number of files closest to 10% of the tree
    (found once, then kept in the manifest)."""
    if "tenth_dir" in manifest:
        return manifest["tenth_dir"], manifest["tenth_files"]
    src = tree / "src"
    counts: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        parts = [] if rel == "." else rel.split(os.sep)
        for n in range(1, len(parts) + 1):
            key = "/".join(parts[:n])
            counts[key] = counts.get(key, 0) + len(files)
    want = manifest["files"] / 10
    best = min(counts, key=lambda k: (abs(counts[k] - want), k))
    manifest["tenth_dir"], manifest["tenth_files"] = best, counts[best]
    (tree / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return best, counts[best]


def with_big_dir(trees: Path, key: str, main_tree: Path, args: argparse.Namespace) -> Path:
    """A copy of the main tree with `data-e/big` of --big-count files of --big-size added
    (cached like the trees): scenario e renames that directory."""

    def make(root: Path) -> BigManifest:
        t0 = time.perf_counter()
        subprocess.run(["cp", "-a", str(main_tree / "src"), str(root)], check=True)
        big = generate_big(root / "data-e", args.big_count, args.big_size, args.seed)
        return BigManifest(
            files=big.files,
            total_bytes=big.total_bytes,
            bulk_dir=f"data-e/{big.bulk_dir}",
            seconds=round(time.perf_counter() - t0, 3),
        )

    tree, _ = cached_tree(trees, key, make, args.regen)
    return tree


def make_tools(args: argparse.Namespace, work: Path) -> tuple[list[Tool], list[Tool]]:
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not names or set(names) - {"hsync", "rsync"}:
        raise SystemExit("--tools: choose from hsync,rsync")
    tools: list[Tool] = []
    extra: list[Tool] = []
    for name in ("hsync", "rsync"):  # round 0 runs hsync first, round 1 rsync first, ...
        if name not in names:
            continue
        if name == "rsync":
            rsync = ensure_rsync(args.rsync)
            tools.append(Rsync(rsync, work / "logs", args.timeout))
            extra.append(RsyncSync(rsync, work / "logs", args.timeout))
        else:
            exe = args.hsync or default_hsync()
            if not exe:
                raise SystemExit("hsync executable not found (use --hsync or --tools rsync)")
            tools.append(Hsync(exe, work / "logs", args.timeout))
    return tools, extra


def run_size(
    args: argparse.Namespace, scenarios: str, work: Path, tools: list[Tool], extra: list[Tool]
) -> dict[str, Any]:
    """All the scenarios on the tree of ``args.files`` files; the results as a dict."""
    batch = args.batch if args.batch is not None else min(1000, max(1, args.files // 10))
    deletes = args.deletes if args.deletes is not None else min(1000, max(1, args.files // 100))
    deletes = min(deletes, batch)
    trees = work / "trees"
    tree_main = tree_big = None
    man_main: dict[str, Any] = {}
    fmt = {
        "batch": f"{batch:,}",
        "deletes": f"{deletes:,}",
        "big_count": f"{args.big_count:,}",
        "big": _size_label(args.big_size),
        "tenth": "n/a",
    }
    if set(scenarios) & set("abcde"):
        key = f"main-v{GEN_VERSION}-s{args.seed}-f{args.files}-d{args.dirs}-h{args.depth}-b{batch}"
        tree_main, man_main = cached_tree(
            trees,
            key,
            lambda root: generate_main(root, args.files, args.dirs, args.depth, batch, args.seed),
            args.regen,
        )
        Mutation(tree_main).repair()
        if "e" in scenarios:
            tree_big = with_big_dir(
                trees, f"{key}-e-n{args.big_count}-z{args.big_size}", tree_main, args
            )
            Mutation(tree_big).repair()
    tenth = ("", 0)
    if "c" in scenarios and tree_main is not None:
        tenth = tenth_dir(tree_main, man_main)
        fmt["tenth"] = f"{tenth[1]:,}"

    bench = Bench(args, tools, work, extra)
    started = time.time()
    startup: dict[str, Any] = {}
    hsync_tool = next((t for t in tools if t.name == "hsync"), None)
    rsync_tool = next((t for t in tools if t.name == "rsync"), None)
    for sc in scenarios:
        log(f"scenario {sc} ({args.files:,} files): {DESCRIPTIONS[sc].format(**fmt)}")
        if sc == "s":
            startup = bench.scenario_s(hsync_tool, rsync_tool)
        elif sc in "abcd":
            assert tree_main is not None
            pair = bench.pair("main", tree_main)
            if sc == "a":
                bench.scenario_a(pair)
            elif sc == "b":
                bench.scenario_b(pair)
            elif sc == "c":
                bench.scenario_rename(pair, tree_main, tenth[0], "c")
            else:
                victims = man_main["delete_files"]
                step = max(1, len(victims) // deletes)
                bench.scenario_d(pair, tree_main, victims[::step][:deletes])
        else:
            assert tree_big is not None
            bulk = json.loads((tree_big / "manifest.json").read_text())["bulk_dir"]
            bench.scenario_rename(bench.pair("big", tree_big), tree_big, bulk, "e")

    summary = summarize(bench, scenarios, fmt)
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_seconds": round(time.time() - started, 1),
        "params": {
            "seed": args.seed,
            "files": args.files,
            "dirs": args.dirs,
            "depth": args.depth,
            "batch": batch,
            "deletes": deletes,
            "tenth_dir": tenth[0],
            "tenth_files": tenth[1],
            "big_count": args.big_count,
            "big_size": args.big_size,
            "rounds": args.rounds,
            "scenarios": scenarios,
            "workdir": str(work),
        },
        "trees": {"main": {k: v for k, v in man_main.items() if k != "delete_files"}},
        "summary": summary,
        "startup": startup,
        "warnings": bench.warnings,
        "settles": bench.settles,
        "runs": [asdict(r) for r in bench.runs],
    }


def startup_table(startup: dict[str, Any]) -> str:
    lines = [
        "| command | median | / python -c pass | CPU (user + sys) | / python -c pass | peak RSS |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in startup.items():
        ratio = "n/a" if e["ratio_to_python"] is None else f"{e['ratio_to_python']:.2f}x"
        cpu = e.get("median_cpu_seconds")
        cpu_ratio = e.get("cpu_ratio_to_python")
        lines.append(
            f"| {name} | {e['median_seconds'] * 1000:.1f} ms | {ratio} "
            f"| {'n/a' if cpu is None else f'{cpu * 1000:.1f} ms'} "
            f"| {'n/a' if cpu_ratio is None else f'{cpu_ratio:.2f}x'} "
            f"| {_fmt_rss(e['max_rss_kib'])} |"
        )
    return "\n".join(lines)


def sizes_table(results: list[dict[str, Any]]) -> str:
    """One row per tree size: the median hsync/peer ratio of each scenario."""
    cols = [
        ("b", "no-op"),
        ("c", "rename ~10%"),
        ("e", "rename 300 x 1 MiB"),
        ("d", "spread deletes"),
        ("a", "initial copy vs rsync -a; sync"),
    ]
    head = "| files | " + " | ".join(f"{label} ({TARGETS[sc]}x)" for sc, label in cols)
    head += " | initial copy vs rsync -a | hsync peak RSS | rsync peak RSS |"
    lines = [head, "|" + " --- |" * (len(cols) + 4)]
    for res in results:
        summary = res["summary"]
        cells = [f"{res['params']['files']:,}"]
        for sc, _label in cols:
            e = summary.get(sc)
            if e is None or e["median_ratio"] is None:
                cells.append("n/a")
                continue
            h, p = e["hsync"]["median_seconds"], e[e["peer"]]["median_seconds"]
            mark = "" if e["target_met"] else " (NOT met)"
            extra = f", {e['params_note']}" if e.get("params_note") else ""
            spread = ""
            if e.get("ratio_range"):
                spread = f", rounds {e['ratio_range'][0]:.2f}-{e['ratio_range'][1]:.2f}x"
            cells.append(
                f"**{e['median_ratio']:.2f}x**{mark} ({_fmt_s(h)} / {_fmt_s(p)} s{extra}{spread})"
            )
        a = summary.get("a")
        plain = None if a is None else a.get("median_ratio_vs_rsync")
        cells.append("n/a" if plain is None else f"{plain:.2f}x")
        for tool in ("hsync", "rsync"):
            peak = max(
                (e[tool]["max_rss_kib"] or 0 for e in summary.values() if tool in e), default=0
            )
            cells.append(_fmt_rss(peak or None))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = "".join(s.strip() for s in args.scenarios.split(",") if s.strip())
    if not scenarios or set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"--scenarios: choose from {','.join(SCENARIOS)}")
    scenarios = "".join(s for s in SCENARIOS if s in scenarios)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    work: Path = args.workdir.resolve()
    here = Path(__file__).resolve().parent.parent
    if work == here or here in work.parents:
        raise SystemExit(f"--workdir must be outside the repository ({here})")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "trash", ignore_errors=True)  # left by an older version's run
    out_path: Path = args.out or work / "results.json"
    tools, extra = make_tools(args, work)
    floor = rss_floor(work / "logs")
    env = {
        "rss_floor_kib": floor,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "repo_commit": version_of(["git", "-C", str(here), "describe", "--always", "--dirty"]),
        "versions": {t.name: version_of([t.exe, "--version"]) for t in tools},
        "commands": {
            t.name: " ".join(t.argv(Path("SRC"), Path("DST"), Path("STATE"))) for t in tools + extra
        },
    }

    sizes = [_parse_size(x) for x in args.sizes.split(",") if x.strip()] if args.sizes else []
    per_size: list[dict[str, Any]] = []
    if not sizes:
        per_size.append(run_size(args, scenarios, work, tools, extra))
    for i, files in enumerate(sizes):
        sized = argparse.Namespace(**vars(args))
        sized.files = files
        sized.dirs = max(2, files // 20)
        if files >= 1_000_000:
            sized.rounds = min(args.rounds, 3)
        # start-up does not depend on the tree: measured once
        todo = scenarios if i == 0 else scenarios.replace("s", "")
        per_size.append(run_size(sized, todo, work, tools, extra))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({"env": env, "sizes": per_size}, indent=1))
        if not args.keep:
            delete_tree(work / "run")

    out: list[str] = []
    for res in per_size:
        if len(per_size) > 1:
            out.append(f"\n### {res['params']['files']:,} files\n")
        table = markdown_table(res["summary"], floor)
        if table:
            out.append(table)
        internal = [
            f"{sc} {e['hsync']['median_tool_elapsed']:.3f} s"
            for sc, e in res["summary"].items()
            if e["hsync"]["median_tool_elapsed"] is not None
        ]
        if internal:
            out.append(
                "\nhsync's own 'elapsed' (median, from its JSON report): " + ", ".join(internal)
            )
        if res["warnings"]:
            out.append("\nwarnings:\n" + "\n".join(f"- {w}" for w in res["warnings"]))
    startup = next((r["startup"] for r in per_size if r["startup"]), None)
    if startup:
        out.append("\n### start-up alone\n\n" + startup_table(startup))
    if len(per_size) > 1:
        out.append("\n### per size: hsync / peer, median of the per-round ratios\n")
        out.append(sizes_table(per_size))
    results = {"env": env, "sizes": per_size, "table": "\n".join(out)}
    if len(per_size) == 1:
        results.update(per_size[0])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(work / "run", ignore_errors=True)
    print("\n".join(out))
    print(f"\nresults: {out_path}")
    failed = any(
        not (r["ok"] if "ok" in r else r["returncode"] == 0) or not r["verified"]
        for res in per_size
        for r in res["runs"]
        if r["timed"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
