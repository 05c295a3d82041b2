"""One pair session: both endpoints open, the safety rules checked, the history and the
journal open. Every caller (``sync``, ``diff``, a watch, ``verify``) starts a pair here.

The session owns what lives as long as the pair: the two ``Endpoint`` values (each a
backend and its resolved ``Features``), the ``Exclude`` built once from the options, the
history (``History`` or None) and the journal of applied batches. It does not compare
or apply: ``hsync.compare`` and ``hsync.apply`` do, given a session.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Mapping
from types import TracebackType

from ._values import evolve
from .backend import (
    Credentials,
    CtimeClock,
    Endpoint,
    Keep,
    ScanConfigurable,
    ScanOptions,
    Windowed,
    id_map,
    local_path,
    open_endpoint,
    plain_path,
    relation,
    schema_aware,
)
from .credentials import refuse_secret_in_url
from .errors import SafetyError, UsageError
from .filters import build as build_filter
from .model import Key
from .options import DEFAULT, Options

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from .history import History
    from .journal import Journal


MARK_REFRESH_NS = 600 * 10**9
"""A run that changed nothing rewrites the history's mark (``mark_equal``) only when
the mark is older than this (10 minutes)."""
CLOCK_MARGIN_NS = 2 * 10**9
"""How far before a mark's moment the mark is set where the endpoint does not say how
far behind this host's clock its ctimes may be (``CtimeClock``): another host's
clock, a filesystem that stamps whole seconds."""


class PairSession:
    """Source and destination of one pair, opened and checked (SPEC 8).

    Raises ``HsyncError`` (nothing opened stays open) when an endpoint cannot be opened,
    the two are one tree or nested, they are different kinds of trees, the source root
    is unusable or the destination cannot be created."""

    def __init__(
        self,
        source_url: str,
        destination_url: str,
        options: Options = DEFAULT,
        *,
        credentials: tuple[Credentials | None, Credentials | None] = (None, None),
        history: bool = True,
    ) -> None:
        refuse_secret_in_url(source_url)
        refuse_secret_in_url(destination_url)
        self.options = options
        self.exclude = build_filter(options.exclude, options.include, options.filters)
        self.destination_exclude = None if options.delete_excluded else self.exclude
        """What the destination's scans leave out: nothing with ``--delete-excluded``."""
        self.history: History | None = None
        self.journal: Journal | None = None
        self.notices: list[str] = []
        self.written_ns: int | None = None
        """When the last batch applied to the destination had ended its writes (this
        host's clock; ``mark_equal``), None before any."""
        self._lock: int | None = None
        """Warnings about the pair's state, for the report and the log."""
        if plain_path(source_url) and plain_path(destination_url):
            self._open(source_url, destination_url, credentials)  # nothing to reach
        else:
            from .remote import Reach, reaching  # the small part: how to reach a far tree

            with reaching(Reach(rsh=options.rsh, remote_hsync=options.remote_hsync,
                                compress=options.compress, window=options.window,
                                batch_ops=options.batch_ops)):
                self._open(source_url, destination_url, credentials)
        scans = ScanOptions(
            specials=options.specials, one_file_system=options.one_file_system
        )
        for ep in (self.source, self.destination):
            if isinstance(ep.backend, ScanConfigurable):
                ep.backend.configure_scan(scans)
        try:
            self._check_pair()
            self._share_schema()
            self.keep = negotiate(self.source, self.destination, options, self.notices)
            """The metadata this pair keeps (None: neither endpoint carries any)."""
            self.check_source_root()
            self._check_destination_root()
            if history and not options.dry_run:
                self._lock = lock_pair(self.source, self.destination, options)
            if history:
                self.history, self.journal = open_history(
                    self.source, self.destination, options, self.notices)
                if self.history is not None and isinstance(self.destination.backend, Windowed):
                    self.destination.backend.name_pair(self.history.pair)
                self._attributes_since()
            self._check_destination_was_there()
            if history:  # else asked when first read: a verify never plans deletes
                self._deletes = self._may_delete()
        except BaseException:
            self.close()
            raise

    def _open(
        self, source_url: str, destination_url: str,
        credentials: tuple[Credentials | None, Credentials | None],
    ) -> None:
        exclude_attrs = self.options.exclude_attrs
        self.source = open_endpoint(
            source_url, role="source", credentials=credentials[0], exclude_attrs=exclude_attrs,
        )
        try:
            self.destination = open_endpoint(
                destination_url, role="destination", credentials=credentials[1],
                exclude_attrs=exclude_attrs,
            )
        except BaseException:
            self.source.close()
            raise

    # -- life ------------------------------------------------------------------------------
    def wire(self) -> dict[str, int] | None:
        """Bytes sent and received on the links of remote endpoints so far (None when
        neither is remote)."""
        links = [e.features.linked for e in (self.source, self.destination)
                 if e.features.linked is not None]
        if not links:
            return None
        counts = [link.wire() for link in links]
        return {"sent": sum(c[0] for c in counts), "received": sum(c[1] for c in counts)}

    def round_trips(self) -> int | None:
        """The round trips waited on on the links of remote endpoints so far, one after
        the other (``Linked.round_trips``; both remote: the sum); None when neither
        is remote."""
        links = [e.features.linked for e in (self.source, self.destination)
                 if e.features.linked is not None]
        return sum(link.round_trips() for link in links) if links else None

    def close(self) -> None:
        """Close the journal, the history and both endpoints (idempotent)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.history is not None:
            self.history.close()
            self.history = None
        self.source.close()
        self.destination.close()
        if self._lock is not None:
            os.close(self._lock)  # the lock goes with its descriptor
            self._lock = None

    def __enter__(self) -> PairSession:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _attributes_since(self) -> None:
        """Tell each endpoint its mark of the last sync that left the pair equal: only
        nodes whose ctime moved since have their attributes read (``Keep.since_ns``).
        ``self.keep.since_ns`` is the source's mark (non-zero: both sides have one)."""
        keep, history = self.keep, self.history
        if keep is None or history is None or not (keep.xattrs or keep.acls):
            return
        since, dst_since = history.meta_since(keep.signature())
        src, dst = self.source.features.metadata, self.destination.features.metadata
        if since and dst_since and src is not None and dst is not None:
            self.keep = evolve(keep, since_ns=since)
            src.metadata(self.keep)
            dst.metadata(evolve(self.keep, since_ns=dst_since, uids=(), gids=()))

    def mark_equal(self, started_ns: int, *, changed: bool = True) -> None:
        """A sync whose scans began at ``started_ns`` left the pair equal (no problem),
        its writes to the destination durable by now: attributes of nodes unchanged
        since need not be read again. Each side gets its own mark: the source's is
        when its scan began (a change after it moved a ctime past it); the
        destination's is after its last write, and the run ends a clock tick later (a
        change after it has a later ctime), so that the nodes this sync wrote are not
        read back (the first re-sync after a copy would otherwise list and compare
        every directory it wrote into). Each is set back by how far the endpoint's ctimes
        may lag this host's clock (``CtimeClock``: over ssh, the far tree's lag plus the
        distance between the two hosts' clocks), and the run waits the destination's
        lag after its mark (less the time since its last write to the destination:
        ``written_ns``); where either is 2 s or more (a filesystem stamping whole
        seconds, a far clock that far off, an endpoint that cannot say) both sides
        keep one mark, their start less 2 s. The price:
        an attribute changed on the destination by someone else while this sync
        ran, before now, is not seen until that node's ctime moves again (``verify``
        reads everything).

        A run that ``changed`` nothing keeps the marks it started from while the
        source's is younger than ``MARK_REFRESH_NS``: a no-op writes nothing to the
        history (no commit, no checkpoint, no fsync at close). An older mark is still
        true; it only has a few more nodes' attributes read (those whose ctime moved
        without any change to sync)."""
        if self.keep is not None and self.history is not None and (
            self.keep.xattrs or self.keep.acls
        ):
            since = self.keep.since_ns
            if not changed and since and started_ns - since < MARK_REFRESH_NS:
                return
            src_lag, dst_lag = _ctime_lag(self.source), _ctime_lag(self.destination)
            if max(src_lag, dst_lag) >= CLOCK_MARGIN_NS:
                # a clock not known well enough (another host's): one mark, as it
                # began, for both (a destination mark 2 s before now would have the
                # nodes a short run wrote read back while their sources are not)
                since = started_ns - CLOCK_MARGIN_NS
                self.history.set_meta_since(since, since, self.keep.signature())
                return
            # the destination's mark: after every write of this run (durable by now),
            # and the run ends a tick after it, so that a change from then on has a
            # ctime past it (the run's own last writes, a directory's mtime set a
            # moment ago, stay before it). Where the last write ended a tick ago or
            # more (the history recorded and the flush waited for since), the mark is
            # a tick before now and the run does not wait.
            now = time.time_ns()
            last = self.written_ns
            written = now if last is None else min(now, max(last, now - dst_lag))
            if written + dst_lag > now:
                time.sleep((written + dst_lag - now) / 1e9)
            self.history.set_meta_since(started_ns - src_lag, written, self.keep.signature())

    # -- the rules of SPEC 8 ----------------------------------------------------------------
    def _check_pair(self) -> None:
        """The same tree, or one inside the other, is refused; so is a pair of a tree of
        files and a tree of entries (one has content, the other attributes)."""
        src, dst = self.source, self.destination
        if src.capabilities.content != dst.capabilities.content:
            raise UsageError(
                f"{dst.url}: cannot sync {src.url} into it (files and directory "
                "entries are different kinds of trees)"
            )
        rel = relation(src, dst)
        if rel == "same":
            raise UsageError(f"{dst.url}: source and destination are the same tree")
        if rel == "inside":
            raise UsageError(f"{dst.url}: destination is inside the source {src.url}")
        if rel == "contains":
            raise UsageError(f"{src.url}: source is inside the destination {dst.url}")

    def _share_schema(self) -> None:
        """Each endpoint that compares by a schema learns its peer's, and the files of
        ``--schema`` (``SchemaAware``); ``--schema`` with no such endpoint is a usage
        error (it would change nothing)."""
        pairs = [(aware, peer) for a, peer in ((self.source, self.destination),
                                               (self.destination, self.source))
                 if (aware := schema_aware(a)) is not None]
        if self.options.schema and not pairs:
            raise UsageError(
                f"--schema {self.options.schema[0]}: neither {self.source.url} nor "
                f"{self.destination.url} compares by a schema (ldap://, ldif:)"
            )
        for aware, peer in pairs:
            aware.use_schema(self.options.schema, peer.backend)

    def check_source_root(self) -> None:
        """A source root that is missing or unusable stops the run before anything is
        done (``SafetyError``); checked at open and before every full scan."""
        why = self.source.backend.root_error()
        if why is not None:
            raise SafetyError(f"{self.source.url}: source {why}; nothing done")

    def check_source(self, incomplete: Mapping[Key, str], n_src: int, n_dst: int) -> None:
        """After the scans: a source root that could not be listed (``incomplete``), or
        a source that is empty while the destination is not, is never a reason to
        delete (``SafetyError``, unless ``--allow-empty-source``)."""
        url = self.source.url
        if () in incomplete:
            raise SafetyError(f"{url}: source {incomplete[()]}; nothing done")
        if n_src <= 1 and n_dst > 1 and not self.options.allow_empty_source:
            raise SafetyError(
                f"{url}: source is empty but the destination is not; refusing to delete "
                "everything (--allow-empty-source to allow it)"
            )

    def _check_destination_root(self) -> None:
        """A destination that is there must be usable; one that is not must be one the
        first batch can create (``root_error`` says why not)."""
        why = self.destination.backend.root_error()
        if why is not None:
            raise UsageError(f"{self.destination.url}: destination {why}")

    def _check_destination_was_there(self) -> None:
        """A missing destination is created only at the pair's first run: one that a
        sync filled before and is gone now (an unmounted disk) is never recreated where
        its mount point was (``SafetyError``)."""
        h = self.history
        if h is None or self.destination.backend.root_id() is not None:
            return
        if h.complete or not h.is_empty():
            raise SafetyError(
                f"{self.destination.url}: the destination is gone although it was synced "
                "before (an unmounted disk?); not recreated: mount it, or create the "
                "directory to sync into it again"
            )

    _deletes: bool | None = None

    @property
    def deletes_allowed(self) -> bool:
        """Whether destination-only nodes may be deleted (``_may_delete``): decided as
        the pair opens; in a session without history (``verify``, which plans no
        deletions: over a link, whether the destination is empty is a round trip)
        when first asked."""
        if self._deletes is None:
            self._deletes = self._may_delete()
        return self._deletes

    @deletes_allowed.setter
    def deletes_allowed(self, value: bool) -> None:
        self._deletes = value

    def _may_delete(self) -> bool:
        """Whether destination-only nodes may be deleted (SPEC 8): always with
        ``--delete`` (or ``--delete-excluded``), never with ``--no-delete``; by default
        only when the pair was synced before with deletions allowed, or the destination
        is empty (then all it will hold comes from this source). A destination hsync
        never synced from this source keeps what the source lacks (``withhold_deletes``)."""
        delete = self.options.delete
        if delete is None and self.options.delete_excluded:
            delete = True  # rsync: --delete-excluded implies --delete
        if delete is not None:
            if delete:
                self._remember_deletes()
            return delete
        h = self.history
        if h is not None and h.deletes_allowed:
            return True
        if self.destination.backend.is_empty():
            self._remember_deletes()
            return True
        return False

    def withhold_deletes(self, nothing_withheld: bool) -> None:
        """After a comparison of the whole trees that withheld deletions: when there
        was nothing to withhold, the destination holds nothing foreign and the pair
        deletes from now on."""
        if nothing_withheld and not self.deletes_allowed:
            self._remember_deletes()
            self.deletes_allowed = True

    def _remember_deletes(self) -> None:
        h = self.history
        if h is not None and not h.readonly and not self.options.dry_run:
            h.allow_deletes()

    @property
    def history_trusted(self) -> History | None:
        """The history when it is complete (moves may be taken from it), else None."""
        h = self.history
        return h if h is not None and h.complete else None


def _ctime_lag(endpoint: Endpoint) -> int:
    """How far behind this host's clock the endpoint's ctimes may be (a remote one's
    come from another host's clock: its agent says how far apart the clocks are)."""
    backend = endpoint.backend
    if isinstance(backend, CtimeClock):
        return min(CLOCK_MARGIN_NS, max(0, backend.ctime_lag_ns()))
    return CLOCK_MARGIN_NS


_WHAT = {"user": "user.* extended attributes", "trusted": "trusted.* extended attributes",
         "security": "security.* extended attributes"}


def negotiate(
    source: Endpoint, destination: Endpoint, options: Options, notices: list[str]
) -> Keep | None:
    """What metadata the pair keeps (SPEC 2), told to both endpoints before any scan:
    what the options ask for, narrowed to what the source can read and the destination
    can hold (owner and group only where it may chown, attribute namespaces its
    filesystem has), owners and groups mapped by name unless ``--numeric-ids``. What the
    destination's filesystem cannot hold is said once, in ``notices``; the rest syncs."""
    src, dst = source.features.metadata, destination.features.metadata
    if src is None or dst is None:
        return None
    wanted = Keep(
        owner=options.owner, group=options.group, acls=options.acls,
        xattrs=frozenset(("user", "trusted", "security") if options.xattrs else ()),
    )
    readable = src.metadata(wanted)
    keep = dst.metadata(readable)
    lost = [_WHAT[ns] for ns in sorted(readable.xattrs - keep.xattrs)]
    if readable.acls and not keep.acls:
        lost.append("POSIX ACLs")
    if lost:
        notices.append(
            f"{destination.url}: its filesystem cannot keep {', '.join(lost)}: "
            f"not synced (--no-xattrs, --no-acls to say so)"
        )
    if (keep.owner or keep.group) and not options.numeric_ids and not (
        local_path(source.url) and local_path(destination.url)
    ):  # two trees of this machine: the same names (not read twice: a no-op's ~1 ms)
        (su, sg), (du, dg) = src.id_names(), dst.id_names()
        if (su, sg) != (du, dg):  # the same names for the same ids: one host, as is
            keep = evolve(keep, uids=id_map(su, du) if keep.owner else (),
                                gids=id_map(sg, dg) if keep.group else ())
    src.metadata(keep)  # the source's rows carry the destination's ids
    dst.metadata(evolve(keep, uids=(), gids=()))
    return keep


def open_history(
    source: Endpoint, destination: Endpoint, options: Options, notices: list[str]
) -> tuple[History | None, Journal | None]:
    """The pair's history, or None (no history asked for, or a dry run without one),
    and the journal to record this run's batches in (None: no history, a dry run, or
    turned off); the journal is opened once, for the roll-forward and the run.

    A batch that a killed run left unfinished is rolled forward first (the history is
    then incomplete: this run compares in full; see ``journal``). What the user must
    hear (a corrupt history set aside) is appended to ``notices``."""
    if options.state == "" or options.delete is False:
        return None, None
    from .history import History, default_state_path, sqlite3
    from .journal import open_for, recover

    path = options.state or default_state_path()
    _check_state_path(path, writing=not options.dry_run)
    src_id = source.backend.canonical_url()
    dst_id = destination.backend.canonical_url()
    history = None
    try:
        if not options.dry_run:
            history = History(path, src_id, dst_id)
        elif os.path.exists(path):  # a dry run reads the history, never creates it
            history = History(path, src_id, dst_id, readonly=True)
    except (OSError, sqlite3.Error) as e:
        raise UsageError(f"{path}: cannot open the history: {e}") from None
    if history is not None and history.set_aside is not None:
        aside, why = history.set_aside
        notices.append(f"{path}: the history was unreadable ({why}): set aside as {aside}, "
                       "a new one started (this run compares in full)")
    try:
        journal = open_for(history)
    except BaseException:
        if history is not None:
            history.close()
        raise
    if history is not None and not recover(history, journal) and history.readonly:
        history.close()  # a dry run after a killed one: plan without the history
        return None, None
    return history, journal


_LOCK_WIDTH = 24  # a pid, its newline and spaces: the lock file's fixed size


def lock_pair(source: Endpoint, destination: Endpoint, options: Options) -> int | None:
    """Take the pair's lock (SPEC 8: one run per pair at a time): ``flock`` on a file
    beside the history, ``<state>.lock-<pair id>``, holding the holder's pid. Returns its
    descriptor (closing it releases the lock), or None without a history location.
    Another run holding it: ``--wait-lock`` waits, else ``UsageError`` naming its pid."""
    if options.state == "":
        return None
    from .history import default_state_path, pair_id

    state = options.state or default_state_path()
    _check_state_path(state, writing=True)  # before a lock file is made beside it
    pair = pair_id(source.backend.canonical_url(), destination.backend.canonical_url())
    path = f"{state}.lock-{pair}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise UsageError(f"{path}: cannot open the pair's lock: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not options.wait_lock:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise UsageError(
                    f"{destination.url}: another hsync run (pid {holder}) is syncing this "
                    f"pair (lock {path}); --wait-lock waits for it"
                ) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        # the pid padded to one width, written over the last holder's: no truncate (on a
        # busy ext4 disk a truncate waits for the journal, up to a second here)
        os.pwrite(fd, f"{os.getpid()}\n".ljust(_LOCK_WIDTH).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_state_path(path: str, *, writing: bool) -> None:
    """A ``--state`` that is a directory, or a file (or a directory to hold it) that
    cannot be read or written, is refused (``UsageError``): never set aside as corrupt."""
    mode = os.R_OK | (os.W_OK if writing else 0)
    if os.path.isdir(path):
        raise UsageError(f"{path}: the history (--state) is a directory")
    if os.path.lexists(path):
        if not os.access(path, mode):
            what = "readable and writable" if writing else "readable"
            raise UsageError(f"{path}: the history (--state) is not {what}")
        if not writing:
            return
    parent = os.path.dirname(os.path.abspath(path))
    while writing and not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise UsageError(f"{path}: the history (--state) cannot be created: "
                             f"{parent} is not a directory")
        parent = os.path.dirname(parent)
    if writing and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: the history (--state) cannot be written: {parent} "
                         "is not writable")

