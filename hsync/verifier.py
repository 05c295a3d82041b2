"""``hsync verify``: is the destination really equal to the source, content included?

A sync trusts size and mtime (SPEC section 2); verify does not. It scans both trees,
compares every key's kind and metadata, and hashes every file present on both sides
(xxh3-128), a chunk at a time: keys are taken in sorted order, so a chunk is a run of
neighbouring keys (a subtree or a part of one), bounded to ``chunk_files`` files and
``chunk_bytes`` bytes of reading per side. Both sides of a chunk are read in parallel.

Safe beside a running watch on the same pair. A mismatch is only a candidate: after a
settle delay both sides are looked at again (lstat, and the content hashed again):

- the source changed since verify first looked (or ``pending(key)`` says the watcher
  holds a change for it): the watcher owns it; listed as *pending*, not a difference;
- the two sides are now equal: a sync caught up meanwhile; nothing reported;
- the destination changed meanwhile (a sync writing it): looked at again, up to
  ``rounds`` times;
- otherwise the mismatch persisted while the source stood still: a *difference*.

The daemon can run it periodically (``verify_interval``): ``Verifier.chunks()`` yields
after each chunk, so a caller can spread the work over time or stop between chunks.
Nothing is written by verify; ``repair`` runs a checksum sync (the normal plan/apply
path) when differences were found.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import attrs

from ._values import evolve
from .backend import Endpoint, Hashed, look_many, stat_many
from .errors import EXIT_DIFFER, EXIT_OK, EXIT_USAGE, UsageError
from .filters import Exclude
from .model import DIR, FILE, SPECIAL, SYMLINK, Key, Node, Rows, Snapshot, key_str

CONTENT = "content"
METADATA = "metadata"
MISSING = "missing"
EXTRA = "extra"
TYPE = "type"

CHUNK_FILES = 2000
CHUNK_BYTES = 64 << 20
SETTLE = 1.0
ROUNDS = 3


@attrs.frozen
class Difference:
    """One key where the destination is not what the source holds."""

    key: Key
    what: str
    """content | metadata | missing (on the destination) | extra | type"""
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"path": key_str(self.key), "difference": self.what, "detail": self.detail}


@attrs.define
class VerifyReport:
    """What one verify found (``verify --json`` prints ``to_json()``)."""

    source: str
    destination: str
    differences: list[Difference] = attrs.field(factory=list)
    pending: list[Key] = attrs.field(factory=list)
    """Keys whose source changed during verify: left to the watcher (or the next verify)."""
    unreadable: list[tuple[Key, str]] = attrs.field(factory=list)
    files: int = 0
    bytes_hashed: int = 0
    elapsed: float = 0.0
    repair: Any = None
    """The ``Report`` of the repairing sync, when one ran."""
    round_trips: int | None = None
    """The round trips on the links to remote endpoints verify waited on, one after the
    other (``Linked.round_trips``; the repair's not counted: its own report says them);
    None when neither endpoint is remote."""

    @property
    def exit_code(self) -> int:
        if self.repair is not None:
            return self.repair.exit_code
        if self.differences:
            return EXIT_DIFFER
        return EXIT_USAGE if self.unreadable else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "destination": self.destination,
            "consistent": not self.differences and not self.unreadable,
            "differences": [d.to_json() for d in self.differences],
            "pending": [key_str(k) for k in self.pending],
            "unreadable": [{"path": key_str(k), "why": w} for k, w in self.unreadable],
            "files": self.files,
            "bytes_hashed": self.bytes_hashed,
            "elapsed": round(self.elapsed, 6),
        }
        if self.round_trips is not None:
            out["round_trips"] = self.round_trips
        if self.repair is not None:
            out["repair"] = self.repair.to_json()
        return out


Look = Any
"""What one side holds at a key, cheaply (lstat fields, or the node): compared between
two looks to tell whether it changed."""


class _Side:
    """One tree as verify reads it: where the backend hashes in bulk (``BulkHashing``),
    files are hashed where the data is, many at a time; else one ``digest`` per file."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.backend = endpoint.backend
        self.bulk = endpoint.features.bulk_hashing

    def looks(self, keys: Sequence[Key]) -> dict[Key, Look]:
        """A look at each of ``keys``, asked together (over a link: one round trip for
        all, ``look_many`` or ``stat_many``)."""
        if self.bulk is not None:
            return look_many(self.endpoint, keys)
        return {
            k: None if n is None else (n.kind, n.mode, n.size, n.mtime_ns, n.target, n.data)
            for k, n in self.nodes(keys).items()
        }

    def nodes(self, keys: Sequence[Key]) -> dict[Key, Node | None]:
        """The node at each of ``keys`` now (for a re-check), asked together
        (``stat_many``); a ``stat`` that failed raises its ``OSError``."""
        out: dict[Key, Node | None] = {}
        for k, n in stat_many(self.endpoint, keys).items():
            if isinstance(n, OSError):
                raise n
            out[k] = n
        return out

    def hash_many(self, keys: Sequence[Key]) -> list[Hashed]:
        if self.bulk is not None:
            return self.bulk.hash_many(keys)
        looks = self.looks(keys)  # before the reads: a change during one shows
        return [(self.backend.digest(k), 0, looks[k]) for k in keys]

    def submit(self, pool: Executor, keys: Sequence[Key]) -> Future[list[Hashed]]:
        if self.bulk is not None:
            return pool.submit(self.bulk.hash_many, keys)  # the backend pickles
        return pool.submit(self.hash_many, keys)


def _meta_diff(s: Node, d: Node) -> str:
    """Which payload fields differ, besides content ("" when none)."""
    out = []
    if s.mode != d.mode and s.kind != "symlink":
        out.append(f"mode {s.mode:o} != {d.mode:o}")
    if s.kind == FILE and s.mtime_ns != d.mtime_ns:
        out.append("mtime")
    if s.kind == DIR and s.mtime_ns != d.mtime_ns:
        out.append("directory mtime")
    if s.kind == SYMLINK and s.mtime_ns != d.mtime_ns:
        out.append("symlink mtime")
    if s.kind == SPECIAL and s.size != d.size:
        out.append("device number")
    if s.kind == SPECIAL and s.mtime_ns != d.mtime_ns:
        out.append("mtime")
    if s.target != d.target:
        out.append("symlink target")
    if s.data != d.data:
        out.append(_data_diff(s.data, d.data))
    return ", ".join(out)


def _data_diff(s: Any, d: Any) -> str:
    """A filesystem node's owner, group and extended attributes (``(uid, gid,
    xattrs)``) named where they differ; "attributes" for other data (LDAP)."""
    if not (isinstance(s, tuple) and isinstance(d, tuple) and len(s) == len(d) == 3
            and all(i is None or isinstance(i, int) for i in (s[0], s[1], d[0], d[1]))):
        return "attributes"  # an LDAP entry's three attributes are no (uid, gid, xattrs)
    out = []
    if s[0] != d[0]:
        out.append(f"owner {s[0]} != {d[0]}")
    if s[1] != d[1]:
        out.append(f"group {s[1]} != {d[1]}")
    a, b = dict(s[2] or ()), dict(d[2] or ())
    names = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
    acls = [n for n in names if n.startswith("system.posix_acl_")]
    if acls:
        out.append("ACL " + ", ".join(n.rsplit("_", 1)[1] for n in acls))
    if len(acls) < len(names):
        out.append("xattrs " + ", ".join(n for n in names if n not in acls))
    return ", ".join(out)


class Verifier:
    """A content-level comparison of one pair, a chunk at a time (see the module doc)."""

    def __init__(
        self,
        source: Endpoint,
        destination: Endpoint,
        *,
        exclude: Exclude | None = None,
        settle: float = SETTLE,
        rounds: int = ROUNDS,
        chunk_files: int = CHUNK_FILES,
        chunk_bytes: int = CHUNK_BYTES,
        pending: Callable[[Key], bool] | None = None,
        on_candidate: Callable[[Difference], None] | None = None,
        dir_mtime: bool = True,
    ) -> None:
        self.src = _Side(source)
        self.dst = _Side(destination)
        self.exclude = exclude
        self.settle = settle
        self.rounds = rounds
        self.chunk_files = chunk_files
        self.chunk_bytes = chunk_bytes
        self.is_pending = pending
        self.on_candidate = on_candidate
        self.dir_mtime = dir_mtime
        self.report = VerifyReport(source.url, destination.url)

    # -- the walk -------------------------------------------------------------------------
    def run(self) -> VerifyReport:
        t0 = time.perf_counter()
        for _ in self.chunks():
            pass
        self.report.elapsed = time.perf_counter() - t0
        return self.report

    def _pool(self) -> Executor:
        """Two local trees: two worker processes, one per side (hashing is per-file
        Python work; threads would queue for the GIL). Else, or where forking is unsafe
        (other threads running), two threads."""
        if (
            self.src.bulk is not None
            and self.dst.bulk is not None
            and threading.active_count() == 1
            and hasattr(os, "fork")
        ):
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
        return ThreadPoolExecutor(2, thread_name_prefix="hsync-verify")

    def chunks(self) -> Iterator[int]:
        """Verify chunk after chunk; yields the number of keys each chunk covered. The
        next chunk is hashed while this one's results are compared (one ahead)."""
        src_snap, dst_snap = self._scan()
        rep = self.report
        rep.unreadable += [(k, f"source: {w}") for k, w in src_snap.incomplete.items()]
        rep.unreadable += [(k, f"destination: {w}") for k, w in dst_snap.incomplete.items()]
        keys = sorted(set(src_snap.nodes) | set(dst_snap.nodes))
        with self._pool() as pool:
            ahead: list[Any] = []
            for chunk in self._split(keys, src_snap):
                ahead.append(self._start(pool, chunk, src_snap, dst_snap))
                if len(ahead) > 1:
                    yield self._finish(*ahead.pop(0))
            while ahead:
                yield self._finish(*ahead.pop(0))
        rep.differences.sort(key=lambda d: d.key)
        rep.pending.sort()

    def _split(self, keys: list[Key], src_snap: Snapshot) -> Iterator[list[Key]]:
        chunk: list[Key] = []
        size = 0
        rows = src_snap.nodes.rows if isinstance(src_snap.nodes, Rows) else None
        for key in keys:
            chunk.append(key)
            if rows is not None:
                row = rows.get(key)
                if row is not None and row[0] == FILE:
                    size += row[2]
            else:
                node = src_snap.nodes.get(key)
                if node is not None and node.kind == FILE:
                    size += node.size
            if len(chunk) >= self.chunk_files or size >= self.chunk_bytes:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def _scan(self) -> tuple[Snapshot, Snapshot]:
        """Both trees, the destination's beside the source's where it can run apart."""
        src_b, dst = self.src.backend, self.dst.endpoint
        background = dst.features.digest_scanning
        if background is not None:
            child = background.digest_scan(self.exclude, background=True)
            collect = child.snapshot
        else:
            def collect() -> Snapshot:
                return dst.backend.scan((), exclude=self.exclude)
        try:
            src_snap = src_b.scan((), exclude=self.exclude)
        finally:
            dst_snap = collect()
            if background is not None:
                child.close()
        return src_snap, dst_snap

    def _start(
        self, pool: Executor, keys: list[Key], src_snap: Snapshot, dst_snap: Snapshot
    ) -> tuple[Any, ...]:
        """Compare one chunk's nodes and start hashing its files on both sides."""
        candidates: list[Difference] = []
        to_hash: list[Key] = []
        # compact rows where the scan made them: equal payloads compare as tuples, and a
        # Node is built only for a key that differs
        sr = src_snap.nodes.rows if isinstance(src_snap.nodes, Rows) else None
        dr = dst_snap.nodes.rows if isinstance(dst_snap.nodes, Rows) else None
        fast = sr is not None and dr is not None
        partial = bool(src_snap.incomplete or dst_snap.incomplete)
        for key in keys:
            if partial and (src_snap.is_incomplete(key) or dst_snap.is_incomplete(key)):
                continue  # listed as unreadable already
            if fast:
                assert sr is not None and dr is not None
                a, b = sr.get(key), dr.get(key)
                if a is not None and b is not None and a[:5] == b[:5] and a[6:] == b[6:]:
                    if a[0] == FILE:
                        to_hash.append(key)
                    continue
            s = src_snap.nodes.get(key)
            d = dst_snap.nodes.get(key)
            diff = self._compare_nodes(key, s, d)
            if diff is not None:
                candidates.append(diff)
            elif s is not None and s.kind == FILE:
                to_hash.append(key)
        futures = (self.src.submit(pool, to_hash), self.dst.submit(pool, to_hash))
        return keys, candidates, to_hash, futures

    def _finish(
        self,
        keys: list[Key],
        candidates: list[Difference],
        to_hash: list[Key],
        futures: tuple[Future[list[Hashed]], Future[list[Hashed]]],
    ) -> int:
        hs, hd = futures[0].result(), futures[1].result()
        self.report.files += len(to_hash)
        # the looks taken when each file was opened: a change during the hash shows
        looks: dict[Key, tuple[Look, Look]] = {}
        for key, (a, na, la), (b, nb, lb) in zip(to_hash, hs, hd, strict=True):
            self.report.bytes_hashed += na + nb
            if a is None or b is None:
                candidates.append(Difference(key, CONTENT, "cannot be read"))
            elif a != b:
                candidates.append(Difference(key, CONTENT, "same size, different bytes"))
            else:
                continue
            looks[key] = (la, lb)
        if candidates:
            self._recheck(candidates, looks)
        return len(keys)

    def _compare_nodes(self, key: Key, s: Node | None, d: Node | None) -> Difference | None:
        if s is None and d is None:
            return None
        if d is None:
            return Difference(key, MISSING, f"{s.kind} missing on the destination")  # type: ignore[union-attr]
        if s is None:
            return Difference(key, EXTRA, f"{d.kind} only on the destination")
        if s.kind != d.kind:
            return Difference(key, TYPE, f"{s.kind} on the source, {d.kind} on the destination")
        if s.kind == FILE and s.size != d.size:
            return Difference(key, CONTENT, f"size {s.size} != {d.size}")
        meta = _meta_diff(s, d)
        if meta and not (meta == "directory mtime" and not self.dir_mtime):
            return Difference(key, METADATA, meta)
        return None

    # -- the settle re-check ----------------------------------------------------------------
    def _recheck(
        self, candidates: list[Difference], looks: dict[Key, tuple[Look, Look]]
    ) -> None:
        """Report only what persists while the source stands still (module doc). Each
        round looks at all its candidates together, then reads their nodes and hashes
        their files together: over a link, a few round trips a round, not a few a key."""
        unlooked = [c.key for c in candidates if c.key not in looks]
        if unlooked:
            src_look, dst_look = self.src.looks(unlooked), self.dst.looks(unlooked)
            looks = {**looks, **{k: (src_look[k], dst_look[k]) for k in unlooked}}
        first = {c.key: looks[c.key] for c in candidates}
        if self.on_candidate is not None:
            for c in candidates:
                self.on_candidate(c)
        last = dict(first)
        todo = [c.key for c in candidates]
        for round_ in range(self.rounds):
            if self.settle > 0:
                time.sleep(self.settle)
            now_src, now_dst = self.src.looks(todo), self.dst.looks(todo)
            steady: list[Key] = []
            for key in todo:
                if now_src[key] != first[key][0] or (self.is_pending and self.is_pending(key)):
                    self.report.pending.append(key)
                else:
                    steady.append(key)
            again: list[Key] = []
            for key, still in zip(steady, self._still_differ(steady), strict=True):
                if still is None:
                    continue  # equal now: a sync caught up
                if now_dst[key] != last[key][1] and round_ + 1 < self.rounds:
                    last[key] = (now_src[key], now_dst[key])
                    again.append(key)  # the destination is being written: wait again
                    continue
                self.report.differences.append(still)
            todo = again
            if not todo:
                break

    def _still_differ(self, keys: list[Key]) -> list[Difference | None]:
        """What differs now at each of ``keys`` (None: equal), their nodes read and
        their files hashed together on each side."""
        if not keys:
            return []
        src_nodes, dst_nodes = self.src.nodes(keys), self.dst.nodes(keys)
        out: list[Difference | None] = []
        files: list[int] = []
        for key in keys:
            s = src_nodes[key]
            out.append(self._compare_nodes(key, s, dst_nodes[key]))
            if out[-1] is None and s is not None and s.kind == FILE:
                files.append(len(out) - 1)
        if files:
            hashed = [keys[i] for i in files]
            hs, hd = self.src.hash_many(hashed), self.dst.hash_many(hashed)
            for i, (a, _, _), (b, _, _) in zip(files, hs, hd, strict=True):
                if a is None or b is None:
                    out[i] = Difference(keys[i], CONTENT, "cannot be read")
                elif a != b:
                    out[i] = Difference(keys[i], CONTENT, "same size, different bytes")
        return out


def verify(
    src: str,
    dst: str,
    *,
    exclude: Sequence[str] = (),
    settle: float = SETTLE,
    repair: bool = False,
    state: str | None = None,
    pending: Callable[[Key], bool] | None = None,
    on_candidate: Callable[[Difference], None] | None = None,
    chunk_files: int = CHUNK_FILES,
    chunk_bytes: int = CHUNK_BYTES,
    **options: Any,
) -> VerifyReport:
    """Compare ``src`` and ``dst`` content and all; with ``repair``, fix what differs
    through a checksum sync (the pipeline of ``hsync.sync``). ``options``: the other
    ``Options`` of both, what is kept (``owner``, ``group``, ``xattrs``, ``acls``,
    ``numeric_ids``) and how a far tree is reached (``rsh``, ``remote_hsync``,
    ``compress``). Raises ``HsyncError`` for bad input (exit 2)."""
    from .oneshot import sync_once
    from .options import Options
    from .session import PairSession

    opts = evolve(Options(checksum=True, exclude=tuple(exclude), state=state), **options)
    with PairSession(src, dst, opts, history=False) as session:
        if session.destination.backend.root_id() is None:
            raise UsageError(f"{session.destination.url}: destination does not exist")
        verifier = Verifier(
            session.source, session.destination, exclude=session.exclude, settle=settle,
            pending=pending, on_candidate=on_candidate, chunk_files=chunk_files,
            chunk_bytes=chunk_bytes,
        )
        report = verifier.run()
        report.round_trips = session.round_trips()
    if repair and report.differences:
        report.repair = sync_once(src, dst, opts)
    return report
