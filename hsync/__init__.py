"""hsync: keep a destination tree equal to a changing source tree, hierarchy first.

The Python API mirrors the command line::

    import hsync
    report = hsync.sync("src/", "dst/", dry_run=False)   # -> Report
    plan = hsync.diff("src/", "dst/")                     # -> Plan
    hsync.watch("src/", "dst/", stop=event)               # until event.set()
    found = hsync.verify("src/", "dst/")                  # -> VerifyReport

The pure core is importable too: ``diff_snapshots`` (SPEC 3), ``plan`` and
``check_plan`` (SPEC 4). The backend contract is ``hsync.backend``.
"""

from __future__ import annotations

from .api import diff, sync, verify, watch
from .differ import diff as diff_snapshots
from .errors import HsyncError
from .model import Change, Key, Node, Op, Plan, Problem, Snapshot
from .options import Options, Report
from .planner import check_plan, plan

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
    "verify",
    "watch",
]
