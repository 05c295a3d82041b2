"""The local side of a remote endpoint: the backend contract, forwarded to an agent.

``open_remote`` (registered for ``ssh``) starts the link, opens the far tree and builds
a ``RemoteBackend`` that offers exactly the optional capabilities the far backend
offers (its ``Features``, sent when it opens), each forwarded:

- scans, digest scans (``DigestScanning``: the scan and the directory digests run on
  the far side; only the summary, then the listings and rows that differ, cross the
  link), the sorted walk and the streamed walk (pages of rows), ``hash_many``;
- ``read``: one file streamed in chunks; ``prefetch`` (a batch's files asked for at
  once, their contents streamed back in pages: one round trip per batch, not per file);
- ``submit_batch`` (``Windowed``; ``apply_batch`` is a submit and its result): a
  window of batches in flight (``--window``), each numbered within the sender's
  session; the far side applies them in order and acknowledges each once it is
  flushed and journaled. A link that breaks is reconnected (``_recover``) and the
  batches not acknowledged are resent, none applied twice. Each batch carries
  the ops, the part of the final snapshot they need, then the content
  of the files they create or update, in pages (small files many to a page, big files
  in chunks). An updated file the far side holds an old version of (``use_delta``)
  crosses as an rsync delta against it (``_signatures``, one request per batch, then
  ``_send_delta``); a delta that does not verify there is retried whole. A move is an
  op like any other: a rename on the far side, no content crosses;
- as a source, the files a batch updates are read as deltas against the local
  destination's old files (``delta_bases``, ``_read_delta``);
- ``Metadata``: the far backend's user and group names and the negotiation of what
  metadata is kept (owner, group, xattrs, ACLs travel in the rows' ``data``);
- ``watch``: the agent watches and streams the dirty keys.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import attrs

from .. import delta as deltas
from .._values import evolve
from ..backend import (
    ApplyOptions,
    ApplyResult,
    Capabilities,
    ContentSource,
    Credentials,
    DigestSummary,
    Hashed,
    IdNames,
    Keep,
    Linked,
    Relation,
    Role,
    ScanOptions,
    Spooling,
    WatchSink,
)
from ..cancel import NEVER, Cancel
from ..errors import (
    CANCELLED,
    BackendError,
    HsyncError,
    LinkLost,
    NodeError,
    SourceChanged,
    UsageError,
)
from ..filters import Exclude
from ..model import CREATE, DIR, FILE, MOVE, UPDATE, Key, Node, Op, Problem, Row, Snapshot
from . import BATCH_BYTES, Reach, current
from .agent import data_pieces, decode_snapshot, encode_snapshot
from .protocol import CHUNK, INLINE, NOT_APPENDED, Spool, content_file, encode_ops, unpack
from .transport import Link
from .url import RemoteUrl, parse

PREFETCH_KEYS = 1000
"""Files asked for in one request of a prefetch."""
PREFETCH_LIMIT = 4 << 20
"""Files larger than this are not prefetched: each is streamed when it is read."""
PREFETCH_BUFFER = 64 << 20
"""Prefetched content held at most before the next request waits for reads."""
PAGE_BYTES = 1 << 20
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
"""The pauses before each try to reconnect a link that broke while batches were in
flight (about 8 s in all; then the run ends and the next one resumes)."""
EARLY = ("root_error", "root_id", "id_names")
"""Requests sent right behind the open, without waiting for it: a session asks them
first (``PairSession`` checks the roots and maps owners by name), so their answers come
back with the open's. Their answers stand until the first scan, batch or watch begins
(``_Asking._begin``): a session that checks a root twice before its first scan (at the
open, then as the comparison starts) waits for it once."""


class _Asking:
    """What a remote backend and its capability mixins share: the link, and the
    answers not waited for yet (requests sent with the open, ``EARLY``; requests whose
    answer says nothing but success)."""

    link: Link
    _early: dict[str, Callable[[], Any]]
    """Requests sent with the open (``EARLY``), their answers not yet taken."""
    _facts: dict[str, Any]
    """The answers of ``EARLY`` taken, standing until the first scan or batch."""
    _root_at_open: bool | None = None
    """Whether the far root was there when the tree was opened (None: not asked)."""
    _later: list[Callable[[], Any]]
    """Requests whose answer says nothing but success, not yet taken (``_settle``)."""

    def _asked(self, method: str) -> Any:
        """The answer to ``method`` (no arguments): the one sent with the open
        (``EARLY``) until the first scan, batch or watch begins (``_begin``: the far
        tree as it was opened, nothing done to it yet; the open's round trip carried
        it), else asked now."""
        if method in self._facts:
            return self._facts[method]
        early = self._early.pop(method, None)
        if early is not None:
            answer = early()
            self._facts[method] = answer
            if method == "root_id":
                self._root_at_open = answer is not None
            return answer
        ask = self.link.ask(method)
        self._settle()  # answered before it: no wait of its own
        return ask()

    _begun_once = False
    """A scan, batch or watch began: the open's answers no longer stand."""

    def _begin(self) -> None:
        """A scan, a batch or a watch begins: from now on the far tree's root is asked
        about again (a watch's root may go), not taken from the open's answers."""
        self._facts.clear()
        self._early.clear()
        self._begun_once = True
        self._ask_clock()

    def _absent_at_open(self) -> bool:
        """True while the open's answers stand and said the far root was absent then:
        nothing has been done to the far tree since (an initial copy's destination)."""
        return (not self._begun_once and ("root_id" in self._facts or "root_id" in self._early)
                and self._asked("root_id") is None)

    def _ask_clock(self) -> None:
        """Where the far tree says how its ctimes lag (``_CtimeClock``): its clock read
        now, once, beside the first scan or batch."""

    def _settle(self) -> None:
        """Take the answers of the requests sent without waiting (``configure_scan``):
        their errors are raised here, before a scan's result or a batch is used.
        Called after a request is sent, it waits for nothing of its own (the agent
        answers in order)."""
        later = self._later
        while later:
            later.pop(0)()
SIGNATURES_MAX = 64 << 20
"""Signature bytes asked for ahead of one batch at most (384 KiB per GiB of file): the
files beyond are sent whole."""
_DEFAULTS = ApplyOptions()


def _needs_content(op: Op) -> bool:
    return (op.node is not None and op.node.kind == FILE
            and (op.op == CREATE or (op.op == UPDATE and op.content)))


class _Prefetch:
    """The contents of a batch's files, asked for in a few requests and kept until read."""

    def __init__(self, backend: RemoteBackend, keys: list[Key]) -> None:
        self.backend = backend
        self.cond = threading.Condition()
        self.parts: dict[Key, list[bytes]] = {}
        self.ready: dict[Key, tuple[int, str | None]] = {}
        self.wanted = set(keys)
        self.buffered = 0
        self.failed: str | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, args=(keys,), daemon=True,
                                       name="hsync-prefetch")
        self.thread.start()

    def _run(self, keys: list[Key]) -> None:
        try:
            while True:
                link = self.backend.link
                try:
                    self._fetch(link, keys)
                    return
                except BackendError as e:
                    if not self.backend.relinkable(link, e):
                        raise
                    with self.cond:
                        if self.stopped:
                            return
                        # a file not all arrived is asked for again, whole, on the
                        # new link (a file is published only once all of it came)
                        keys = [k for k in keys if k in self.wanted and k not in self.ready]
                        for k in keys:
                            self.buffered -= sum(len(p) for p in self.parts.pop(k, []))
                    self.backend.relink(link, e)
        except Exception as e:
            with self.cond:
                self.failed = str(e)
                self.cond.notify_all()

    def _fetch(self, link: Link, keys: list[Key]) -> None:
        for i in range(0, len(keys), PREFETCH_KEYS):
            with self.cond:
                while self.buffered > PREFETCH_BUFFER and not self.stopped:
                    self.cond.wait()
                if self.stopped:
                    return
            for page in link.stream("read_many", keys[i:i + PREFETCH_KEYS],
                                    PREFETCH_LIMIT, self.backend._sparse):
                with self.cond:
                    for key, data, end in page:
                        if data:
                            self.parts.setdefault(key, []).append(data)
                            self.buffered += len(data)
                        if end is not None:
                            self.ready[key] = (end[0], end[1])
                    self.cond.notify_all()

    def take(self, key: Key) -> BinaryIO | None:
        """The content of ``key`` (waiting for it), or None when it is not prefetched
        or too big to be."""
        with self.cond:
            if key not in self.wanted:
                return None
            while key not in self.ready and self.failed is None:
                self.cond.wait()
            if key not in self.ready:
                raise OSError(self.failed)
            self.wanted.discard(key)
            mtime, error = self.ready.pop(key)
            parts = self.parts.pop(key, [])
            self.buffered -= sum(len(p) for p in parts)
            self.cond.notify_all()
        if error == "big":
            return None
        if error is not None:
            raise SourceChanged(error)
        return content_file(parts, mtime)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.thread.join()


class _Deltas:
    """The deltas of a batch's updated files when the far side is the source: the
    local old files are signed here, in the batch's order, and sent in a few
    ``read_deltas`` requests (up to ``SIGNATURES_MAX`` of signatures each), the far side
    streams a delta per file: one round trip per batch, not per file (as ``_Prefetch``
    for whole files). A delta is kept (in memory, or an unnamed temporary file when
    big) until the apply reads its file."""

    def __init__(self, link: Link, basis: Any, keys: list[Key],
                 grown: set[Key] | None = None) -> None:
        self.link = link
        self.basis = basis
        self.grown = grown or set()
        """The keys whose file is no shorter than the old one here: perhaps appended."""
        self.cond = threading.Condition()
        self.spools: dict[Key, Spool] = {}
        self.ends: dict[Key, Any] = {}
        self.wanted = set(keys)
        self.failed: str | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, args=(keys,), daemon=True,
                                       name="hsync-deltas")
        self.thread.start()

    def _sign(self, key: Key) -> list[bytes]:
        try:
            with self.basis.read(key) as old:
                return list(deltas.signature(old.fileno()))
        except (OSError, NodeError, deltas.DeltaError):
            return []

    def _digest(self, key: Key) -> list[Any]:
        """``[size, digest]`` of the old file here, whole (or nothing)."""
        try:
            with self.basis.read(key) as old:
                return list(deltas.whole_digest(old.fileno()))
        except (OSError, NodeError):
            return []

    def _run(self, keys: list[Key]) -> None:
        """First the files that may only have grown, with the digest of their old file
        and no signature (the far side sends an append where its file begins with
        it, else says ``NOT_APPENDED``); then the others and those, signed."""
        try:
            first = [[k, [], *d] for k in keys if k in self.grown and (d := self._digest(k))]
            refused = set(self._ask(first)) if first else set()
            asked = {item[0] for item in first}
            self._signed([k for k in keys if k not in asked or k in refused])
        except Exception as e:
            with self.cond:
                self.failed = str(e)
                self.cond.notify_all()

    def _signed(self, keys: list[Key]) -> None:
        i = 0
        while i < len(keys) and not self.stopped:
            wanted: list[list[Any]] = []
            size = 0
            while i < len(keys) and size < SIGNATURES_MAX:
                sig = self._sign(keys[i])
                if sig:
                    wanted.append([keys[i], sig])
                    size += sum(len(c) for c in sig)
                else:
                    self._end(keys[i], [None, "no signature"])
                i += 1
            if wanted:
                self._ask(wanted)

    def _ask(self, wanted: list[list[Any]]) -> list[Key]:
        """One ``read_deltas`` request; the keys the far side found not appended."""
        refused: list[Key] = []
        for page in self.link.stream("read_deltas", wanted):
            for key, data, end in page:
                key = tuple(key)
                if data:
                    spool = self.spools.get(key)
                    if spool is None:
                        spool = self.spools[key] = Spool()
                    spool.add(data)
                if end is not None:
                    if end[0] is None and end[1] == NOT_APPENDED:
                        refused.append(key)
                    else:
                        self._end(key, end)
        return refused

    def _end(self, key: Key, end: Any) -> None:
        with self.cond:
            self.ends[key] = end
            self.cond.notify_all()

    def take(self, key: Key) -> tuple[Spool, Any] | None:
        """The delta of ``key`` and its end (``[mtime_ns, size, digest]``, or ``[None,
        why]``), waiting for it; None when it is not asked for or the requests failed."""
        with self.cond:
            if key not in self.wanted:
                return None
            self.wanted.discard(key)
            while key not in self.ends and self.failed is None:
                self.cond.wait()
            end = self.ends.pop(key, None)
            spool = self.spools.pop(key, None) or Spool()
        if end is None:
            spool.close()
            return None
        return spool, end

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
        self.thread.join()
        for spool in self.spools.values():
            spool.close()
        self.spools.clear()


class _FarCancel:
    """Forwards the cancel of a batch in flight to the agent (a ``cancel`` request): a
    cancelled token (a watch that stops), or a Ctrl-C here (SIGTERM too, in a one-shot
    run). The agent cancels the batch's token, so its apply stops at the next op, and
    ends its content: a file whose content had not all arrived is not published (its
    temporary file is removed). The batch is still answered, so what it did is known,
    journaled and acknowledged; a second Ctrl-C stops waiting for that."""

    def __init__(self, link: Link, rid: int, cancel: Cancel) -> None:
        self.link = link
        self.rid = rid
        self.sent = False
        self.interrupted = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if cancel is not NEVER:
            self._thread = threading.Thread(target=self._watch, args=(cancel,),
                                            daemon=True, name="hsync-far-cancel")
            self._thread.start()

    def _watch(self, cancel: Cancel) -> None:
        while not self._done.is_set():
            if cancel.wait(0.1):
                self.cancel()
                return

    def cancel(self) -> None:
        if not self.sent:
            self.sent = True
            with contextlib.suppress(BackendError):
                self.link.tell("cancel", self.rid)

    def interrupt(self) -> bool:
        """A Ctrl-C: the first one cancels the batch there and waits for its answer
        (True); the next one stops waiting (False)."""
        if self.interrupted:
            return False
        self.interrupted = True
        self.cancel()
        return True

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class _RemoteScan:
    """A digest scan running on the far side (``DigestScan``), by its handle there.

    Nothing waits for the scan's start: the summary (or the snapshot, ``verify``'s) is
    asked right behind it (by the
    handle, the start's request id; the agent answers in order), and its close is
    not waited for (``ds_close`` says only that it is closed: a request sent after it
    is served after it, and the link's close waits for the agent, which answers it
    first)."""

    def __init__(self, link: Link, handle: int,
                 started: Callable[[], Any] | None = None) -> None:
        self.link = link
        self.handle = handle
        self._started = started
        """The answer to the request that started the scan, not yet taken (the scan's
        handle is that request's id: nothing waits for it before the summary)."""
        self._closed = False
        self._root: Any = _UNSEEN
        """The root's row as the summary gave it (``rows`` of the root alone is that)."""
        self._got: dict[Key, Row] = {}
        """The rows the far scan sent so far: a scan's rows do not change, so what was
        asked once is not asked again (a comparison asks its regions' rows in rounds,
        ``digests.compare_by_digests``, the last one mostly what the earlier got)."""
        self._keys: set[Key] = set()
        """Keys whose rows were asked (``_got`` holds those that are there)."""
        self._trees: set[Key] = set()
        """Subtrees whose rows were asked, all of them."""

    def _begun(self) -> None:
        """The scan's start answered (long ago by now: the far scan runs beside this
        side's); its error, where it failed, is raised here."""
        if self._started is not None:
            started, self._started = self._started, None
            started()

    def summary(self) -> DigestSummary:
        asked = self.link.ask("ds_summary", self.handle)  # sent before the start's answer
        self._begun()
        s: DigestSummary = asked()
        self._root = s.root
        self._keys.add(())
        if s.root is not None:
            self._got[()] = s.root
        return evolve(s, digests=dict(s.digests), incomplete=dict(s.incomplete),
                            skipped=list(s.skipped), held=set(s.held))

    def listings(self, dirs: Iterable[Key]) -> dict[Key, list[tuple[str, Row]]]:
        return self.ask_listings(dirs)()

    def ask_listings(
        self, dirs: Iterable[Key]
    ) -> Callable[[], dict[Key, list[tuple[str, Row]]]]:
        """Sent now: the round trip and the far side's listing overlap what this side
        does before it takes them."""
        self._begun()
        asked = self.link.ask("ds_listings", self.handle, list(dirs))
        return lambda: {k: list(v) for k, v in asked()}

    def rows(self, keys: Iterable[Key] = (), subtrees: Iterable[Key] = ()) -> dict[Key, Row]:
        """Only what was not asked before is asked (the root's row came with the
        summary): a comparison's last round of rows costs no round trip."""
        keys, subtrees = list(keys), list(subtrees)
        trees = self._trees
        new_keys = [k for k in keys if k not in self._keys and not _under(k, trees)]
        new_trees = [t for t in subtrees if not _under(t, trees)]
        if new_keys or new_trees:
            self._begun()
            self._got.update(self.link.call("ds_rows", self.handle, new_keys, new_trees))
            self._keys.update(new_keys)
            trees.update(new_trees)
        got = self._got
        out = {k: got[k] for k in keys if k in got}
        if subtrees:
            wanted = set(subtrees)
            out.update((k, r) for k, r in got.items() if _under(k, wanted))
        return out

    def snapshot(self) -> Snapshot:
        asked = self.link.ask("ds_snapshot", self.handle)  # as the summary is
        self._begun()
        snap = decode_snapshot(asked())
        self.close()
        return snap

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self.link.closed:
                with contextlib.suppress(BackendError):
                    # not waited for: its answer says only "closed" (an error closing
                    # a scan there was never the run's: it was ignored when waited for)
                    self.link.tell("ds_close", self.handle)


_UNSEEN = object()


def _under(key: Key, trees: set[Key]) -> bool:
    """Whether ``key`` is one of ``trees`` or below one."""
    return bool(trees) and any(key[:i] in trees for i in range(len(key) + 1))


class _RemoteWatch:
    """A watch run by the agent; its reports arrive as events and go to ``sink``."""

    def __init__(self, link: Link, sink: WatchSink) -> None:
        self.link = link
        self.sink = sink
        self.rid = 0
        self._thread: threading.Thread | None = None
        self._ended = threading.Event()

    def __enter__(self) -> _RemoteWatch:
        rid, q = self.link.open("watch")
        self.rid = rid
        answers = self.link.answer(rid, q)
        for tag, value in answers:
            if tag == "item":
                break
            if tag in ("ok", "err"):
                self.link.result(tag, value)
                raise BackendError(f"{self.link.host}: the watch did not start")

        def pump() -> None:
            try:
                for tag, value in answers:
                    if tag == "event":
                        self._event(value)
            except BackendError as e:
                self.sink.lost(str(e))
            finally:
                self._ended.set()

        self._thread = threading.Thread(target=pump, daemon=True, name="hsync-remote-watch")
        self._thread.start()
        return self

    def _event(self, event: Sequence[Any]) -> None:
        what = event[0]
        if what == "dirty":
            self.sink.dirty(tuple(event[1]), deep=event[2], writing=event[3])
        elif what == "lost":
            self.sink.lost(event[1])
        elif what == "moved":
            self.sink.moved(tuple(event[1]), tuple(event[2]), directory=bool(event[3]))
        elif what == "unwatched":
            self.sink.unwatched(tuple(event[1]), event[2])
        elif what == "died":
            self._ended.set()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.link.closed:
            with contextlib.suppress(BackendError):
                self.link.call("unwatch", self.rid)
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return not self._ended.is_set()

    @property
    def resumed(self) -> bool:
        return False

    def checkpoint(self) -> bytes | None:
        return None


class RemoteBackend(_Asking):
    """A tree on another host, through an agent (see the module docstring)."""

    def __init__(self, location: str, url: RemoteUrl, link: Link, role: Role,
                 opened: dict[str, Any], reach: Reach | None = None,
                 exclude_attrs: Sequence[str] = ()) -> None:
        self.url = location
        self.remote = url
        self.link = link
        self.role: Role = role
        self.reach = reach or Reach()
        self._exclude_attrs = list(exclude_attrs)
        self._window, self._batch_ops = self.reach.batches()
        self.session = os.urandom(8).hex()
        """This sender's batches are numbered within it (the far journal's key)."""
        self._flying: deque[_Batch] = deque()
        self._interrupted = False
        """A Ctrl-C cancelled the batches in flight (``_interrupt``)."""
        """Batches sent and not yet acknowledged, in order."""
        self._keep: Keep | None = None
        """The metadata negotiated (replayed on a new link)."""
        self.reconnects = 0
        self.far_url: str = opened["url"]
        self.far_canonical: str = opened["canonical"]
        far: Capabilities = opened["capabilities"]
        # the far side's scans wait on the link: they run beside the local ones; a
        # batch is answered once it is durable there (the answer acknowledges it)
        self.capabilities = evolve(far, waits=True, deferred_flush=False,
                                   streamed_ops=False)
        self.far_features: tuple[str, ...] = tuple(opened["features"])
        self._prefetch: _Prefetch | None = None
        self._seq = 0
        self.pair = ""
        self._whole: set[Key] = set()
        """Files whose delta failed: sent whole from now on."""
        self._delta_basis: Any = None
        self._near: str | None = None
        """Where a big file read for the destination waits (its ``Spooling``)."""
        self._sparse = False
        """A file with holes read for the destination keeps them (``prefetch``)."""
        self._delta_keys: set[Key] = set()
        self._grown: set[Key] = set()
        """Of those, the files no shorter than their old version (perhaps appended)."""
        self._deltas: _Deltas | None = None
        self._relinking = threading.Lock()
        self._wired = (0, 0)
        """Bytes sent and received on the links that broke before this one."""
        self._trips = 0
        """Round trips waited on on the links that broke before this one."""
        self._early = {}
        self._facts = {}
        self._later = []
        self._kept: Keep | None = None
        """The far side's answer to the last ``metadata`` it was waited for."""
        self._can: Keep | None = opened.get("keeps")
        """What of all the metadata there is the far tree can keep, said as it opened
        (None: an agent that does not say, or no metadata)."""
        self._clock: Callable[[], tuple[Any, int, int]] | None = None

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url!r}, role={self.role!r})"

    # -- Backend -----------------------------------------------------------------------
    def canonical_url(self) -> str:
        far = self.far_canonical
        path = far[len("file://"):] if far.startswith("file://") else "/" + far
        return self.remote.endpoint() + path

    def root_error(self) -> str | None:
        out: str | None = self._asked("root_error")
        return out

    def root_id(self) -> Hashable | None:
        out: Hashable | None = self._asked("root_id")
        return out

    def is_empty(self) -> bool:
        """Answered from the open's answers where the root was absent then (the
        contract's empty tree), else asked once until the first scan or batch begins
        (a session asks it twice before an initial copy: may it delete, may it stream)."""
        if self._absent_at_open():
            return True
        if "is_empty" in self._facts:
            return bool(self._facts["is_empty"])
        answer = self.link.ask("is_empty")
        self._settle()
        out = bool(answer())
        if not self._begun_once:
            self._facts["is_empty"] = out
        return out

    def scan(self, subtree: Key = (), *, exclude: Exclude | None = None,
             cancel: Cancel = NEVER) -> Snapshot:
        cancel.check()
        self._begin()
        answer = self.link.ask("scan", subtree, exclude)
        self._settle()
        return decode_snapshot(answer())

    def stat(self, key: Key) -> Node | None:
        if key == () and self._absent_at_open():
            return None  # the root absent at the open, nothing done since
        out: Node | None = self.link.call("stat", key)
        return out

    def stat_many(self, keys: Sequence[Key]) -> dict[Key, Node | OSError | None]:
        """``Linked.stat_many``: the requests sent back to back, then their answers
        taken: one round trip for all of them (the agent answers in order)."""
        asked = [(k, self.link.ask("stat", k)) for k in keys]
        out: dict[Key, Node | OSError | None] = {}
        for k, answer in asked:
            try:
                out[k] = answer()
            except OSError as e:
                out[k] = e
        return out

    def look_many(self, keys: Sequence[Key]) -> dict[Key, Any]:
        """``Linked.look_many``: one request for all of them where the agent says it
        answers one (``look_many`` among its features), else the ``look`` requests sent
        back to back (an agent from before it): one round trip either way."""
        if "look_many" in self.far_features:
            return dict(zip(keys, self.link.call("look_many", list(keys)), strict=True))
        asked = [(k, self.link.ask("look", k)) for k in keys]
        return {k: answer() for k, answer in asked}

    def read(self, key: Key) -> BinaryIO:
        if key in self._delta_keys:
            self._delta_keys.discard(key)
            f = self._read_delta(key)
            if f is not None:
                return f
        pre = self._prefetch
        if pre is not None:
            f = pre.take(key)
            if f is not None:
                return f
        for _ in range(len(RECONNECT_DELAYS)):
            link = self.link
            spool = Spool(self._near)
            try:
                rid, q = link.open("read", key, self._sparse)
                for tag, value in link.answer(rid, q):
                    if tag == "item":
                        if isinstance(value, bytes):
                            spool.add(value)
                        else:  # a piece of a file with holes, at its offset
                            spool.add(value[0], value[1])
                    else:
                        mtime = link.result(tag, value)
            except BackendError as e:
                spool.close()
                if not self.relinkable(link, e):
                    raise
                self.relink(link, e)  # read again, whole, on a new link
                continue
            except BaseException:
                spool.close()
                raise
            return spool.file(mtime)
        raise LinkLost(f"{self.link.host}: the link broke {len(RECONNECT_DELAYS)} times "
                       f"while {'/'.join(key)} was read; the next run resumes")

    def digest(self, key: Key) -> bytes | None:
        out: bytes | None = self.link.call("digest", key)
        return out

    def digest_many(self, keys: Sequence[Key]) -> dict[Key, bytes | None]:
        """``digest`` of each of ``keys``: the requests sent back to back, then their
        answers taken (one round trip, as ``stat_many``). A key whose digest failed
        there is left out (asked alone, ``digest`` raises what it raises)."""
        asked = [(k, self.link.ask("digest", k)) for k in keys]
        out: dict[Key, bytes | None] = {}
        for k, answer in asked:
            with contextlib.suppress(OSError, NodeError):
                out[k] = answer()
        return out

    # -- deltas when this is the source: the local destination patches -------------------
    def delta_bases(self, basis: Backend, ops: Sequence[Op]) -> None:
        """The batch about to run writes to ``basis`` (a local destination backend):
        the files it updates that a delta is worth it for are read as a delta against
        its old file there (``_read_delta``), not prefetched whole. Called before
        ``prefetch``. A big file read for it waits in an unnamed file on its
        filesystem (``Spooling``), which its apply links in."""
        self._delta_basis = basis
        self._near = basis.spool_dir() if isinstance(basis, Spooling) else None
        self._delta_keys = set()
        self._grown = set()
        if not deltas.available() or isinstance(basis, Linked):
            return  # a far destination would ship its old file here to be signed
        for op in ops:
            if (op.op == UPDATE and op.content and op.node is not None
                    and op.node.kind == FILE and op.old is not None
                    and op.old.kind == FILE and op.key not in self._whole
                    and deltas.use_delta(op.old.size, op.node.size)):
                self._delta_keys.add(op.key)
                if op.node.size >= op.old.size:
                    self._grown.add(op.key)

    def _read_delta(self, key: Key) -> BinaryIO | None:
        """The new content of ``key``: the far side's delta against the destination's
        old file (asked for with the batch's others, ``_Deltas``), patched as the apply
        publishes it (``delta.Patched``: written once, into the temporary file it
        renames) and checked against the far side's trailer. None when the far side
        sent no delta: the caller reads the file whole. One that does not verify (the
        old file changed since it was signed) fails the copy as a changed source: the
        apply's retry reads it whole (``_whole``)."""
        fetch = self._deltas
        got = fetch.take(key) if fetch is not None else None
        if got is None:
            return None
        spool, end = got
        if not end or end[0] is None:
            spool.close()
            return None
        mtime, size, digest = end
        basis = self._delta_basis
        made = deltas.Patched(spool.file(0), lambda: basis.read(key),
                              deltas.Trailer(size, digest), mtime,
                              on_fail=lambda: self._whole.add(key), delta_size=spool.size)
        return cast(BinaryIO, made)

    def prefetch(self, keys: Sequence[Key], *, sparse: bool = False) -> None:
        self._sparse = sparse
        if self._prefetch is not None:
            self._prefetch.stop()
            self._prefetch = None
        if self._deltas is not None:
            self._deltas.stop()
            self._deltas = None
        if self._delta_keys:
            self._deltas = _Deltas(self.link, self._delta_basis,
                                   [k for k in keys if k in self._delta_keys], self._grown)
        keys = [k for k in keys if k not in self._delta_keys]
        if keys:
            self._prefetch = _Prefetch(self, list(keys))

    # -- batches: a window in flight, acknowledged in order --------------------------------
    def name_pair(self, pair: str) -> None:
        self.pair = pair

    def window(self) -> int:
        return self._window

    def batch_limits(self) -> tuple[int, int]:
        return self._batch_ops, BATCH_BYTES

    def apply_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = _DEFAULTS,
        cancel: Cancel = NEVER,
        on_done: Callable[[Op], None] | None = None,
    ) -> ApplyResult:
        result = self.submit_batch(ops, source, final, options=options,
                                   cancel=cancel).result()
        if on_done is not None:
            for op in result.done:
                on_done(op)
        return result

    def submit_batch(
        self,
        ops: Sequence[Op],
        source: ContentSource,
        final: Snapshot,
        *,
        options: ApplyOptions = _DEFAULTS,
        cancel: Cancel = NEVER,
    ) -> _Pending:
        """Send a batch: its sequence number, ops, the part of ``final`` its apply
        reads, then its content; return without waiting for the acknowledgement. The
        agent applies the batches in the order sent."""
        self._begin()
        self._settle()
        if cancel.cancelled():
            return _Pending(self, ApplyResult(problems=[
                Problem(op.key, f"{op.op} not run: {cancel.reason}", op=op.op, kind=CANCELLED)
                for op in ops]))
        self._seq += 1
        batch = _Batch(self._seq, list(ops), _final_part(ops, final),
                       evolve(options, defer_durable=False), source, cancel=cancel)
        self._flying.append(batch)
        try:
            self._send(batch)
        except LinkLost as e:
            self._recover(e)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM in a one-shot run
            self._interrupt()
            if batch.q is not None:
                with contextlib.suppress(BackendError):
                    self.link.send_more(batch.rid, None)  # what did not cross does not arrive
            self._drain_interrupted()
        return _Pending(self, batch)

    def _interrupt(self) -> bool:
        """A Ctrl-C with batches in flight (``_FarCancel``): the first cancels every one
        of them there (each stops at its next op, and is answered: what it did is
        journaled there) and goes on waiting (True); the next stops waiting (False)."""
        if self._interrupted:
            return False
        self._interrupted = True
        for batch in self._flying:
            if batch.stop is not None:
                batch.stop.interrupt()
        return True

    def _drain_interrupted(self) -> None:
        """After a Ctrl-C: wait for the answers of the batches still in flight (each
        ended over there at an op's boundary), then raise the ``KeyboardInterrupt``."""
        try:
            while self._flying:
                batch = self._flying.popleft()
                try:
                    if batch.answer is None and batch.q is not None:
                        with contextlib.suppress(HsyncError, OSError):
                            for _ in self.link.answer(batch.rid, batch.q, self._interrupt):
                                pass
                finally:
                    if batch.stop is not None:
                        batch.stop.close()
        finally:
            self._interrupted = False
        raise KeyboardInterrupt

    def _send(self, batch: _Batch, *, resumed: bool = False) -> None:
        """The batch's request, then its content (``resumed``: the far side began it
        before the link broke and checks each op against what is there)."""
        sigs = self._signatures(batch.ops, batch.source)
        batch.sigs = set(sigs)
        batch.answer = None
        if batch.stop is not None:  # sent again: the cancel goes to the new request
            batch.stop.close()
            batch.stop = None
        rid, q = self.link.open("apply", batch.seq, encode_ops(batch.ops), batch.final,
                                batch.options,
                                self.pair, self.session, resumed)
        batch.rid, batch.q = rid, q
        batch.stop = _FarCancel(self.link, rid, batch.cancel)
        self._send_content(rid, batch.ops, batch.source, sigs, batch.stop,
                           sparse=batch.options.sparse)

    def acknowledged(self, batch: _Batch) -> ApplyResult:
        """The result of ``batch``, once the far side acknowledged it and every batch
        sent before it (their results are kept for their own ``result``)."""
        while batch.result is None and batch.error is None:
            head = self._flying[0]
            answer = head.answer
            if answer is None:
                try:
                    for tag, value in self.link.answer(head.rid, head.q, self._interrupt):
                        if tag in ("ok", "err"):
                            answer = self.link.result(tag, value)
                except LinkLost as e:
                    if self._interrupted:
                        self._drain_interrupted()
                    self._recover(e)
                    continue
                except (HsyncError, OSError) as e:  # the batch failed there as a whole
                    self._flying.popleft()
                    if head.stop is not None:
                        head.stop.close()
                    # the far error's text alone named neither the host nor the tree
                    head.error = e if isinstance(e, HsyncError) else BackendError(
                        f"{self.link.host}: {self.remote.path}: the batch failed there: "
                        f"{e.strerror or e}")
                    if self._interrupted:
                        self._drain_interrupted()
                    continue
            self._flying.popleft()
            if head.stop is not None:
                head.stop.close()
            if self._interrupted:  # the batch ended over there, at an op's boundary
                self._drain_interrupted()
            assert answer is not None
            # a delta that did not verify there comes back as a retry: sent whole next
            self._whole.update(p.key for p in answer["problems"] if p.key in head.sigs)
            ops = head.ops
            head.result = ApplyResult(
                done=[ops[i] if isinstance(i, int) else i for i in answer["done"]],
                problems=list(answer["problems"]), bytes_copied=answer["bytes"],
                warnings=list(answer["warnings"]))
        if batch.error is not None:
            raise batch.error
        assert batch.result is not None
        return batch.result

    def _recover(self, error: BaseException) -> None:
        """The link broke with batches in flight: reconnect (after a pause that doubles,
        ``RECONNECT_DELAYS``), ask the new agent which of them its journal holds as
        applied and flushed (their answers come from there), and resend the others
        from the first unacknowledged one. None is applied twice: a batch the old
        agent began and did not finish is resent marked resumed (the agent skips the
        ops already done there). Raises ``LinkLost`` naming the host when every try
        failed (the run ends; the next one resumes from the journal)."""
        self._retry(self._reconnect, self.link.host, error)

    def relinkable(self, link: Link, error: BaseException) -> bool:
        """Whether a request that failed with ``error`` on ``link`` is asked again on a
        new link (``relink``): the link broke (or another thread replaced it) while no
        batch was in flight (those resume through ``_recover``)."""
        return (isinstance(error, LinkLost) or link is not self.link) and not self._flying

    def relink(self, broken: Link, error: BaseException) -> None:
        """The link broke under a request that is not a batch (a pull's reads): a new
        agent, after a pause that grows (``RECONNECT_DELAYS``), opened as the old one
        was; the caller asks again. Threads that hit the same break wait for one
        reconnection. Raises ``LinkLost`` naming the host when every try failed."""
        with self._relinking:
            if self.link is not broken:
                return  # another thread reconnected it already
            self._retry(self._open_link, broken.host, error)
            self.reconnects += 1

    @staticmethod
    def _retry(connect: Callable[[], None], host: str, error: BaseException) -> None:
        """``connect`` after each pause of ``RECONNECT_DELAYS`` until it succeeds; when
        every try failed, ``LinkLost`` naming ``host`` and the last reason."""
        why = str(error)
        for delay in RECONNECT_DELAYS:
            time.sleep(delay)
            try:
                connect()
            except BackendError as e:
                why = str(e)
                continue
            return
        raise LinkLost(f"{host}: the link broke and {len(RECONNECT_DELAYS)} "
                       f"reconnections failed (last: {why}); the next run resumes") from None

    def _open_link(self) -> None:
        """A new agent in place of the link that broke, opened and configured as it was."""
        old = self.link
        old.abandon()
        self._early.clear()  # the old link's answers: lost with it
        self._facts.clear()
        self._later.clear()
        self._clock = None
        sent, received = old.wire
        self._wired = (self._wired[0] + sent, self._wired[1] + received)
        self._trips += old.round_trips
        link = Link(self.remote, self.reach)
        self.link = link
        link.call("open", self.remote.path, self.role, self._exclude_attrs)
        if self._keep is not None:
            link.call("metadata", self._keep)
        scan: ScanOptions | None = getattr(self, "_scan_options", None)
        if scan is not None:
            link.call("configure_scan", scan.specials, scan.one_file_system)

    def _reconnect(self) -> None:
        self._open_link()
        link = self.link
        first = self._flying[0].seq if self._flying else self._seq + 1
        done, begun = link.call("acknowledged", self.session, first)
        self.reconnects += 1
        done = dict(done)
        for batch in list(self._flying):
            if batch.seq in done:
                batch.answer = unpack(done[batch.seq])
            else:
                self._send(batch, resumed=batch.seq in begun)

    def _signatures(self, ops: Sequence[Op], source: ContentSource
                    ) -> dict[Key, list[bytes] | int]:
        """The signatures of the far side's old files, for the files of the batch a
        delta is worth it for (``use_delta``): asked for all at once, one round trip
        per batch. An updated file's old version is at its key, or at the source of a
        move earlier in the batch (the far side signs it before the batch runs).

        A file that is no shorter than it was goes with the digest of its first old
        size bytes here: where the far side's old file has that digest, the file only
        grew (a log, a mailbox, a growing archive), and its answer is that old size
        instead of a signature (``deltas.AppendStream``: neither side runs the rolling
        search). Else it signs the old file as for any other."""
        if not deltas.available():
            return {}
        wanted: list[list[Any]] = []
        total = 0
        moves: list[tuple[Key, Key]] = []
        for op in ops:
            if op.op == MOVE and op.to is not None:
                moves.append((op.key, op.to))
                continue
            if not (op.op == UPDATE and op.content and op.node is not None
                    and op.node.kind == FILE and op.old is not None
                    and op.old.kind == FILE and op.key not in self._whole
                    and deltas.use_delta(op.old.size, op.node.size)):
                continue
            basis = _before_moves(op.key, moves)
            total += _signature_size(op.old.size)
            if total > SIGNATURES_MAX:
                break
            grew = op.node.size >= op.old.size  # perhaps appended to
            wanted.append([op.key, basis,
                           *(self._prefix(source, op.key, op.old.size) if grew else ())])
        if not wanted:
            return {}
        out: dict[Key, list[bytes] | int] = {}
        for page in self.link.stream("signatures", wanted):
            for key, chunks, *appended in page:
                out[tuple(key)] = appended[0] if appended else list(chunks)
        return out

    @staticmethod
    def _prefix(source: ContentSource, key: Key, old_size: int) -> list[Any]:
        """``[old_size, digest]`` of the source file's first ``old_size`` bytes, or
        nothing (it is shorter now, or not a file with a descriptor)."""
        try:
            with source.read(key) as f:
                if not _has_fd(f):
                    return []
                digest = deltas.prefix_digest(f.fileno(), old_size)
        except (OSError, NodeError):
            return []
        return [] if digest is None else [old_size, digest]

    def _send_delta(self, rid: int, key: Key, f: BinaryIO, sig: list[bytes] | int,
                    page: list[Any], size: int) -> tuple[list[Any], int, bool]:
        """``f``'s content as a delta against the far side's old file (``sig`` its
        signature, or its size where it is this file's beginning): pages of ``[key,
        data, None, 1]``, then the end ``[mtime_ns, None, size, digest]``. False when no
        delta could be made (then nothing of this file was sent)."""
        before = os.fstat(f.fileno())
        try:
            stream: deltas.DeltaStream | deltas.AppendStream = (
                deltas.AppendStream(sig, f.fileno()) if isinstance(sig, int)
                else deltas.delta(sig, f.fileno()))
            chunks = iter(stream)
            first = next(chunks, b"")
        except deltas.DeltaError:
            return page, size, False
        try:
            for chunk in _chain(first, chunks):
                if not chunk:
                    continue
                page.append([key, chunk, None, 1])
                size += len(chunk)
                if size >= PAGE_BYTES:
                    self.link.send_more(rid, page)
                    page, size = [], 0
            trailer = stream.trailer()
        except deltas.DeltaError as e:
            page.append([key, b"", [0, f"delta: {e}"], 1])
            return page, size, True
        after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) \
                or trailer.size != before.st_size:
            page.append([key, b"", [0, "the source file changed while it was read"], 1])
        else:
            page.append([key, b"", [before.st_mtime_ns, None, trailer.size,
                                    trailer.digest], 1])
        return page, size, True

    def _send_content(self, rid: int, ops: Sequence[Op], source: ContentSource,
                      sigs: dict[Key, list[bytes] | int] | None = None,
                      stop: _FarCancel | None = None, *, sparse: bool = False) -> None:
        """The content of every file the batch creates or updates, in pages of
        ``[key, data, end]`` (``end``: None while the file goes on, else ``[mtime_ns,
        error]``): whole, or as a delta against the far side's old file where its
        signature came (``_signatures``, ``_send_delta``).

        ``sparse`` (``ApplyOptions.sparse``): a file with holes (fewer blocks than its
        size) sends its data extents only, as ``[key, data, None, 0, offset]``, and
        ``[key, b"", None, 0, size]`` for its length: its holes stay holes there, and
        cross as nothing (a 1 GiB disk image holding 10 MiB sends 10 MiB)."""
        page: list[Any] = []
        size = 0
        sent: set[Key] = set()
        sigs = sigs or {}
        for op in ops:
            if stop is not None and stop.sent:
                break  # cancelled: the far side stops at its next op
            if not _needs_content(op) or op.key in sent:
                continue
            key = op.key
            sent.add(key)
            try:
                with source.read(key) as f:
                    sig = sigs.get(key)
                    if sig is not None and _has_fd(f):
                        page, size, done = self._send_delta(rid, key, f, sig, page, size)
                        if done:
                            continue
                    # streamed a chunk at a time: a big file is never held whole
                    fd = f.fileno() if _has_fd(f) else None
                    before = os.fstat(fd) if fd is not None else None
                    holes = sparse and before is not None \
                        and before.st_blocks * 512 < before.st_size
                    if fd is not None and before is not None and before.st_size < CHUNK \
                            and not holes:
                        # read at once, and crosses as one item with its end
                        small = _read_small(fd, before.st_size)
                        size += len(small)
                        last = [key, small, _end(before, os.fstat(fd), len(small))]
                    else:
                        got = 0
                        pieces: Iterable[tuple[bytes, int | None]] = (
                            data_pieces(f.fileno(), before.st_size)
                            if holes and before is not None
                            else ((chunk, None)
                                  for chunk in iter(partial(f.read, CHUNK), b"")))
                        for chunk, at in pieces:
                            if at is None:
                                got += len(chunk)
                                page.append([key, chunk, None])
                            else:
                                got = at + len(chunk)
                                page.append([key, chunk, None, 0, at])
                            size += len(chunk)
                            if size >= PAGE_BYTES:
                                self.link.send_more(rid, page)
                                page, size = [], 0
                        last = [key, b"", [0, None] if before is None
                                else _end(before, os.fstat(f.fileno()), got)]
            except (OSError, NodeError) as e:
                why = str(e) if isinstance(e, NodeError) else (e.strerror or str(e))
                page.append([key, b"", [0, why]])
                continue
            page.append(last)
            if len(page) >= 1000 or size >= PAGE_BYTES:
                self.link.send_more(rid, page)
                page, size = [], 0
        if page:
            self.link.send_more(rid, page)
        self.link.send_more(rid, None)

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.stop()
            self._prefetch = None
        if self._deltas is not None:
            self._deltas.stop()
            self._deltas = None
        self.link.close()

    # -- bytes on the wire -----------------------------------------------------------------
    def wire(self) -> tuple[int, int]:
        sent, received = self.link.wire
        return self._wired[0] + sent, self._wired[1] + received

    def round_trips(self) -> int:
        return self._trips + self.link.round_trips

    # -- Related ---------------------------------------------------------------------------
    def relation(self, other_url: str) -> Relation | None:
        """Two trees of the same far endpoint, by their far paths."""
        mine = self.canonical_url()
        prefix = self.remote.endpoint() + "/"
        if not other_url.startswith(prefix):
            return None
        a, b = mine[len(prefix) - 1:].rstrip("/") + "/", other_url[len(prefix) - 1:]
        b = b.rstrip("/") + "/"
        if a == b:
            return "same"
        if b.startswith(a):
            return "inside"
        if a.startswith(b):
            return "contains"
        return None


@attrs.define(eq=False)
class _Batch:
    """A batch sent to the far side: what a resend needs, and its answer once there."""

    seq: int
    ops: list[Op]
    final: dict[str, Any]
    options: ApplyOptions
    source: ContentSource
    sigs: set[Key] = attrs.field(factory=set)
    rid: int = 0
    q: Any = None
    answer: dict[str, Any] | None = None
    """Its answer, taken from the far journal after a reconnect."""
    cancel: Cancel = NEVER
    stop: _FarCancel | None = None
    """Forwards a cancel of ``cancel`` (or a Ctrl-C) to the far side."""
    result: ApplyResult | None = None
    error: BaseException | None = None
    """Why it failed there as a whole (a batch after it is not applied either)."""


class _Pending:
    """``PendingBatch``: a batch in flight, its result taken in order."""

    def __init__(self, backend: RemoteBackend, batch: _Batch | ApplyResult) -> None:
        self.backend = backend
        self.batch = batch

    def result(self) -> ApplyResult:
        if isinstance(self.batch, ApplyResult):
            return self.batch
        return self.backend.acknowledged(self.batch)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _before_moves(key: Key, moves: Sequence[tuple[Key, Key]]) -> Key:
    """Where ``key`` was before ``moves`` (in order) ran."""
    for src, to in reversed(moves):
        if key[:len(to)] == to:
            key = src + key[len(to):]
    return key


def _signature_size(size: int) -> int:
    """About the size of a signature of a file of ``size`` bytes."""
    block = max(2048, int(size ** 0.5))
    return 12 + (size // block + 1) * 12


def _read_small(fd: int, size: int) -> bytes:
    """A small file of ``size`` bytes read whole, in one ``read`` where it is that size
    (a read asks one byte more: a file that grew since its stat shows it). The stat
    after the read tells whether it changed in between (``_end``)."""
    data = os.read(fd, size + 1)
    while 0 < len(data) < size:  # a short read: the rest, or the end
        more = os.read(fd, size + 1 - len(data))
        if not more:
            break
        data += more
    return data


def _end(before: os.stat_result, after: os.stat_result, got: int) -> list[Any]:
    """A file's end as a content page gives it, ``[mtime_ns, error]``, from its stat
    before and after it was read whole (``got`` bytes): changed while it was read where
    they differ or ``got`` is not its size."""
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) \
            or got != before.st_size:
        return [0, "the source file changed while it was read"]
    return [before.st_mtime_ns, None]


def _has_fd(f: Any) -> bool:
    try:
        f.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return False
    return True


def _final_part(ops: Sequence[Op], final: Snapshot) -> dict[str, Any]:
    """What of ``final`` a batch's apply reads: the source's directories it changes
    (their metadata, set once their children settled), and the hard-link groups."""
    nodes = final.nodes
    want: dict[Key, Node] = {}
    seen: set[Key] = set()
    for op in ops:
        below = op.kind != DIR  # a file's own key is no directory's
        for k in (op.key, op.to):
            if k is None:
                continue
            # up from the key to the first prefix seen (its own were seen with it);
            # kept parents first
            up: list[tuple[Key, Node]] = []
            for i in range(len(k) - below, -1, -1):
                p = k[:i]
                if p in seen:
                    break
                seen.add(p)
                n = nodes.get(p)
                if n is not None and n.kind == DIR:
                    up.append((p, n))
            want.update(reversed(up))
    return encode_snapshot(Snapshot(nodes=want))


# -- the capability mixins: a backend offers what its far side offers ----------------------
class _SortedWalk(_Asking):
    def walk_sorted(self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
                    ) -> Iterator[tuple[Key, Row | tuple[str] | None]]:
        self._begin()
        self._settle()
        for page in self.link.stream("walk_sorted", exclude):
            cancel.check()
            yield from page


class _Streaming(_Asking):
    def stream(self, exclude: Exclude | None = None, *, cancel: Cancel = NEVER
               ) -> Iterator[tuple[Key, Node | str | None]]:
        self._begin()
        self._settle()
        for page in self.link.stream("stream", exclude):
            cancel.check()
            for key, n in page:
                yield key, Node(*n) if isinstance(n, tuple) else n


class _DigestScanning(_Asking):
    def digest_scan(self, exclude: Exclude | None = None, *, background: bool = False,
                    cancel: Cancel = NEVER) -> _RemoteScan:
        # the far side scans at once, beside whatever runs here; its handle is the
        # request's id (the agent's ``do_digest_scan``): no round trip waited for here
        self._begin()
        rid, started = self.link.ask_id("digest_scan", exclude, True)

        def begun() -> Any:
            self._settle()
            return started()

        return _RemoteScan(self.link, rid, begun)


class _BulkHashing(_Asking):
    def hash_many(self, keys: Sequence[Key]) -> list[Hashed]:
        out: list[Hashed] = list(self.link.call("hash_many", list(keys)))
        return out

    def look(self, key: Key) -> Any:
        return self.link.call("look", key)

    def __reduce__(self) -> Any:
        raise TypeError("a remote endpoint is not handed to another process")


class _Watchable(_Asking):
    def watch(self, sink: WatchSink) -> _RemoteWatch:
        self._begin()
        return _RemoteWatch(self.link, sink)


class _Metadata(_Asking):
    """Owner, group, xattrs and ACLs, kept by the far backend: its user and group names
    (a pair maps ids by name across hosts) and the negotiation, forwarded."""

    link: Link
    _keep: Keep | None
    _can: Keep | None
    _kept: Keep | None

    def id_names(self) -> IdNames:
        users, groups = self._asked("id_names")
        return dict(users), dict(groups)

    def metadata(self, wanted: Keep) -> Keep:
        """Forwarded, and not waited for: the contract (``Metadata``) says the answer
        is what of ``wanted`` the tree can keep, which the far side said as it opened
        (``keeps``), or, from an agent that does not say it, ``wanted`` itself when it
        asks for no more than the far side kept the last time. The far side's answer
        is taken before the next scan or batch (``_settle``): an error there, or an
        answer that is not the one foreseen, is raised then."""
        self._keep = wanted  # a new link after a break negotiates the same again
        can, kept = self._can, self._kept
        if can is not None:
            foreseen = wanted.narrowed(can)
        elif kept is not None and _within(wanted, kept):
            foreseen = wanted
        else:
            out: Keep = self.link.call("metadata", wanted)
            self._kept = out
            return out
        ask = self.link.ask("metadata", wanted)

        def check() -> None:
            got = ask()
            if got != foreseen:
                raise BackendError(
                    f"{self.link.host}: the far tree keeps {got!r} of the metadata "
                    f"asked, not {foreseen!r} as it said when it opened")

        self._later.append(check)
        return foreseen


def _within(wanted: Keep, kept: Keep) -> bool:
    """Whether ``wanted`` asks for nothing beyond what ``kept`` holds."""
    return ((kept.owner or not wanted.owner) and (kept.group or not wanted.group)
            and (kept.acls or not wanted.acls) and wanted.xattrs <= kept.xattrs)


class _CtimeClock(_Asking):
    """How far behind this host's clock the far tree's ctimes may be: the far
    filesystem's own lag, plus how far apart the two hosts' clocks are, measured over
    the link (the far clock read while this side's was read before and after: half
    the round trip is the uncertainty). The session falls back to its 2 s margin when
    that is as much."""

    link: Link
    role: Role
    _clock: Callable[[], tuple[Any, int, int]] | None
    """The far clock as read beside the first scan or batch, not yet taken."""
    _clock_asked = False

    def _ask_clock(self) -> None:
        # not with the open: sent before the agent is up (the ssh login, its start), its
        # answer would bracket the far clock read by all of that
        if not self._clock_asked:
            self._clock_asked = True
            self._clock = self.link.ask_timed("ctime_clock")

    def ctime_lag_ns(self) -> int:
        """The first time, from the far clock read beside the first scan or batch (that
        round trip carried it: a run does not wait for it at its end) where it says a
        fine clock (under ``FINE_LAG_NS``) or the root was there at the open (a
        source's is; a root this run created was not, and says a coarse one); else
        asked now."""
        clock, self._clock = self._clock, None
        if clock is not None:
            try:
                (lag, far_now), before, after = clock()
            except (HsyncError, OSError):
                pass
            else:
                out = _lag(lag, far_now, before, after)
                if out < FINE_LAG_NS or self._root_at_open or self.role == "source":
                    return out
        answer = self.link.ask_timed("ctime_clock")
        self._settle()
        (lag, far_now), before, after = answer()
        return _lag(lag, far_now, before, after)


FINE_LAG_NS = 10**9
"""A far clock read beside the first scan that says a lag under this stands for the run."""


def _lag(lag: int, far_now: int, before: int, after: int) -> int:
    """The far tree's ctime lag plus how far apart the clocks may be: the far clock was
    read between ``before`` and ``after`` here (half of that is the uncertainty)."""
    apart = abs(int(far_now) - (before + after) // 2) + (after - before) // 2 + 1
    return int(lag) + apart


class _ScanConfigurable(_Asking):
    """``-x`` and ``--no-specials`` reach the far tree's scans (its backend takes
    ``ScanOptions``)."""

    def configure_scan(self, options: ScanOptions) -> None:
        self._scan_options = options  # sent again to an agent started after a break
        # its answer (None, or an error) is taken before the first scan (``_settle``)
        self._later.append(self.link.ask("configure_scan", options.specials,
                                         options.one_file_system))


_MIXINS = {
    "sorted_walk": _SortedWalk, "streaming": _Streaming,
    "digest_scanning": _DigestScanning, "bulk_hashing": _BulkHashing,
    "watchable": _Watchable, "metadata": _Metadata,
    "scan_configurable": _ScanConfigurable, "ctime_clock": _CtimeClock,
}
_CLASSES: dict[tuple[str, ...], type] = {}


def _class_for(features: Iterable[str]) -> type:
    names = tuple(sorted(f for f in features if f in _MIXINS))
    cls = _CLASSES.get(names)
    if cls is None:
        bases = tuple(_MIXINS[n] for n in names)
        cls = type("RemoteBackend", (*bases, RemoteBackend), {})
        _CLASSES[names] = cls
    return cls


def open_remote(
    location: str,
    *,
    role: Role,
    credentials: Credentials | None = None,
    exclude_attrs: tuple[str, ...] = (),
) -> RemoteBackend:
    """The ``BackendFactory`` of ``ssh``: start an agent and open the far tree."""
    if credentials is not None:
        raise UsageError(f"{location}: credentials for the far tree go in its own config")
    url = parse(location)
    link = Link(url, current())
    try:
        opening = link.ask("open", url.path, role, list(exclude_attrs))
        # what every session asks first, sent with the open: its answers wait here
        # (taken once each: ``RemoteBackend._asked``)
        early = {m: link.ask(m) for m in EARLY}
        opened = opening()
    except BaseException:
        link.close()
        raise
    cls = _class_for(opened["features"])
    backend: RemoteBackend = cls(location, url, link, role, opened, reach=link.reach,
                                 exclude_attrs=exclude_attrs)
    backend._early = early
    return backend


if TYPE_CHECKING:
    from ..backend import Backend, BackendFactory, DigestScan, Watch

    _factory: BackendFactory = open_remote
    _b: Backend = RemoteBackend("", RemoteUrl("h", "/"), Link.__new__(Link), "source", {})
    _s: DigestScan = _RemoteScan(Link.__new__(Link), 0)
    _w: Watch = _RemoteWatch(Link.__new__(Link), cast("WatchSink", None))
    _ = INLINE
