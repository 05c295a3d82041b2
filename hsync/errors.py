"""Error classes: classified by type, never by message text.

``HsyncError`` is fatal for the run (exit 2: bad usage or bad input). Failures on one
node are not exceptions but ``Problem`` values in the report (exit 3).
"""

from __future__ import annotations


class HsyncError(Exception):
    """A fatal error: one clear line for the user, exit code ``exit_code``."""

    exit_code = 2


class UsageError(HsyncError):
    """Bad arguments: unknown scheme, SRC == DST, nested trees, ..."""


class SafetyError(HsyncError):
    """A run refused because it could lose data (empty source, missing source, ...)."""


class BackendError(HsyncError):
    """An endpoint that cannot be opened or read at all."""


class PlanError(HsyncError):
    """A plan broke an ordering rule (SPEC section 4): a bug, never a user error."""

    exit_code = 70


class Interrupted(Exception):
    """A scan or a round stopped on request (a stop signal, a restarted comparison)."""
