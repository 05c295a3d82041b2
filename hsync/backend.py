"""The backend contract: written once here, used as written by the core.

A backend opens one endpoint of a sync (a path, ``file:///abs``, ``ldap://host/BASE``,
...). It implements the required ``Backend`` protocol; what it can do beyond that it
says through small optional protocols (``SortedWalk``, ``Streaming``, ``DigestScanning``,
``BulkHashing``, ``Watchable``, ``ResumableWatchable``, ``Related``, ``Metadata``), which
``open_endpoint`` resolves once into a frozen ``Features`` value (rclone's
``Features().Fill``). The core reads ``Features``; it never probes a backend with
``getattr``.

Every argument is a value (keys, nodes, snapshots, ops, ``Exclude`` patterns, frozen
options) or a token the caller owns (``Cancel``, a ``WatchSink``), and every result is a
value: the contract can be forwarded over a byte stream (remote endpoints, SPEC 12) and
handed a partition of a tree (SPEC 11). See ``plugins/README.md`` for how to write one
and ``docs/ARCHITECTURE.md`` for how the core uses it.

Backends register in the entry-point group ``hsync.backends`` under their URL scheme;
the filesystem backend is built in under ``file`` and is also what a bare path opens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from types import TracebackType

from ._values import define, evolve, field, field_names, frozen
from .cancel import NEVER, Cancel
from .errors import UsageError

TYPE_CHECKING = False  # not typing's: a sync does not import typing (issue 15 item 1)
if TYPE_CHECKING:
    from concurrent.futures import Executor
    from contextlib import AbstractContextManager
    from typing import Any, BinaryIO, Literal, Protocol, runtime_checkable

    from .filters import Exclude
    from .model import Key, Node, Op, Problem, Row, Snapshot

    Role = Literal["source", "destination"]
    Relation = Literal["same", "inside", "contains"]
else:

    class _ProtocolMeta(type):
        """The run-time side of the contract's protocols without ``typing`` (whose
        import is a tenth of a small sync's start-up): ``isinstance(x, P)`` for a
        ``@runtime_checkable`` protocol ``P`` is what ``typing`` checks, that ``x``
        has every member ``P`` declares (its methods, and its annotated attributes),
        a method not None. The type checker sees ``typing.Protocol`` itself."""

        _SKIP = frozenset({
            "__module__", "__qualname__", "__doc__", "__annotations__", "__dict__",
            "__weakref__", "__init__", "__new__", "__slots__", "__init_subclass__",
            "__subclasshook__", "__class_getitem__", "__parameters__", "__orig_bases__",
        })

        def __new__(mcs, name: str, bases: tuple[type, ...], ns: dict[str, object]):
            cls = super().__new__(mcs, name, bases, ns)
            # a protocol names Protocol among its bases (typing's rule); a class
            # derived from a protocol is an ordinary class
            cls._proto_is = any(b.__dict__.get("_proto_base", False) for b in bases)
            cls._proto_runtime = False
            return cls

        def _proto_members(cls) -> tuple[tuple[str, bool], ...]:
            """The protocol's members, name and whether a method, read on the first
            check (not at import: most of the 22 protocols are never checked)."""
            found = cls.__dict__.get("_proto_found")
            if found is not None:
                return found  # type: ignore[no-any-return]
            members: dict[str, bool] = {}  # name -> is a method
            for base in reversed(cls.__mro__[:-1]):
                if not base.__dict__.get("_proto_is", False) and base is not cls:
                    continue
                for attr in base.__dict__.get("__annotations__", {}):  # noqa: RUF063 (no inspect)
                    members.setdefault(attr, False)
                for attr, value in base.__dict__.items():
                    if attr not in cls._SKIP and not attr.startswith("_proto_"):
                        members[attr] = callable(value)
            found = tuple(members.items())
            type.__setattr__(cls, "_proto_found", found)
            return found

        def __instancecheck__(cls, instance: object) -> bool:
            if not cls.__dict__.get("_proto_is", False):
                return super().__instancecheck__(instance)
            if not cls._proto_runtime:
                raise TypeError(
                    "Instance and class checks can only be used with @runtime_checkable"
                    " protocols"
                )
            return all(
                hasattr(instance, attr) and not (method and getattr(instance, attr) is None)
                for attr, method in cls._proto_members()
            )

    class Protocol(metaclass=_ProtocolMeta):
        __slots__ = ()
        _proto_base = True

    def runtime_checkable(cls: type) -> type:
        cls._proto_runtime = True
        return cls

    # the aliases, for a backend that imports them at run time (typed as above)
    Role = Relation = str


# -- values --------------------------------------------------------------------------------
@frozen(kw_only=True)
class Capabilities:
    """What a backend can do; the planner and the applier respect it."""

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
    scan, and a streamed walk is read ahead in a thread (the waiting releases the GIL)."""
    deferred_flush: bool = False
    """``apply_batch`` with ``ApplyOptions(defer_durable=True)`` returns while the
    batch's flush to stable storage still runs (``ApplyResult.durable`` waits for it)."""
    streamed_ops: bool = False
    """``apply_batch`` may be given ops still being walked (``hsync.apply.Stream``, a
    streamed initial copy): it iterates them once, in order, and reads anything else
    about them (how many files) from ``ops.known``, the ops handed out so far."""
    renames_touch_parents: bool = False
    """A rename changes the payload of the containers it leaves and enters (a
    directory's mtime, which a sync copies): where no container's payload differs, no
    node was renamed since the last sync, and the history is consulted for identities
    only below containers that differ. Without it, a comparison reads the history's
    identities once even when every key's payload is equal (two names swapped)."""


@frozen
class Credentials:
    """How to authenticate to an endpoint and reach it safely (LDAP: a bind DN and its
    password, the CA file that signs the server's certificate, StartTLS), given by the
    command line, a config file or the API (``hsync.credentials``); a field left None
    comes from the environment. The password never shows in a repr, a log or a report."""

    bind_dn: str | None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    starttls: bool = False


@frozen(kw_only=True)
class ApplyOptions:
    """How a batch is applied (the sync options that reach the destination)."""

    fsync: bool = False
    """One fsync per file instead of one flush of the destination per batch."""
    hard_links: bool = False
    """Source files that share an identity become one node here too (rsync -H)."""
    defer_durable: bool = False
    """Return while the batch's flush still runs (only where ``deferred_flush``)."""
    copy_unstable: bool = False
    """A source file that changes while it is read is published anyway instead of
    failing with a problem of kind ``retry``: its first ``op.node.size`` bytes as read,
    with ``op.node``'s mtime (what an appended log held at the scan), as rsync publishes
    what it read. A file now shorter than that, or not a file, still fails. The apply
    step asks for it only on its last try of an op, with ``sync --copy-unstable``, and
    warns (``ApplyResult.warnings``); a backend without the notion may ignore it."""
    sparse: bool = True
    """Holes of sparse files stay holes (rsync -S); False writes them as zeros."""


@frozen(kw_only=True)
class ScanOptions:
    """What a tree's scans keep (the sync options that reach the scans of both sides;
    ``ScanConfigurable``)."""

    specials: bool = True
    """FIFOs and device nodes are nodes (rsync -D); False leaves them out."""
    one_file_system: bool = False
    """A mount point below the root is a node but its content is neither listed nor
    deleted (rsync -x)."""


@define
class ApplyResult:
    """What one batch did: the ops done, the problems, the content bytes written."""

    done: list[Op] = field(factory=list)
    problems: list[Problem] = field(factory=list)
    bytes_copied: int = 0
    durable: Callable[[], None] | None = None
    """Waits until the batch is durable when the flush was deferred; None: it is."""
    warnings: list[str] = field(factory=list)
    """Said to the user, nothing failed (the apply step's: files published unstable)."""


@frozen(kw_only=True)
class DigestSummary:
    """What a digest scan saw, small enough to ship: one digest per directory listed
    (two directories with equal digests hold the same names with the same payloads),
    what could not be read, the special files left out, the directories holding
    excluded nodes, the node count and the root's row (what ``rows((),)`` gives: a
    remote scan answers that from the summary)."""

    digests: dict[Key, int]
    incomplete: dict[Key, str]
    trees: dict[Key, int] = field(factory=dict)
    """One digest per directory listed for its whole subtree (a Merkle tree: two
    directories with equal ones hold the same names with the same payloads at every
    depth, whatever their own names); empty where the scan computes none."""
    skipped: list[tuple[Key, str]]
    held: set[Key]
    count: int
    root: Row | None


@frozen(kw_only=True)
class Keep:
    """Which metadata beyond kind, mode, size, mtime and target a pair keeps (SPEC 2),
    as ``Metadata.metadata`` negotiates it: what the options ask for, narrowed to what
    the destination can hold and the source can read. Rows and nodes carry it in their
    ``data`` field (the filesystem: ``(uid, gid, xattrs)``, each None when not kept)."""

    owner: bool = False
    group: bool = False
    xattrs: frozenset[str] = frozenset()
    """Extended attribute namespaces kept: ``user``, ``trusted``, ``security``."""
    acls: bool = False
    """POSIX ACLs, access and default (``system.posix_acl_*``)."""
    uids: tuple[tuple[int, int], ...] = ()
    """Source uid -> destination uid where they differ (by name; empty with
    ``--numeric-ids``): the source's rows carry the destination's ids."""
    gids: tuple[tuple[int, int], ...] = ()
    since_ns: int = 0
    """Extended attributes and ACLs are read only from nodes whose ctime (which moves
    whenever they change) is at or after this time (ns): on others the row's data says
    ``model.UNREAD`` (unchanged since the last sync that left the pair equal; the core
    has both sides read in full where that meets anything else). 0: read all."""

    def signature(self) -> str:
        """What a ``since_ns`` is valid for: the attributes it is about."""
        return f"{','.join(sorted(self.xattrs))};acls={int(self.acls)}"

    def narrowed(self, other: Keep) -> Keep:
        """What both keep (the id maps of ``self``)."""
        return evolve(
            self, owner=self.owner and other.owner, group=self.group and other.group,
            xattrs=self.xattrs & other.xattrs, acls=self.acls and other.acls,
        )


IdNames = tuple[dict[int, str], dict[int, str]]
"""An endpoint's user and group names by id."""


def id_map(src: dict[int, str], dst: dict[int, str]) -> tuple[tuple[int, int], ...]:
    """Source id -> destination id for the names both know, where the ids differ (an id
    without a name on either side stays as it is, as rsync does)."""
    by_name: dict[str, int] = {}
    for i, n in dst.items():
        by_name.setdefault(n, i)
    out = []
    for i, n in sorted(src.items()):
        j = by_name.get(n)
        if j is not None and j != i:
            out.append((i, j))
    return tuple(out)


@frozen
class Resume:
    """Where a watch may resume: a token one of its own watches gave out
    (``Watch.checkpoint``), and the source's identity -> key map of what was synced up
    to that point (from the history; called once, lazily)."""

    token: bytes
    identities: Callable[[], Iterable[tuple[object, Key]]] = field(repr=False)


# -- what the caller hands in ------------------------------------------------------------------
class ContentSource(Protocol):
    """Where ``apply_batch`` reads file content from: the other endpoint (locally a
    backend; over a stream, the proxy that asks the far side)."""

    url: str

    def read(self, key: Key) -> BinaryIO:
        """An open binary stream of the content at ``key``."""
        ...


class WatchSink(Protocol):
    """Where a watch reports what changed (it never applies anything). Called from the
    watch's own thread(s); each call returns quickly."""

    def dirty(self, key: Key, *, deep: bool = True, writing: bool = False) -> None:
        """``key`` changed. ``deep``: anything at or below it may have changed (created,
        deleted, moved in or out: rescan its subtree); otherwise only the node itself
        (its content or metadata). A move reports both its old and its new key.
        ``writing``: the node is a file modified and still open for writing; it is not
        published until a later call for it without ``writing`` (closed after the
        write, deleted, moved) or a quiet period (``--settle``). A backend that cannot
        tell leaves it False."""
        ...

    def moved(self, old: Key, new: Key, *, directory: bool = True) -> None:
        """A node moved from ``old`` to ``new``, both in the tree, told right after the
        two ``dirty`` calls of the move by a watch that can tell (inotify's paired
        events; a watch that cannot never calls it). A moved file is then complete (no
        long debounce); a moved directory is compared as one node while nothing is
        reported below either key (``Region.folded``)."""
        ...

    def lost(self, reason: str) -> None:
        """Notifications were lost (queue overflow, watch limit, reconnect without a
        usable cookie): a full comparison is needed."""
        ...

    def unwatched(self, key: Key, reason: str) -> None:
        """``key``'s subtree could not be watched: it is polled instead."""
        ...


# -- the required protocol ------------------------------------------------------------------
@runtime_checkable
class Backend(Protocol):
    """One endpoint of a sync. Constructed as ``Cls(location, *, role, credentials=None,
    exclude_attrs=())`` (``BackendFactory``); ``close`` releases it."""

    url: str
    """The location as opened (shown in messages)."""
    capabilities: Capabilities

    def canonical_url(self) -> str:
        """The same string for every location that names this endpoint (a resolved
        path, a normalized base DN): what the history is keyed by."""
        ...

    def root_error(self) -> str | None:
        """None when the root can be used in this endpoint's role; else why not, in a
        few words ("does not exist", "is not a directory", "is not readable"). A
        destination whose root is absent is usable (an empty tree) when the first batch
        can create it (its ``create`` of ``()``); a source's absent root is an error."""
        ...

    def root_id(self) -> Hashable | None:
        """What identifies the root now (a filesystem's device and inode, an LDAP base
        entry's entryUUID), or None when it is absent: a different value means the root
        was replaced or unmounted."""
        ...

    def is_empty(self) -> bool:
        """True when the root is absent or holds no node (nothing but hsync's own
        temporary names): an initial copy into it needs no comparison."""
        ...

    def scan(
        self, subtree: Key = (), *, exclude: Exclude | None = None, cancel: Cancel = NEVER
    ) -> Snapshot:
        """What is at and below ``subtree`` now, parents before children. Never follows
        a symlink; unreadable parts are listed in ``Snapshot.incomplete``, not raised.
        ``cancel`` is checked once per directory (or page): ``Cancelled`` is raised.

        An absent key (the root included) gives an empty snapshot (no node, nothing
        incomplete). For ``subtree != ()``: a leaf gives a snapshot of that one node; the
        ancestors of ``subtree`` are not included (see ``stat``)."""
        ...

    def stat(self, key: Key) -> Node | None:
        """The node at ``key`` without its children, or None when it is absent (also
        when an ancestor is absent or not a container). Raises ``OSError`` only for
        what cannot be read."""
        ...

    def read(self, key: Key) -> BinaryIO:
        """An open binary stream of the content at ``key`` (``OSError`` when none)."""
        ...

    def digest(self, key: Key) -> bytes | None:
        """A hash of the content at ``key`` (the same function on every endpoint of
        one kind), or None when it cannot be read or there is no content."""
        ...

    def apply_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = ApplyOptions(),  # noqa: B008 (frozen)
        cancel: Cancel = NEVER,
        on_done: Callable[[Op], None] | None = None,
    ) -> ApplyResult:
        """Run ``ops`` in order on this endpoint, reading content from ``source``.

        - A failure on one op is a ``Problem`` (with ``op`` and a ``kind``) in the result
          and the rest goes on. The order of ``done`` and ``problems`` is not promised.
        - Before an update, a move or a delete the backend checks the node at the key
          still has ``Op.old``'s payload (``Node`` equality: kind, and what a sync
          compares); a create never replaces a node that appeared since the scan
          (a directory create onto a directory is done). Either mismatch is a problem
          of kind ``skip`` and the node is left alone.
        - Content read from ``source`` that does not have ``op.node.size`` bytes, or a
          source node that changed while it was read, is not published: kind ``retry``.
        - ``final`` is the source snapshot the ops lead to: a directory whose children
          this batch changed gets its metadata from it once they settled.
        - ``cancel`` is checked between ops: an op already started finishes, every op
          not started comes back as a problem of kind ``cancelled`` (so each op is
          either done or a problem).
        - ``on_done(op)`` is called for each op done (progress).
        - A fault of the whole endpoint (full, read-only) raises a ``BackendError``.
        - The batch is durable when this returns (unless ``options.defer_durable``)."""
        ...

    def close(self) -> None:
        """Release the endpoint (idempotent)."""
        ...


class BackendFactory(Protocol):
    """How a backend class is called by ``open_endpoint``."""

    def __call__(
        self,
        location: str,
        *,
        role: Role,
        credentials: Credentials | None = None,
        exclude_attrs: tuple[str, ...] = (),
    ) -> Backend: ...


# -- optional capabilities --------------------------------------------------------------------
# A capability is recognised by its method names when the endpoint opens; the type
# checker checks the signatures: claim each one a class implements under
# ``if TYPE_CHECKING:`` (``_w: Watchable = MyBackend(...)``), as the built-in ones do.
@runtime_checkable
class Related(Protocol):
    """Tells how another endpoint of the same kind overlaps this one (nested trees are
    refused, SPEC 8). Without it, two endpoints with equal canonical URLs are the same."""

    def relation(self, other_url: str) -> Relation | None:
        """"same", "inside" (the other is below this one), "contains" (this one is
        below the other), or None (disjoint, or another kind of endpoint)."""
        ...


@runtime_checkable
class ScanConfigurable(Protocol):
    """A backend whose scans take ``ScanOptions`` (set once, after opening)."""

    def configure_scan(self, options: ScanOptions) -> None: ...


@runtime_checkable
class KeepsWorkers(Protocol):
    """A destination whose copies may run on workers kept over several batches (an
    initial copy cut into many: a watch's first pass) rather than a pool per batch."""

    def keep_workers(
        self, early: Executor | None = None, bounded: bool = False
    ) -> AbstractContextManager[None]:
        """While the block runs, the batches applied from this thread share one pool of
        copy workers: ``early`` (worker processes started before any other thread, by
        the backend's own helper), or started when they have copies enough to earn it;
        its workers end when the block does. ``bounded``: few copies queued and not yet
        done at a time (what a stop waits for), else as many as the walk finds."""
        ...


@runtime_checkable
class SortedWalk(Protocol):
    """Walks the tree in the history's key order, holding one listing per level: the
    stat-only quick pass against the history (SPEC 7)."""

    def walk_sorted(
        self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
    ) -> Iterator[tuple[Key, Row | tuple[str] | None]]:
        """Every node below the root as ``(key, row)``: depth first, a container right
        before its descendants, siblings by the bytes of their names (UTF-8 with
        surrogate escapes). ``(key, None)`` follows a container whose listing failed
        (nothing below it is known); ``(key, (what,))`` is a node left out (a special
        file: ``what`` names its kind)."""
        ...


@runtime_checkable
class Streaming(Protocol):
    """Walks the tree parents first without holding it: an initial copy into an empty
    destination is streamed from it (``hsync.populate``)."""

    def stream(
        self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
    ) -> Iterator[tuple[Key, Node | str | None]]:
        """Every node below the root as ``(key, node)``, each parent before its
        children (siblings in any order). ``(key, None)``: a container whose listing
        failed (``((), None)``: nothing could be read); ``(key, what)``: a node left out
        (a special file; ``what`` names its kind)."""
        ...


class DigestScan(Protocol):
    """A full scan with one digest per directory, started by ``digest_scan`` (perhaps in
    a child process or on the far side of a link), then asked for only what it needs."""

    def summary(self) -> DigestSummary: ...

    def listings(self, dirs: Iterable[Key]) -> dict[Key, list[tuple[str, Row]]]:
        """The ``(name, row)`` children of each of ``dirs``."""
        ...

    def ask_listings(
        self, dirs: Iterable[Key]
    ) -> Callable[[], dict[Key, list[tuple[str, Row]]]]:
        """``listings``, asked now and taken later: calling what this returns gives
        what ``listings`` gives (once). A scan running elsewhere (a child process, the
        far side of a link) lists them while the caller does something else meanwhile
        (lists the other tree's); other requests may be made before it is taken."""
        ...

    def rows(self, keys: Iterable[Key] = (), subtrees: Iterable[Key] = ()) -> dict[Key, Row]:
        """The rows of ``keys``, and of ``subtrees`` with everything below them (keys
        that are not there are left out)."""
        ...

    def snapshot(self) -> Snapshot:
        """The whole scan (its service ends)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class DigestScanning(Protocol):
    """Scans with per-directory digests: a re-sync with a complete history compares
    digests first and only the directories that differ one by one."""

    def digest_scan(
        self, exclude: Exclude | None = None, *, background: bool = False,
        cancel: Cancel = NEVER,
    ) -> DigestScan:
        """Start a full scan. ``background``: run it beside the caller (another
        process) where that is possible, else when first asked."""
        ...


if TYPE_CHECKING:
    Hashed = tuple[bytes | None, int, Any]
    """(the content hash or None when unreadable, bytes read, the ``look`` at open time)"""
else:
    Hashed = tuple


@runtime_checkable
class BulkHashing(Protocol):
    """Hashes many files at once where the data is (``hsync verify``)."""

    def hash_many(self, keys: Sequence[Key]) -> list[Hashed]:
        """Hash the files at ``keys`` (sorted: neighbours share a directory). Runs in a
        worker process where the backend pickles (it must then reopen itself)."""
        ...

    def look(self, key: Key) -> Any:
        """A cheap look at ``key`` (a stat), compared between two looks to tell whether
        it changed; None when absent."""
        ...


class Watch(Protocol):
    """A running watch (a context manager: entering starts it, leaving stops it and
    joins every thread it started)."""

    def __enter__(self) -> Watch: ...

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @property
    def alive(self) -> bool:
        """False once the watch died (its root moved away, its thread ended)."""
        ...

    @property
    def resumed(self) -> bool:
        """True when it started from a ``Resume`` token and reported what changed since
        as dirty keys (no full comparison is needed)."""
        ...

    def checkpoint(self) -> bytes | None:
        """A token such that every change up to it has been reported to the sink (None
        when the watch has no positions, or while it has none)."""
        ...


class PendingBatch(Protocol):
    """A batch sent and not yet acknowledged (``Windowed.submit_batch``)."""

    def result(self) -> ApplyResult:
        """Wait for the batch's acknowledgement: what it did (as ``apply_batch``'s
        result, durable: the far side flushed it before it acknowledged it)."""
        ...


@runtime_checkable
class Windowed(Protocol):
    """Batches cross a link (a remote endpoint): several are sent before the first is
    acknowledged. The far side applies them in the order sent, each flushed and
    journaled before it is acknowledged; a batch that fails as a whole stops the
    ones after it (not applied there). A broken link is reconnected and the batches
    not acknowledged are resent, none applied twice."""

    def window(self) -> int:
        """How many batches may be in flight (1: one at a time)."""
        ...

    def batch_limits(self) -> tuple[int, int]:
        """The most ops, and about the most bytes of content, one batch should hold."""
        ...

    def submit_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = ...,
        cancel: Cancel = ...,
    ) -> PendingBatch:
        """Send a batch (its ops and the content it reads) and return at once; the
        results are taken in the order the batches were submitted."""
        ...

    def name_pair(self, pair: str) -> None:
        """The pair's id (its history's, ``history.pair_id``): the far side journals
        this pair's batches under it, apart from other pairs that write to the same
        tree. Without it, batches are journaled under the far tree's address."""
        ...


@runtime_checkable
class Watchable(Protocol):
    """Reports changes below the root (inotify through watchdog; LDAP syncrepl)."""

    def watch(self, sink: WatchSink) -> Watch: ...


@runtime_checkable
class Prefetching(Protocol):
    """Content is far away (a remote endpoint): told which files a batch will read, it
    fetches them all at once (one stream per batch, not one round trip per ``read``)."""

    def prefetch(self, keys: Sequence[Key], *, sparse: bool = False) -> None:
        """``read`` will soon be called for ``keys`` (in about that order); forgets
        what an earlier call fetched and was not read. ``sparse``
        (``ApplyOptions.sparse``): a file with holes is read keeping them."""
        ...

    def delta_bases(self, basis: Backend, ops: Sequence[Op]) -> None:
        """Before ``prefetch``: the batch ``ops`` writes to ``basis`` (the destination);
        a file it updates may be read as a delta against ``basis``'s old file."""
        ...


@runtime_checkable
class Spooling(Protocol):
    """A destination where content arriving over a link may wait for its apply in an
    unnamed file on the destination's own filesystem, which the apply then links in
    rather than copies (a big file is written once)."""

    def spool_dir(self) -> str | None:
        """A directory on the destination's filesystem for that, or None."""
        ...


@runtime_checkable
class Linked(Protocol):
    """The endpoint is reached over a link whose bytes are counted."""

    def wire(self) -> tuple[int, int]:
        """Bytes sent and received on the link so far (as they crossed it)."""
        ...

    def round_trips(self) -> int:
        """The round trips of the link this side has waited on so far, one after the
        other (requests sent together, before the answers they depend on, are one)."""
        ...

    def stat_many(self, keys: Sequence[Key]) -> dict[Key, Node | OSError | None]:
        """``stat`` of each of ``keys``, asked together (one round trip for all, not one
        each): the node, None where absent, or the ``OSError`` its ``stat`` raised."""
        ...

    def look_many(self, keys: Sequence[Key]) -> dict[Key, Any]:
        """``BulkHashing.look`` of each of ``keys``, asked together (one round trip for
        all, not one each); asked only of an endpoint that is ``BulkHashing`` too."""
        ...

    def digest_many(self, keys: Sequence[Key]) -> dict[Key, bytes | None]:
        """``digest`` of each of ``keys``, asked together (one round trip for all); a
        key whose digest failed is left out (``digest`` asked alone raises it)."""
        ...


@runtime_checkable
class ResumableWatchable(Protocol):
    """A watch whose change stream has positions (LDAP syncrepl cookies): it can start
    from a checkpoint a former watch gave out."""

    def watch_from(self, sink: WatchSink, resume: Resume) -> Watch: ...


@runtime_checkable
class Metadata(Protocol):
    """Nodes carry owner, group, extended attributes or ACLs (in ``Node.data``) when
    asked: the session negotiates ``Keep`` with both endpoints once per run."""

    def id_names(self) -> IdNames:
        """The user and group names this endpoint knows, by id (a pair maps ids by
        name, as rsync does without ``--numeric-ids``)."""
        ...

    def metadata(self, wanted: Keep) -> Keep:
        """From now on, scans carry (and applies set) what of ``wanted`` this endpoint
        can read (source) or hold (destination: owner only where it may chown,
        attribute namespaces its filesystem supports); returns that. What it keeps is
        narrowed part by part by what it can do, never by what it was asked before
        or what else is asked: the answer is ``wanted.narrowed(everything)``, where
        ``everything`` is its answer to all there is (a remote endpoint answers from
        that, said when it opens, without waiting for its far side)."""
        ...


@runtime_checkable
class CtimeClock(Protocol):
    """How the ctimes of this endpoint's nodes relate to this host's clock, for the
    marks of ``Keep.since_ns`` (``PairSession.mark_equal``). An endpoint without it
    (a remote one: another host's clock) is given a margin of 2 s."""

    def ctime_lag_ns(self) -> int:
        """How far behind ``time.time_ns()`` a ctime stamped now in this tree may be:
        a clock tick for a local filesystem that stamps to the ns, more for one that
        stamps whole seconds or whose server stamps them."""
        ...


@runtime_checkable
class SchemaAware(Protocol):
    """Compares and rewrites values by a schema (LDAP: matching rules, DN-valued
    attributes), which its peer or schema files may know better than it does: an LDIF
    file takes the schema of the directory server it is synced with, else the files
    given with ``--schema``, so both sides of a pair compare by the same rules."""

    def use_schema(self, files: Sequence[str], peer: Backend) -> None:
        """Called once by the session, both endpoints open, before any scan: ``files``
        (``Options.schema``) and the other endpoint. ``UsageError`` naming a file that
        cannot be read or parsed."""
        ...


def schema_aware(endpoint: Endpoint) -> SchemaAware | None:
    """The endpoint's backend as ``SchemaAware``, or None. Resolved once, by the session
    when the pair opens; not a ``Features`` field, whose names are the fixed table every
    backend's conformance suite checks (and a handshake lists)."""
    backend = endpoint.backend
    return backend if isinstance(backend, SchemaAware) else None


# -- the resolved features ---------------------------------------------------------------------
@frozen(kw_only=True)
class Features:
    """What one opened endpoint offers, resolved once by ``Features.of``: each optional
    capability is the backend itself, typed as its protocol, or None."""

    capabilities: Capabilities
    related: Related | None = None
    sorted_walk: SortedWalk | None = None
    streaming: Streaming | None = None
    digest_scanning: DigestScanning | None = None
    bulk_hashing: BulkHashing | None = None
    watchable: Watchable | None = None
    resumable: ResumableWatchable | None = None
    prefetching: Prefetching | None = None
    linked: Linked | None = None
    metadata: Metadata | None = None
    windowed: Windowed | None = None
    spooling: Spooling | None = None

    @classmethod
    def of(cls, backend: Backend) -> Features:
        return cls(
            capabilities=backend.capabilities,
            related=backend if isinstance(backend, Related) else None,
            sorted_walk=backend if isinstance(backend, SortedWalk) else None,
            streaming=backend if isinstance(backend, Streaming) else None,
            digest_scanning=backend if isinstance(backend, DigestScanning) else None,
            bulk_hashing=backend if isinstance(backend, BulkHashing) else None,
            watchable=backend if isinstance(backend, Watchable) else None,
            resumable=backend if isinstance(backend, ResumableWatchable) else None,
            prefetching=backend if isinstance(backend, Prefetching) else None,
            linked=backend if isinstance(backend, Linked) else None,
            metadata=backend if isinstance(backend, Metadata) else None,
            windowed=backend if isinstance(backend, Windowed) else None,
            spooling=backend if isinstance(backend, Spooling) else None,
        )

    def names(self) -> list[str]:
        """The optional capabilities present (for ``--debug`` and a handshake)."""
        return [
            name for name in field_names(Features)
            if name != "capabilities" and getattr(self, name) is not None
        ]


@frozen
class Endpoint:
    """An opened backend with its resolved features: what the core passes around."""

    backend: Backend
    features: Features
    role: Role

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def capabilities(self) -> Capabilities:
        return self.features.capabilities

    def close(self) -> None:
        self.backend.close()


# -- the registry ------------------------------------------------------------------------------
_BUILTIN = {"file": "hsync.backends.fs:FsBackend", "ssh": "hsync.remote.backend:open_remote"}
_HINTS = {
    "ldap": "install the LDAP plugin: pip install ./plugins/ldap",
    "ldaps": "install the LDAP plugin: pip install ./plugins/ldap",
    "ldif": "install the LDAP plugin: pip install ./plugins/ldap",
}


def _load(spec: str) -> BackendFactory:
    module, _, name = spec.partition(":")
    mod = __import__(module, fromlist=[name])
    cls: BackendFactory = getattr(mod, name)
    return cls


def plain_path(location: str) -> bool:
    """``location`` is a plain path by its form alone (no colon before its first slash;
    ``./a:b`` and ``/x:y`` are paths): a local tree, without asking the plugins."""
    head, sep, _ = location.partition(":")
    return not sep or not head or location.startswith(("./", "/")) or "/" in head


def scheme_of(location: str) -> str:
    """The URL scheme of ``location``: "file" for a plain path (``plain_path``), "ssh"
    for rsync's ``[user@]host:path`` (a colon before the first slash, where the part
    before it is not a known scheme)."""
    if plain_path(location):
        return "file"
    head, _, rest = location.partition(":")
    scheme = head.lower()
    if head.isascii() and head.replace("+", "").replace("-", "").isalnum() and (
        len(head) > 1
    ) and (rest.startswith("//") or scheme in _BUILTIN or scheme in _REGISTERED
           or scheme in _HINTS or _is_plugin(scheme)):
        return scheme
    return "ssh"


def _is_plugin(scheme: str) -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == scheme for ep in entry_points(group="hsync.backends"))


_REGISTERED: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Register ``factory`` for ``scheme`` in this process (an application embedding
    hsync, a test); installed plugins use the entry-point group instead."""
    _REGISTERED[scheme.lower()] = factory


def backend_class(location: str) -> BackendFactory:
    """The backend registered for ``location``'s scheme; ``UsageError`` naming what to
    install when there is none."""
    scheme = scheme_of(location)
    if scheme in _REGISTERED:
        return _REGISTERED[scheme]
    if scheme in _BUILTIN:
        return _load(_BUILTIN[scheme])
    from importlib.metadata import entry_points

    eps = entry_points(group="hsync.backends")
    found = [ep for ep in eps if ep.name == scheme]
    if not found:
        known = sorted({"file", *_REGISTERED, *(ep.name for ep in eps)})
        hint = f" ({_HINTS[scheme]})" if scheme in _HINTS else ""
        raise UsageError(
            f"{location}: unknown URL scheme {scheme!r}; known: {', '.join(known)}{hint}"
        )
    cls: BackendFactory = found[0].load()
    return cls


def open_backend(
    location: str,
    *,
    role: Role,
    credentials: Credentials | None = None,
    exclude_attrs: Sequence[str] = (),
) -> Backend:
    """Open ``location`` with the backend registered for its scheme."""
    return backend_class(location)(
        location, role=role, credentials=credentials, exclude_attrs=tuple(exclude_attrs)
    )


def stat_many(endpoint: Endpoint, keys: Sequence[Key]) -> dict[Key, Node | OSError | None]:
    """``stat`` of each of ``keys`` on ``endpoint`` (``Linked.stat_many``: together, in
    one round trip, over a link; else one after the other): the node, None where
    absent, or the ``OSError`` its ``stat`` raised."""
    linked = endpoint.features.linked
    if linked is not None and len(keys) > 1:
        return linked.stat_many(keys)
    out: dict[Key, Node | OSError | None] = {}
    for k in keys:
        try:
            out[k] = endpoint.backend.stat(k)
        except OSError as e:
            out[k] = e
    return out


def look_many(endpoint: Endpoint, keys: Sequence[Key]) -> dict[Key, Any]:
    """``BulkHashing.look`` of each of ``keys`` on ``endpoint`` (``Linked.look_many``:
    together, in one round trip, over a link; else one after the other). The endpoint
    must be ``BulkHashing`` (``Features.bulk_hashing``)."""
    bulk = endpoint.features.bulk_hashing
    if bulk is None:
        raise TypeError(f"{endpoint.url}: not BulkHashing: no look")
    linked = endpoint.features.linked
    if linked is not None and len(keys) > 1:
        return linked.look_many(keys)
    return {k: bulk.look(k) for k in keys}


def open_endpoint(
    location: str,
    *,
    role: Role,
    credentials: Credentials | None = None,
    exclude_attrs: Sequence[str] = (),
) -> Endpoint:
    """Open ``location`` and resolve its features once."""
    backend = open_backend(
        location, role=role, credentials=credentials, exclude_attrs=exclude_attrs
    )
    return Endpoint(backend, Features.of(backend), role)


def relation(a: Endpoint, b: Endpoint) -> Relation | None:
    """How ``b`` overlaps ``a`` (see ``Related``); by canonical URL without it."""
    for first, second, flip in ((a, b, False), (b, a, True)):
        rel = first.features.related
        if rel is not None:
            found = rel.relation(second.backend.canonical_url())
            if found is not None:
                if flip and found != "same":
                    return "contains" if found == "inside" else "inside"
                return found
    ua, ub = a.backend.canonical_url().rstrip("/"), b.backend.canonical_url().rstrip("/")
    return "same" if ua == ub else None


def local_path(url: str) -> str | None:
    """The absolute path of a ``file:`` location or a plain path, else None."""
    if scheme_of(url) != "file":
        return None
    path = url[len("file://"):] if url.startswith("file://") else url
    return os.path.abspath(path) if path else None
