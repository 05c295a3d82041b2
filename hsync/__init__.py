"""hsync: keep a destination tree equal to a changing source tree, hierarchy first.

The Python API mirrors the command line::

    import hsync
    report = hsync.sync("src/", "dst/", dry_run=False)   # -> Report
    plan = hsync.diff("src/", "dst/")                     # -> Plan
    hsync.watch("src/", "dst/", stop=event)               # until event.set()
"""

from __future__ import annotations

from typing import Any

from .diff import diff as diff_snapshots
from .errors import HsyncError
from .model import Change, Key, Node, Op, Plan, Problem, Snapshot
from .plan import check_plan, plan
from .sync import Options, Report

__all__ = [
    "Change",
    "HsyncError",
    "Key",
    "Node",
    "Op",
    "Options",
    "Plan",
    "Problem",
    "Report",
    "Snapshot",
    "check_plan",
    "diff",
    "diff_snapshots",
    "plan",
    "sync",
    "watch",
]


def sync(src: str, dst: str, **options: Any) -> Report:
    """Make ``dst`` equal to ``src`` once; options as the CLI's (``dry_run``, ``delete``,
    ``checksum``, ``exclude``, ``max_delete``, ``state``, ...)."""
    from .sync import sync_once

    if "exclude" in options:
        options["exclude"] = tuple(options["exclude"])
    return sync_once(src, dst, Options(**options))


def diff(src: str, dst: str, **options: Any) -> Plan:
    """The plan that would make ``dst`` equal to ``src`` (nothing is changed)."""
    from .sync import compare

    if "exclude" in options:
        options["exclude"] = tuple(options["exclude"])
    cmp = compare(src, dst, Options(dry_run=True, **options))
    try:
        return cmp.plan
    finally:
        cmp.close()


def watch(src: str, dst: str, *, stop: Any = None, **options: Any) -> None:
    """Keep ``dst`` equal to ``src`` until ``stop`` (a ``threading.Event``) is set.

    Watch options (``debounce``, ``max_delay`` in seconds, ``rescan_interval``,
    ``poll_interval``, ``status_file``) beside the sync options."""
    import threading

    from .watch import PairWatch, StatusFile, WatchOptions

    wkeys = {"debounce", "max_delay", "rescan_interval", "poll_interval", "batch_ops"}
    wopts = WatchOptions(**{k: options.pop(k) for k in list(options) if k in wkeys})
    status = StatusFile(options.pop("status_file", None))
    if "exclude" in options:
        options["exclude"] = tuple(options["exclude"])
    pw = PairWatch(src, dst, Options(**options), wopts, status=status)
    stop = stop if stop is not None else threading.Event()
    t = threading.Thread(target=lambda: (stop.wait(), pw.stop()), daemon=True)
    t.start()
    pw.run()
