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

import attrs


@attrs.frozen(kw_only=True)
class Reach:
    """How to reach a remote endpoint: the ``ssh`` command (``-e/--rsh``, split as a
    shell would; ``HSYNC_RSH`` in the environment is the default, then ``ssh``), the
    path of ``hsync`` on the far side (``--remote-hsync``), and whether bulk data is
    compressed (``-z``, on by default)."""

    rsh: str | None = None
    remote_hsync: str | None = None
    compress: bool = True

    def command(self) -> str:
        return self.rsh or os.environ.get("HSYNC_RSH") or "ssh"


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
