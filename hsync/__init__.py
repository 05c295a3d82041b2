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

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: ``hsync --version`` does not import typing
if TYPE_CHECKING:
    from typing import Any

    from .api import diff, sync, verify, watch
    from .differ import diff as diff_snapshots
    from .errors import HsyncError
    from .model import Change, Key, Node, Op, Plan, Problem, Snapshot
    from .options import Options, Report
    from .planner import check_plan, plan

# Imported on first use (PEP 562): ``hsync --version`` and the command line import
# only what their command uses, not the whole API (start-up, issue 15).
_LAZY = {
    "diff": "api", "sync": "api", "verify": "api", "watch": "api",
    "diff_snapshots": "differ:diff", "HsyncError": "errors",
    "Change": "model", "Key": "model", "Node": "model", "Op": "model", "Plan": "model",
    "Problem": "model", "Snapshot": "model", "Options": "options", "Report": "options",
    "check_plan": "planner", "plan": "planner",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'hsync' has no attribute {name!r}")
    from importlib import import_module

    module, _, attr = where.partition(":")
    value = vars(import_module(f".{module}", __name__))[attr or name]
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

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
