"""The backend protocol and the registry of backends by URL scheme.

A backend opens one endpoint (a location such as a path, ``file:///abs``,
``ldap://host/BASE``). Backends register in the entry-point group ``hsync.backends``
under their scheme; the filesystem backend is built in under ``file`` and is also
what a bare path opens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

import attrs

from .errors import UsageError

if TYPE_CHECKING:
    from .model import Key, Node, Op, Problem, Snapshot


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a backend can do; the planner and applier respect it."""

    subtree_move: bool = True
    """A move of a container carries its subtree (rename, modrdn with newSuperior)."""
    atomic_rename: bool = True
    """Content can be published under a temporary name and renamed over the final one."""
    case_insensitive: bool = False
    """Names that differ only by case are the same name."""
    content: bool = True
    """Nodes carry content streamed by ``read`` (files), not only attributes."""
    waits: bool = False
    """A scan mostly waits on a server: it may run in a thread beside the other tree's
    scan (the waiting releases the GIL)."""
    deferred_flush: bool = False
    """``apply_batch(..., defer_durable=True)`` returns while the batch's flush to
    stable storage still runs (``ApplyResult.durable`` waits for it)."""


@attrs.frozen
class Credentials:
    """How to authenticate to an endpoint (LDAP: a bind DN and its password), given by
    a config file; the password never shows in a repr, a log or a report."""

    bind_dn: str
    password: str = attrs.field(default="", repr=False)


@attrs.define
class ApplyResult:
    """What one batch did: per-op outcome counters and problems."""

    done: list[Op] = attrs.field(factory=list)
    problems: list[Problem] = attrs.field(factory=list)
    bytes_copied: int = 0
    durable: Callable[[], None] | None = None
    """Waits until the batch is durable, when the backend was asked to let its flush
    run on (``apply_batch(..., defer_durable=True)``); None: it already is."""


class WatchSink(Protocol):
    """Where a backend's watcher reports what changed (the watcher never applies).

    Methods are called from the watcher's own thread(s) and must return quickly."""

    def dirty(self, key: Key, *, deep: bool = True) -> None:
        """``key`` changed. ``deep``: anything at or below it may have changed (created,
        deleted, moved in or out: rescan its subtree); otherwise only the node itself
        (its content or metadata). A move reports both its old and its new key."""
        ...

    def lost(self, reason: str) -> None:
        """Notifications were lost (queue overflow, watch limit, reconnect without a
        usable cookie): a full comparison is needed."""
        ...

    def unwatched(self, key: Key, reason: str) -> None:
        """``key``'s subtree could not be watched: it is polled instead."""
        ...


@runtime_checkable
class Backend(Protocol):
    """One endpoint of a sync."""

    url: str
    capabilities: Capabilities

    def exists(self) -> bool:
        """True when the endpoint's root exists (a missing root is not an error)."""
        ...

    def scan(
        self, subtree: Key = (), *, exclude: Callable[[Key, bool], bool] | None = None
    ) -> Snapshot:
        """What is at and below ``subtree`` now, parents before children. Never follows
        a symlink; unreadable parts are listed in ``Snapshot.incomplete``, not raised.

        For ``subtree != ()``: an absent key gives an empty snapshot (no node, nothing
        incomplete); a leaf gives a snapshot of that one node; the ancestors of
        ``subtree`` are not included (see ``stat``). No ancestor is followed through a
        symlink either."""
        ...

    def stat(self, key: Key) -> Node | None:
        """The node at ``key`` without its children, or None when it is absent (also when
        an ancestor is absent or not a container). Raises ``OSError``-like errors only
        for what cannot be read."""
        ...

    def read(self, key: Key) -> BinaryIO:
        """An open binary stream of the content at ``key``."""
        ...

    def digest(self, key: Key) -> bytes | None:
        """A fast content hash of ``key``, or None when it cannot be read."""
        ...

    def apply_batch(
        self, ops: Sequence[Op], source: Backend, final: Snapshot, *, fsync: bool = False
    ) -> ApplyResult:
        """Run ``ops`` in order on this endpoint, reading content from ``source``.

        A failure on one op is a ``Problem`` in the result and the rest goes on. Before
        a destructive op the backend checks the target still holds what the plan
        expected. ``final`` is the source snapshot (directory metadata is set from it
        after a directory's children have settled)."""
        ...

    def close(self) -> None: ...


@attrs.frozen
class Resume:
    """Where a watcher may resume: a token that one of its own watches gave out
    (``checkpoint()``), and the source's identity -> key map of what was synced up to
    that point (from the history; called once, lazily)."""

    token: bytes
    identities: Callable[[], Iterable[tuple[object, Key]]] = attrs.field(repr=False)


class Watchable(Protocol):
    """Optional: a backend that can report changes (filesystem: inotify through
    watchdog; LDAP: syncrepl)."""

    def watch(self, sink: WatchSink) -> AbstractContextManager[None]:
        """Start reporting changes below the root to ``sink`` on entering; stop (join
        every thread, release every watch) on exiting.

        Optional resume protocol (a backend whose change stream has positions, such as
        LDAP syncrepl cookies; the filesystem has none): ``watch(sink, resume=Resume)``,
        and the returned context manager offers

        - ``checkpoint() -> bytes | None``: a token such that every change up to it has
          already been reported to ``sink`` (None while there is none, e.g. during a
          reconnect);
        - ``resumed: bool``, set on entering: the watch started from ``resume.token``
          and has reported what changed since as ``dirty`` keys (moves with their old
          and new keys), so no full comparison is needed. False when the source could
          not resume from the token (then it behaves as a watch without one)."""
        ...


_BUILTIN = {"file": ("hsync.backends.fs:FsBackend", "built in")}


def _load(spec: str) -> type:
    module, _, name = spec.partition(":")
    mod = __import__(module, fromlist=[name])
    return getattr(mod, name)


def scheme_of(location: str) -> str:
    head, sep, _ = location.partition(":")
    # "C:" style and plain relative paths are files; a scheme is letters then "://" or ":"
    if sep and head.isascii() and head.replace("+", "").replace("-", "").isalnum() and (
        len(head) > 1
    ) and not location.startswith(("./", "/")):
        return head.lower()
    return "file"


def open_backend(
    location: str, *, role: str, credentials: Credentials | None = None
) -> Backend:
    """Open ``location`` with the backend registered for its scheme.

    ``role`` is "source" or "destination" (credentials and checks may differ);
    ``credentials`` (from a config file) go to backends that authenticate, else the
    backend takes them from the environment."""
    scheme = scheme_of(location)
    if scheme in _BUILTIN:
        cls = _load(_BUILTIN[scheme][0])
    else:
        from importlib.metadata import entry_points

        found = [ep for ep in entry_points(group="hsync.backends") if ep.name == scheme]
        if not found:
            known = sorted({"file", *(ep.name for ep in entry_points(group="hsync.backends"))})
            hint = ""
            if scheme in {"ldap", "ldaps", "ldif"}:
                hint = " (install the LDAP plugin: pip install ./plugins/ldap)"
            raise UsageError(
                f"{location}: unknown URL scheme {scheme!r}; known: {', '.join(known)}{hint}"
            )
        cls = found[0].load()
    if credentials is not None:
        import inspect

        if "credentials" not in inspect.signature(cls).parameters:
            raise UsageError(f"{location}: this kind of endpoint takes no credentials")
        return cls(location, role=role, credentials=credentials)
    return cls(location, role=role)
