"""hsync: keep a destination tree equal to a changing source tree, hierarchy first.

The Python API mirrors the command line::

    import hsync
    report = hsync.sync("src/", "dst/", dry_run=False)   # -> Report
    plan = hsync.diff("src/", "dst/")                     # -> Plan
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
]


def sync(src: str, dst: str, **options: Any) -> Report:
    """Make ``dst`` equal to ``src`` once; options as the CLI's (``dry_run``, ``delete``,
    ``checksum``, ``exclude``, ``max_delete``, ``state``, ...)."""
    from .sync import sync_once

    for name in ("exclude", "exclude_attrs"):
        if name in options:
            options[name] = tuple(options[name])
    return sync_once(src, dst, Options(**options))


def diff(src: str, dst: str, **options: Any) -> Plan:
    """The plan that would make ``dst`` equal to ``src`` (nothing is changed)."""
    from .sync import compare

    for name in ("exclude", "exclude_attrs"):
        if name in options:
            options[name] = tuple(options[name])
    cmp = compare(src, dst, Options(dry_run=True, **options))
    try:
        return cmp.plan
    finally:
        cmp.close()
