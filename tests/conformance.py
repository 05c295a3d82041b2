"""One conformance suite for every backend (STYLE: fsspec's abstract tests, rclone's
fstests): the same scenarios against real endpoints, through the contract in
``hsync/backend.py`` (``BackendConformance``'s ``test_backend_*`` and ``test_watch*``:
``stat``, ``scan(subtree)``, excludes, cancel, ``apply_batch``, the root's state,
``Features``, ``watch``) and through ``hsync.sync`` (the other scenarios).

A backend's test module subclasses ``BackendConformance`` and provides the ``adapter``
fixture: an object that builds and reads trees on the real endpoints (``Endpoints`` is a
base for it). Trees are written as ``{"a": None, "a/b": "token"}``: a path and its
payload token (None: no payload; a container where it has children). What the token is
on the endpoint is the adapter's business (a file's content, an entry's description);
``adapter.key(path)`` is the key the backend gives that path.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import pytest

import hsync
from hsync.backend import (
    Backend,
    BulkHashing,
    DigestScanning,
    Features,
    Linked,
    Metadata,
    Prefetching,
    Related,
    ResumableWatchable,
    SortedWalk,
    Spooling,
    Streaming,
    Watchable,
    Windowed,
    look_many,
    open_backend,
    open_endpoint,
)
from hsync.cancel import Cancel
from hsync.errors import Cancelled
from hsync.filters import Exclude
from hsync.model import CONTAINERS, CREATE, DELETE, DIR, FILE, MOVE, UPDATE, Key, Node, Op, Snapshot

Tree = dict[str, "str | None"]


class Adapter(Protocol):
    """Real endpoints for one backend; ``side`` is "source" or "destination"."""

    type_change: bool
    """A leaf can become a container under the same name (files: yes; LDAP: an entry is
    both already)."""

    features: frozenset[str]
    """The optional capabilities (``Features.names()``) the backend claims at least."""

    def url(self, side: str) -> str: ...

    def absent_url(self) -> str:
        """A location of this kind whose root does not exist."""
        ...

    def key(self, path: str) -> Key:
        """The backend's key for ``path`` (``"a/b"`` -> ``("a", "b")`` for files)."""
        ...

    def open(self, side: str, role: str) -> Backend:
        """The backend on ``side``, opened as ``role`` (the caller closes it)."""
        ...

    def build(self, side: str, tree: Tree) -> None: ...

    def read(self, side: str) -> Tree: ...

    def rename(self, old: str, new: str) -> None:
        """Move ``old`` (with its subtree) to ``new`` on the source, keeping identity."""
        ...

    def write(self, path: str, token: str) -> None:
        """Change the payload of the source node ``path`` (from outside the backend)."""
        ...

    def delete(self, path: str) -> None:
        """Delete ``path`` and its subtree on the source."""
        ...

    def retype(self, path: str, child: str) -> None:
        """Replace the source leaf ``path`` by a container holding ``child``."""
        ...

    def identity(self, side: str, path: str) -> Any: ...


class Endpoints:
    """A base for adapters: keys are the path's names, endpoints open by URL."""

    features: ClassVar[frozenset[str]] = frozenset()

    def url(self, side: str) -> str:
        raise NotImplementedError

    def key(self, path: str) -> Key:
        return tuple(path.split("/")) if path else ()

    def open(self, side: str, role: str) -> Backend:
        return open_backend(self.url(side), role=role)  # type: ignore[arg-type]


BASE: Tree = {
    "a": None,
    "a/x": "1",
    "a/y": "2",
    "a/sub": None,
    "a/sub/z": "3",
    "b": None,
    "b/w": "4",
    "c": "5",
}


class BackendConformance:
    """The scenarios; each ends with the trees equal and a second run planning nothing."""

    def sync(self, adapter: Adapter, *, delete: bool | None = None) -> hsync.Report:
        report = hsync.sync(adapter.url("source"), adapter.url("destination"), check=True,
                            delete=delete)
        assert report.ok, report.problems
        assert adapter.read("destination") == adapter.read("source")
        assert not hsync.diff(adapter.url("source"), adapter.url("destination"))
        return report

    def test_create_tree(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        report = self.sync(adapter)
        assert report.counts["create"] == len(BASE)
        assert adapter.read("destination") == BASE

    def test_update(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        self.sync(adapter)
        adapter.write("a/sub/z", "33")
        report = self.sync(adapter)
        assert report.counts == {"create": 0, "update": 1, "move": 0, "delete": 0}

    def test_verify(self, adapter: Adapter) -> None:
        """``hsync verify``: consistent after a sync; a node the sync has not caught up
        with is a difference (it stays one through the settle re-check, which looks
        at it, reads its node and hashes it again, with ``look_many``, ``stat_many``
        and ``hash_many`` where the backend has them, else one by one)."""
        adapter.build("source", BASE)
        self.sync(adapter)
        src, dst = adapter.url("source"), adapter.url("destination")
        assert hsync.verify(src, dst, settle=0).exit_code == 0
        adapter.write("a/sub/z", "9")
        adapter.write("c", "55")
        found = hsync.verify(src, dst, settle=0)
        assert sorted(d.key for d in found.differences) == sorted(
            [adapter.key("a/sub/z"), adapter.key("c")])
        assert found.exit_code == 1 and not found.pending
        self.sync(adapter)
        assert hsync.verify(src, dst, settle=0).exit_code == 0

    def test_move_subtree(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        self.sync(adapter)
        before = adapter.identity("destination", "a/sub/z")
        adapter.rename("a", "b/moved")
        report = self.sync(adapter)
        # directories' mtimes may need an update; nothing is copied again
        assert (report.counts["create"], report.counts["move"], report.counts["delete"]) == (
            0, 1, 0)
        assert adapter.identity("destination", "b/moved/sub/z") == before

    def test_swap(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        self.sync(adapter)
        ids = (adapter.identity("destination", "a/x"), adapter.identity("destination", "b/w"))
        adapter.rename("a", "tmp")
        adapter.rename("b", "a")
        adapter.rename("tmp", "b")
        report = self.sync(adapter)
        assert report.counts["create"] == 0 and report.counts["delete"] == 0
        assert report.counts["move"] == 2, (report.counts, report.plan)
        assert adapter.identity("destination", "b/x") == ids[0]
        assert adapter.identity("destination", "a/w") == ids[1]

    def test_delete_subtree(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        self.sync(adapter)
        adapter.delete("a")
        report = self.sync(adapter)
        assert (report.counts["create"], report.counts["move"], report.counts["delete"]) == (
            0, 0, 5)
        assert "a" not in adapter.read("destination")

    def test_destination_only_nodes_go_leaves_first(self, adapter: Adapter) -> None:
        adapter.build("source", {"keep": "1"})
        adapter.build("destination", {"keep": "1", "old": None, "old/deep": None,
                                      "old/deep/leaf": "9"})
        report = self.sync(adapter, delete=True)  # a destination never synced: --delete
        assert report.counts["delete"] == 3

    def test_type_change(self, adapter: Adapter) -> None:
        if not adapter.type_change:
            pytest.skip("every node of this backend is a container already")
        adapter.build("source", BASE)
        self.sync(adapter)
        adapter.retype("c", "inner")
        self.sync(adapter)
        assert adapter.read("destination")["c/inner"] == "6"

    # -- the contract, one method at a time ---------------------------------------------------
    @contextlib.contextmanager
    def opened(self, adapter: Adapter, side: str, role: str | None = None) -> Iterator[Backend]:
        backend = adapter.open(side, role or side)
        try:
            yield backend
        finally:
            backend.close()

    def keys(self, adapter: Adapter, *paths: str) -> set[Key]:
        return {adapter.key(p) for p in paths}

    def test_backend_protocol_and_features(self, adapter: Adapter) -> None:
        with self.opened(adapter, "source") as b:
            assert isinstance(b, Backend)
            features = Features.of(b)
            names = set(features.names())
            assert adapter.features <= names, names
            assert features.capabilities == b.capabilities
            protocols = {
                "related": Related, "sorted_walk": SortedWalk, "streaming": Streaming,
                "digest_scanning": DigestScanning, "bulk_hashing": BulkHashing,
                "watchable": Watchable, "resumable": ResumableWatchable,
                "prefetching": Prefetching, "linked": Linked,
                "metadata": Metadata, "windowed": Windowed, "spooling": Spooling,
            }
            for name, proto in protocols.items():
                claimed = getattr(features, name)
                assert (claimed is b) == (name in names) == isinstance(b, proto), name
            for name in names:  # what it claims can be called
                for attr in {"related": ["relation"], "sorted_walk": ["walk_sorted"],
                             "streaming": ["stream"], "digest_scanning": ["digest_scan"],
                             "bulk_hashing": ["hash_many", "look"], "watchable": ["watch"],
                             "resumable": ["watch_from"], "prefetching": ["prefetch"],
                             "linked": ["wire", "round_trips", "stat_many",
                                        "look_many"],
                             "metadata": ["id_names", "metadata"],
                             "windowed": ["window", "batch_limits", "submit_batch"],
                             "spooling": ["spool_dir"]}[name]:
                    assert callable(getattr(b, attr)), (name, attr)
        endpoint = open_endpoint(adapter.url("source"), role="source")
        try:
            assert set(endpoint.features.names()) == names
            assert endpoint.role == "source"
        finally:
            endpoint.close()
            endpoint.close()  # idempotent

    def test_backend_canonical_url(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as a, self.opened(adapter, "source") as b, \
                self.opened(adapter, "destination") as d:
            assert isinstance(a.canonical_url(), str)
            assert a.canonical_url() == b.canonical_url()
            assert a.canonical_url() != d.canonical_url()
            assert a.url == adapter.url("source")

    def test_backend_root_state(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as src, self.opened(adapter, "source") as again, \
                self.opened(adapter, "destination") as dst:
            assert src.root_error() is None
            assert src.root_id() is not None
            assert src.root_id() == again.root_id()
            assert not src.is_empty()
            assert dst.root_error() is None
            assert dst.is_empty()
            root = src.stat(())
            assert root is not None and root.kind in CONTAINERS
        gone = open_backend(adapter.absent_url(), role="source")
        try:  # an absent source root is an error; an absent destination is created
            assert isinstance(gone.root_error(), str)
            assert gone.root_id() is None
        finally:
            gone.close()
        absent = open_backend(adapter.absent_url(), role="destination")
        try:
            assert absent.root_error() is None
            assert absent.root_id() is None
            assert absent.is_empty()
            assert absent.stat(()) is None
            assert absent.stat(adapter.key("a")) is None
        finally:
            absent.close()

    def test_backend_metadata_narrows_by_ability(self, adapter: Adapter) -> None:
        """``Metadata.metadata``: what an endpoint keeps of what it is asked is what it
        can keep of all there is, part by part (a remote one answers from that without
        waiting), whatever it was asked before."""
        from hsync._values import evolve
        from hsync.backend import Keep

        adapter.build("source", BASE)
        everything = Keep(owner=True, group=True, acls=True,
                          xattrs=frozenset({"user", "trusted", "security"}))
        asks = [everything, Keep(), Keep(owner=True), Keep(group=True, acls=True),
                Keep(xattrs=frozenset({"user"})), Keep(xattrs=frozenset({"trusted"})),
                evolve(everything, since_ns=123, uids=((1, 2),), gids=((3, 4),))]
        for role in ("source", "destination"):
            with self.opened(adapter, role) as b:
                if not isinstance(b, Metadata):
                    pytest.skip("the backend keeps no owner, group, xattrs or ACLs")
                can = b.metadata(everything)
                for wanted in [*asks, *reversed(asks)]:
                    assert b.metadata(wanted) == wanted.narrowed(can), (role, wanted)
                b.scan()  # what it was told last is what its scans carry

    def test_backend_stat(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as b:
            snap = b.scan()
            leaf, box = adapter.key("c"), adapter.key("a")
            assert b.stat(leaf) == snap.nodes[leaf]
            assert b.stat(leaf).identity == snap.nodes[leaf].identity  # type: ignore[union-attr]
            node = b.stat(box)
            assert node is not None and node.kind in CONTAINERS and node == snap.nodes[box]
            assert b.stat(adapter.key("a/sub/z")) == snap.nodes[adapter.key("a/sub/z")]
            assert b.stat(adapter.key("nope")) is None
            assert b.stat(adapter.key("nope/deeper")) is None
            assert b.stat(adapter.key("c/under")) is None  # below a leaf
            if isinstance(b, Linked):  # asked together (one round trip), answered alike
                keys = [leaf, box, adapter.key("a/sub/z"), adapter.key("nope"),
                        adapter.key("nope/deeper"), adapter.key("c/under")]
                assert b.stat_many(keys) == {k: b.stat(k) for k in keys}

    def test_backend_bulk_hashing(self, adapter: Adapter) -> None:
        """``BulkHashing`` (``hsync verify``): one ``(hash, bytes read, look)`` per key,
        None for what cannot be read; ``look_many`` gives the looks ``look`` gives (over
        a link asked together, ``Linked.look_many``; else the default, one by one)."""
        adapter.build("source", BASE)
        endpoint = open_endpoint(adapter.url("source"), role="source")
        try:
            bulk = endpoint.features.bulk_hashing
            if bulk is None:
                pytest.skip("the backend does not hash in bulk")
            x, y, z, c, nope = (adapter.key(p) for p in ("a/x", "a/y", "a/sub/z", "c", "nope"))
            hashed = bulk.hash_many([x, y, z, c, nope])
            assert [h[0] is not None for h in hashed] == [True] * 4 + [False]
            assert len({h[0] for h in hashed[:4]}) == 4  # four contents, four hashes
            assert [h[2] is not None for h in hashed] == [True] * 4 + [False]
            keys = [(), adapter.key("a"), x, z, c, nope, adapter.key("nope/deeper"),
                    adapter.key("c/under")]
            looks = look_many(endpoint, keys)
            assert looks == {k: bulk.look(k) for k in keys}
            assert [looks[k] is None for k in keys] == [False] * 5 + [True] * 3
            assert look_many(endpoint, [c]) == {c: looks[c]}
            linked = endpoint.features.linked
            if linked is not None:
                assert linked.look_many(keys) == looks
        finally:
            endpoint.close()

    def test_backend_scan_whole(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as b:
            snap = b.scan()
        assert set(snap.nodes) == {(), *self.keys(adapter, *BASE)}
        assert not snap.incomplete
        assert_parents_first(snap, ())
        for path, token in BASE.items():
            node = snap.nodes[adapter.key(path)]
            if token is not None:
                assert node.kind not in (DIR,), path
            if path in ("a", "b", "a/sub"):
                assert node.kind in CONTAINERS, path

    def test_backend_scan_subtree(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as b:
            absent = b.scan(adapter.key("a/nope"))
            assert len(absent.nodes) == 0 and not absent.incomplete
            assert len(b.scan(adapter.key("nope/deeper")).nodes) == 0
            leaf = b.scan(adapter.key("a/x"))
            assert list(leaf.nodes) == [adapter.key("a/x")] and not leaf.incomplete
            sub = b.scan(adapter.key("a"))
        assert set(sub.nodes) == self.keys(adapter, "a", "a/x", "a/y", "a/sub", "a/sub/z")
        assert next(iter(sub.nodes)) == adapter.key("a")
        assert_parents_first(sub, adapter.key("a"))
        assert () not in sub.nodes  # no ancestor

    def test_backend_scan_exclude(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        gone = adapter.key("a/sub")
        exclude = Exclude(("/" + "/".join(gone),))
        with self.opened(adapter, "source") as b:
            snap = b.scan(exclude=exclude)
            part = b.scan(adapter.key("a"), exclude=exclude)
        assert set(snap.nodes) == {(), *self.keys(adapter, "a", "a/x", "a/y", "b", "b/w", "c")}
        assert adapter.key("a") in snap.holds_excluded
        assert set(part.nodes) == self.keys(adapter, "a", "a/x", "a/y")

    def test_backend_scan_cancelled(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        cancel = Cancel()
        cancel.cancel("asked")
        with self.opened(adapter, "source") as b:
            with pytest.raises(Cancelled):
                b.scan(cancel=cancel)
            with pytest.raises(Cancelled):
                b.scan(adapter.key("a"), cancel=cancel)
            # a condition token: cancelled while it holds
            stop = [True]
            with pytest.raises(Cancelled):
                b.scan(cancel=Cancel.when(lambda: stop[0]))
            stop[0] = False
            assert len(b.scan(cancel=Cancel.when(lambda: stop[0])).nodes) == len(BASE) + 1

    def test_backend_read_and_digest(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as b:
            if not b.capabilities.content:
                pytest.skip("this backend's nodes carry no content")
            x, y = adapter.key("a/x"), adapter.key("a/y")
            with b.read(x) as f:
                first = f.read()
            assert isinstance(first, bytes) and len(first) == b.stat(x).size  # type: ignore[union-attr]
            dx, dy = b.digest(x), b.digest(y)
            assert isinstance(dx, bytes) and dx == b.digest(x) and dx != dy
            assert b.digest(adapter.key("nope")) is None
            with pytest.raises(OSError):
                b.read(adapter.key("nope"))
            adapter.write("a/y", "1")  # x's token: the same content
            assert b.digest(y) == dx

    # -- apply_batch
    def copy_all(self, adapter: Adapter, src: Backend, dst: Backend) -> Snapshot:
        """Create every source node on the (empty) destination: one batch."""
        snap = src.scan()
        ops = creates(snap)
        result = dst.apply_batch(ops, src, snap)
        assert not result.problems, result.problems
        assert same_ops(result.done, ops)
        if dst.capabilities.content:
            assert result.bytes_copied == sum(n.size for n in snap.nodes.values()
                                              if n.kind == FILE)
        return snap

    def test_backend_apply_create(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as src, self.opened(adapter, "destination") as dst:
            seen: list[Op] = []
            snap = src.scan()
            ops = creates(snap)
            result = dst.apply_batch(ops, src, snap, on_done=seen.append)
            assert not result.problems, result.problems
            assert same_ops(result.done, ops) and same_ops(seen, ops)  # in any order
            if result.durable is not None:
                result.durable()
            assert below_root(dst.scan()) == below_root(snap)  # directory metadata too
            assert adapter.read("destination") == BASE
            assert not dst.is_empty()

    def test_backend_apply_update_move_delete(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as src, self.opened(adapter, "destination") as dst:
            self.copy_all(adapter, src, dst)
            before = dst.scan()
            # update
            adapter.write("a/sub/z", "33")
            snap = src.scan()
            z = adapter.key("a/sub/z")
            op = Op(op=UPDATE, kind=snap.nodes[z].kind, key=z, node=snap.nodes[z],
                    old=before.nodes[z], content=snap.nodes[z].kind == FILE)
            result = dst.apply_batch([op], src, snap)
            assert not result.problems and result.done == [op], result.problems
            assert dst.stat(z) == snap.nodes[z]
            assert adapter.read("destination")["a/sub/z"] == "33"
            # move (a subtree, keeping identities)
            held = dst.scan().nodes
            ident = adapter.identity("destination", "a/sub/z")
            adapter.rename("a", "b/moved")
            snap = src.scan()
            a, moved = adapter.key("a"), adapter.key("b/moved")
            op = Op(op=MOVE, kind=held[a].kind, key=a, to=moved, old=held[a])
            result = dst.apply_batch([op], src, snap)
            assert not result.problems and result.done == [op], result.problems
            after = dst.scan()
            assert same_shape(after, snap)
            assert after.nodes[adapter.key("b/moved/sub/z")].identity == held[z].identity
            assert adapter.identity("destination", "b/moved/sub/z") == ident
            # delete (leaves first)
            adapter.delete("b")
            snap = src.scan()
            gone = [k for k in after.nodes if k[:1] == adapter.key("b")]
            ops = [Op(op=DELETE, kind=after.nodes[k].kind, key=k, old=after.nodes[k])
                   for k in sorted(gone, key=len, reverse=True)]
            result = dst.apply_batch(ops, src, snap)
            assert not result.problems and same_ops(result.done, ops), result.problems
            assert same_shape(dst.scan(), snap)
            assert adapter.read("destination") == adapter.read("source") == {"c": "5"}

    def test_backend_apply_checks_what_it_replaces(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as src, self.opened(adapter, "destination") as dst:
            self.copy_all(adapter, src, dst)
            held = dst.scan().nodes
            adapter.write("c", "55")
            snap = src.scan()
            c = adapter.key("c")
            stale = snap.nodes[c]  # not what the destination holds
            ops = [
                Op(op=DELETE, kind=stale.kind, key=c, old=stale),
                Op(op=CREATE, kind=stale.kind, key=c, node=stale),  # onto an occupied key
                Op(op=UPDATE, kind=stale.kind, key=c, node=stale, old=stale,
                   content=stale.kind == FILE),
            ]
            result = dst.apply_batch(ops, src, snap)
            assert result.done == []
            assert sorted((p.key, p.op, p.kind) for p in result.problems) == [
                (c, CREATE, "skip"), (c, DELETE, "skip"), (c, UPDATE, "skip")
            ], result.problems  # any order
            assert dst.stat(c) == held[c]
            assert adapter.read("destination")["c"] == "5"

    def test_backend_apply_cancelled(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as src, self.opened(adapter, "destination") as dst:
            snap = src.scan()
            ops = creates(snap)
            cancel = Cancel()
            cancel.cancel("stop")
            result = dst.apply_batch(ops, src, snap, cancel=cancel)
            assert result.done == []
            assert [(p.key, p.op, p.kind) for p in result.problems] == [
                (op.key, CREATE, "cancelled") for op in ops]
            assert all(p.retry for p in result.problems)
            assert dst.is_empty()
            # cancelled once the first op is done: what was not run yet is not run (a
            # backend may have a few ops in flight); each op is done or cancelled
            cancel = Cancel()
            result = dst.apply_batch(ops, src, snap, cancel=cancel,
                                     on_done=lambda op: cancel.cancel("stop"))
            assert result.done
            assert all((p.op, p.kind) == (CREATE, "cancelled") for p in result.problems)
            assert same_ops([*result.done, *(o for o in ops if o.key in {
                p.key for p in result.problems})], ops)
            assert {k for k in dst.scan().nodes if k} == {op.key for op in result.done}

    # -- watch
    def test_watch(self, adapter: Adapter) -> None:
        adapter.build("source", BASE)
        with self.opened(adapter, "source") as b:
            watchable = Features.of(b).watchable
            if watchable is None:
                pytest.skip("this backend has no watch")
            sink = RecordingSink()
            before = set(threading.enumerate())
            w = watchable.watch(sink)
            with w as running:
                assert running.alive
                assert not running.resumed
                changed = adapter.key("a/x")
                adapter.write("a/x", "11")
                assert sink.wait_for(changed, seconds=5), sink.seen
                assert running.alive
            leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
            assert leaked == [], leaked
            assert not w.alive
            assert not sink.lost_reasons


# -- helpers ---------------------------------------------------------------------------------
def creates(snap: Snapshot) -> list[Op]:
    """Create ops for every node below the root, parents first (shallowest first)."""
    keys = sorted((k for k in snap.nodes if k), key=lambda k: (len(k), k))
    return [Op(op=CREATE, kind=snap.nodes[k].kind, key=k, node=snap.nodes[k]) for k in keys]


def same_ops(got: list[Op], want: list[Op]) -> bool:
    """The same ops, in any order (a backend may finish copies after the ops behind
    them: ``ApplyResult.done`` and ``on_done`` promise no order)."""
    return sorted(map(repr, got)) == sorted(map(repr, want))


def below_root(snap: Snapshot) -> dict[Key, Node]:
    return {k: n for k, n in snap.nodes.items() if k}


def same_shape(a: Snapshot, b: Snapshot) -> bool:
    """Equal below the root, directories compared without their mtime (a directory's
    own mtime after a rename is the filesystem's business: the core plans an update)."""
    def strip(n: Node) -> Node:
        return Node(n.kind, n.mode, n.size, 0, n.target, data=n.data) if n.kind == DIR else n

    return {k: strip(n) for k, n in below_root(a).items()} == {
        k: strip(n) for k, n in below_root(b).items()}


def assert_parents_first(snap: Snapshot, top: Key) -> None:
    seen: set[Key] = set()
    for k in snap.nodes:
        if k != top:
            assert k[:-1] in seen, f"{k} before its parent"
        seen.add(k)


class RecordingSink:
    """A ``WatchSink`` that records what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[Key, bool]] = []
        self.lost_reasons: list[str] = []
        self.unwatched_keys: list[Key] = []
        self.moves: list[tuple[Key, Key]] = []
        self.cond = threading.Condition()

    def dirty(self, key: Key, *, deep: bool = True, writing: bool = False) -> None:
        with self.cond:
            self.seen.append((key, deep))
            self.cond.notify_all()

    def lost(self, reason: str) -> None:
        with self.cond:
            self.lost_reasons.append(reason)
            self.cond.notify_all()

    def moved(self, old: Key, new: Key, *, directory: bool = True) -> None:
        self.moves.append((old, new))

    def unwatched(self, key: Key, reason: str) -> None:
        self.unwatched_keys.append(key)

    def covers(self, key: Key) -> bool:
        return any(k == key or (deep and key[: len(k)] == k) for k, deep in self.seen)

    def wait_for(self, key: Key, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        with self.cond:
            while not self.covers(key):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True
