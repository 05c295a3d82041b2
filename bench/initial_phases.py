#!/usr/bin/env python3
"""Where one ``hsync sync`` (an initial copy, say) spends its wall time: runs the command
in this process (the hsync installed for this interpreter) with timers around its phases,
and prints, per phase, the calls, the seconds summed and when the first began and the
last ended (seconds since this script started), on stderr at the end.

    VENV/bin/python bench/initial_phases.py sync SRC DST --state STATE --no-progress

Phases: the source's walk (streamed into the copy: the copy runs beside it), a batch's
``Batch.run`` (its copies, the directories' metadata, the flush started), the wait for
the copy workers after the walk (``barrier``), the directories' metadata (``settle``),
the flush (``syncfs``, on its own thread), the journal's calls, the history's record,
the fork and shutdown of the copy workers. ``INITIAL_PHASES_MAX_OPS=N`` caps a batch at
N ops (a local ``hsync sync`` takes up to 100,000 a batch, ``apply.ONE_SHOT``) to see
what the number of batches (of ``syncfs``) costs. Stdlib only; hsync ends with
``os._exit``, so the figures are printed there (like ``profile_run.py``)."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from typing import Any, NoReturn

T0 = time.perf_counter()
_acc: dict[str, list[float]] = {}  # name -> [calls, seconds, first start, last end]
_lock = threading.Lock()


def _note(name: str, start: float, end: float) -> None:
    with _lock:
        a = _acc.setdefault(name, [0, 0.0, start, end])
        a[0] += 1
        a[1] += end - start
        a[2] = min(a[2], start)
        a[3] = max(a[3], end)


def _wrap(obj: Any, attr: str, name: str) -> None:
    f = getattr(obj, attr)

    @functools.wraps(f)
    def timed(*a: Any, **k: Any) -> Any:
        s = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            _note(name, s, time.perf_counter())

    setattr(obj, attr, timed)


def _wrap_gen(obj: Any, attr: str, name: str) -> None:
    f = getattr(obj, attr)

    @functools.wraps(f)
    def timed(*a: Any, **k: Any) -> Any:
        s = time.perf_counter()
        yield from f(*a, **k)
        _note(name, s, time.perf_counter())

    setattr(obj, attr, timed)


def main() -> None:
    sys.argv = ["hsync", *sys.argv[1:]]
    import concurrent.futures.process as cfp

    from hsync import history, journal, populate
    from hsync._values import evolve
    from hsync.backends.fs import apply as fsapply
    from hsync.backends.fs import dirs as fsdirs

    imported = time.perf_counter()
    _wrap_gen(populate, "walk", "source walk (streamed into the copy)")
    _wrap(fsapply.Batch, "run", "Batch.run (copies, dirs, flush started)")
    _wrap(fsapply.Batch, "barrier", "wait for the copy workers (barrier)")
    _wrap(fsdirs.Touched, "settle", "directories' metadata (settle)")
    _wrap(fsapply, "syncfs", "flush: syncfs (own thread)")
    _wrap(cfp.ProcessPoolExecutor, "_launch_processes", "fork the copy workers")
    _wrap(cfp.ProcessPoolExecutor, "shutdown", "copy workers' shutdown")
    for m in ("begin", "extend", "sync", "done", "close"):
        _wrap(journal.Journal, m, f"journal.{m}")
    _wrap(history.History, "record", "history.record (beside the flush)")
    _wrap(history.History, "close", "history.close")
    cap = os.environ.get("INITIAL_PHASES_MAX_OPS")
    if cap:
        limits = populate.batching_for
        populate.batching_for = lambda session, b: evolve(  # type: ignore[assignment]
            limits(session, b), max_ops=int(cap))
    real_exit = os._exit
    me = os.getpid()

    def report(code: int) -> NoReturn:
        if os.getpid() != me:  # a copy worker ending
            real_exit(code)
        t = time.perf_counter()
        out = sys.stderr
        out.write(f"this script's start -> hsync imported: {imported - T0:.3f} s; "
                  f"the command ended at {t - T0:.3f} s\n")
        for name, (n, total, s, e) in sorted(_acc.items(), key=lambda kv: kv[1][2]):
            out.write(f"  {name:42s} calls {int(n):6d}  sum {total:7.3f} s  "
                      f"from {s - T0:7.3f} to {e - T0:7.3f}\n")
        out.flush()
        real_exit(code)

    os._exit = report  # type: ignore[assignment]
    from hsync.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
