"""Errors, classified by type and never by message text, and the exit codes (SPEC 9).

Two halves, shared by every backend:

- **Fatal** errors are exceptions (``HsyncError`` and its subclasses): the run stops,
  one line names the path, host or DN and the cause, and the process exits 2.
- **Node-level** failures are values: a ``Problem(key, message, op=..., kind=...)`` in
  the run's report (``hsync.model``), and the rest goes on; the run exits 3. A backend
  signals one by raising a ``NodeError`` subclass from inside its apply loop, or by
  appending the ``Problem`` itself; ``problem_kind`` maps an exception to a kind.

Problem kinds, with the precedence a report uses (fatal > error > retry > skip): ``error``
(the op failed and will fail again until something changes), ``retry`` (transient: the
source changed while it was copied, a server was busy; retried within the run or by
the next one), ``skip`` (deliberately left alone: a node that appeared since the scan),
``cancelled`` (a stop or a restart came before the op ran; nothing was done to it).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Final, Literal

EXIT_OK: Final = 0
"""Success; for ``diff`` and ``verify``: the trees are in sync."""
EXIT_DIFFER: Final = 1
"""``diff``/``verify``: the trees differ."""
EXIT_USAGE: Final = 2
"""Bad usage or bad input; a fault of a whole endpoint; a refused (unsafe) run."""
EXIT_PARTIAL: Final = 3
"""Some nodes failed, the rest was synced."""
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C in a one-shot command (the shell's 128 + SIGINT); a watch or a daemon stopped
by SIGINT or SIGTERM finishes its batch and exits 0."""

if TYPE_CHECKING:
    ProblemKind = Literal["error", "retry", "skip", "cancelled"]
else:
    ProblemKind = str
ERROR: Final = "error"
RETRY: Final = "retry"
SKIP: Final = "skip"
CANCELLED: Final = "cancelled"


class HsyncError(Exception):
    """A fatal error: one clear line for the user, exit code ``exit_code``."""

    exit_code: int = EXIT_USAGE


class UsageError(HsyncError):
    """Bad arguments: unknown scheme, SRC == DST, nested trees, ..."""


class SafetyError(HsyncError):
    """A run refused because it could lose data (empty source, missing source, ...)."""


class BackendError(HsyncError):
    """An endpoint that cannot be opened or read at all."""


class LinkLost(BackendError):
    """The link to a remote endpoint broke after it was opened (SPEC 12): a run stops
    (its journal rolls forward next time); a watch reconnects with a growing delay."""


class DestinationFull(BackendError):
    """A fault of the whole destination (ENOSPC, EDQUOT, EROFS, its root not writable):
    the run stops (what is done stays done, the temporary file is removed); the next
    run after space is freed converges."""


class PlanError(HsyncError):
    """A plan broke an ordering rule (SPEC section 4): a bug, never a user error. Exit 2
    like every fatal error (SPEC 9 has no other code); the message says it is a bug."""


class Cancelled(Exception):
    """A scan, walk or round stopped on request (a stop signal, a restarted comparison):
    raised by ``Cancel.check``. Not an ``HsyncError``: the caller asked for it."""



class NodeError(Exception):
    """A failure on one node, raised inside a backend's apply and turned into a
    ``Problem`` of ``kind`` there (never out of ``apply_batch``)."""

    kind: ProblemKind = ERROR


class SourceChanged(NodeError):
    """The source node changed while it was read; the copy is not published."""

    kind: ProblemKind = RETRY


class TargetChanged(NodeError):
    """The destination does not hold what the plan expected (a node appeared, was
    replaced by a symlink, ...): the op is left alone."""

    kind: ProblemKind = SKIP


def problem_kind(e: BaseException) -> ProblemKind:
    """The kind of problem a node-level exception is (``error`` for any other)."""
    if isinstance(e, NodeError):
        return e.kind
    if isinstance(e, Cancelled):
        return CANCELLED
    return ERROR


def exit_code(e: BaseException) -> int:
    """The exit code for an exception that ends a command (one place: SPEC 9)."""
    if isinstance(e, HsyncError):
        return e.exit_code
    return EXIT_USAGE
