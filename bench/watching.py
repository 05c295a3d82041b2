"""What the live benchmarks share: waiting for a renamed directory to show on each
destination, and stopping the watchers they started (each in its own process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def ino(path: Path) -> int | None:
    """The inode number of ``path``, None where it is not there (a renamed directory
    keeps its files' inodes; a copied one does not)."""
    try:
        return path.stat().st_ino
    except OSError:
        return None


def wait_renamed(paths: dict[str, tuple[Path, Path]], files: int, last: str, t0: float,
                 timeout: float) -> dict[str, float]:
    """The time each destination came to hold ``new`` with ``files`` entries (``last``
    among them) and no ``old`` (after ``t0``), polling all together."""
    got: dict[str, float] = {}
    deadline = t0 + timeout
    while len(got) < len(paths) and time.perf_counter() < deadline:
        for name, (old, new) in paths.items():
            if name in got or old.exists() or not (new / last).exists():
                continue
            with contextlib.suppress(OSError):
                if len(os.listdir(new)) == files:
                    got[name] = time.perf_counter() - t0
        time.sleep(0.001)
    return got


def stop(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each watcher's process group, SIGKILL after 15 s."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
