"""Remote endpoints over ssh (SPEC 12): ``ssh://[user@]host[:port]/path`` and rsync's
``[user@]host:path``.

The local process starts ``hsync agent`` on the far side through the system ``ssh``
client (``transport``), speaks framed msgpack messages with it (``protocol``), and
forwards the backend contract (``backend.RemoteBackend`` here, ``agent.Agent`` there).
This module holds only the small values the session needs before anything is
imported (how to reach the far side); the rest is imported when a remote endpoint
opens, so a local run does not pay for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

from .. import _values


@_values.frozen(kw_only=True)
class Reach:
    """How to reach a remote endpoint: the ``ssh`` command (``-e/--rsh``, split as a
    shell would; ``HSYNC_RSH`` in the environment is the default, then ``ssh``), the
    path of ``hsync`` on the far side (``--remote-hsync``), whether bulk data is
    compressed (``-z``, on by default), how many batches a push keeps in flight
    (``--window``; ``HSYNC_WINDOW``, else ``WINDOW``) and how many ops a batch to a
    far destination holds at most (``--batch-ops``; ``HSYNC_BATCH_OPS``, else
    ``BATCH_OPS``)."""

    rsh: str | None = None
    remote_hsync: str | None = None
    compress: bool = True
    window: int | None = None
    batch_ops: int | None = None

    def batches(self) -> tuple[int, int]:
        """(the window, the most ops a batch holds), from the options, else the
        environment, else the defaults."""
        window = self.window or _env_int("HSYNC_WINDOW") or WINDOW
        ops = self.batch_ops or _env_int("HSYNC_BATCH_OPS") or BATCH_OPS
        return max(1, window), max(1, ops)

    def command(self) -> str:
        return self.rsh or os.environ.get("HSYNC_RSH") or "ssh"


WINDOW = 4
"""Batches a push keeps in flight by default: the next ones cross the link while the far
side applies and flushes one (measured in bench/HISTORY.md, "The window of batches in flight")."""
BATCH_OPS = 2000
"""Ops one batch to a far destination holds at most by default (and ``BATCH_BYTES`` of
content): small enough that a window of them overlaps the link and the far flush, large
enough that a batch's flush and acknowledgement are not paid per few files."""
BATCH_BYTES = 32 << 20


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


_REACH: ContextVar[Reach] = ContextVar("hsync_remote_reach", default=Reach())  # noqa: B039 (frozen)


def current() -> Reach:
    """The reach in effect for endpoints opened now (see ``reaching``)."""
    return _REACH.get()


@contextlib.contextmanager
def reaching(reach: Reach) -> Iterator[None]:
    """Open endpoints with ``reach`` (a session sets it from its options; a daemon pair
    from its own ``ssh`` settings)."""
    token = _REACH.set(reach)
    try:
        yield
    finally:
        _REACH.reset(token)
