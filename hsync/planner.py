"""plan: order the changes so the hierarchy holds at every step. Pure.

The planner simulates the destination as a tree of node ids (so a moved directory
carries its subtree in one step) and emits an op only when it is legal at that moment
(SPEC section 4): a create or move lands under a parent that is already in its final
place, on a free name; a delete hits a node whose children have left.

Tasks are tried in passes (deletes deepest first, then moves, then creates in key
order, so the common cases finish in one pass). When a pass makes no progress the
remaining moves form cycles (a swap, a rotation, a parent and child exchanging places,
a case-only rename on a case-insensitive destination); one node that blocks a ready
target is moved to a temporary name in its own parent, which frees the target: each
cycle costs one extra move (the parallel-move algorithm, Rideau et al. 2008).

Updates come after the structure is settled: files in key order, then directories
deepest first (a directory's metadata is set after its children).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

from .errors import PlanError
from .model import (
    CONTAINERS,
    CREATE,
    DELETE,
    DIR,
    MOVE,
    ROOT,
    UPDATE,
    Change,
    Key,
    Node,
    Op,
    Plan,
    Snapshot,
    same_payload,
)

TEMP_PREFIX = ".hsync-mv-"
"""Names of nodes parked by the planner to break a cycle (they are real nodes)."""

_ROOT_ID = 0


def _identity(name: str) -> str:
    return name


def casefold(name: str) -> str:
    return name.casefold()


class _Sim:
    """The destination as the planner sees it while it orders ops.

    Ids: 0 is the root. Destination nodes get an id when first touched; their
    children are read from the snapshot on first use (the sim stays proportional to
    what the plan touches, not to the tree).
    """

    def __init__(self, destination: Snapshot, fold: Callable[[str], str]) -> None:
        self.dst = destination
        self.fold = fold
        self.ids = itertools.count(1)
        self.id_of: dict[Key, int] = {ROOT: _ROOT_ID}
        self.loc: dict[int, tuple[int, str]] = {}
        self.kids: dict[int, dict[str, int]] = {}
        self.orig: dict[int, Key] = {_ROOT_ID: ROOT}

    def of(self, key: Key) -> int:
        """The id of the node that is at destination key ``key`` in the snapshot."""
        nid = self.id_of.get(key)
        if nid is None:
            nid = next(self.ids)
            self.id_of[key] = nid
            self.orig[nid] = key
            self.loc[nid] = (self.of(key[:-1]), key[-1])
        return nid

    def children(self, nid: int) -> dict[str, int]:
        kids = self.kids.get(nid)
        if kids is None:
            kids = {}
            key = self.orig.get(nid)
            if key is not None:
                for child in self.dst.children(key):
                    kids[self.fold(child[-1])] = self.of(child)
            self.kids[nid] = kids
        return kids

    def key(self, nid: int) -> Key:
        parts: list[str] = []
        while nid != _ROOT_ID:
            pid, name = self.loc[nid]
            parts.append(name)
            nid = pid
        return tuple(reversed(parts))

    def new(self) -> int:
        nid = next(self.ids)
        self.kids[nid] = {}
        return nid

    def attach(self, nid: int, pid: int, name: str) -> None:
        self.children(pid)[self.fold(name)] = nid
        self.loc[nid] = (pid, name)

    def detach(self, nid: int) -> None:
        pid, name = self.loc.pop(nid)
        del self.children(pid)[self.fold(name)]

    def is_ancestor(self, a: int, b: int) -> bool:
        """True when ``a`` is ``b`` or one of its current ancestors."""
        while True:
            if a == b:
                return True
            if b == _ROOT_ID:
                return False
            b = self.loc[b][0]


class _Planner:
    def __init__(
        self,
        changes: Sequence[Change],
        destination: Snapshot,
        fold: Callable[[str], str],
    ) -> None:
        self.sim = _Sim(destination, fold)
        self.fold = fold
        self.ops: list[Op] = []
        self.moves = {c.to: c for c in changes if c.op == MOVE}
        self.creates = {c.key: c for c in changes if c.op == CREATE}
        self.deletes = [c for c in changes if c.op == DELETE]
        self.updates = [c for c in changes if c.op == UPDATE]
        self.moved_to_dst = {s: c.key for s, c in self.moves.items()}
        # final position (parent id, name) of moved and created nodes; deleted ids
        self.final: dict[int, tuple[int, str]] = {}
        self.created_id: dict[Key, int] = {}
        self.deleted: set[int] = set()
        self.placed_cache: set[int] = {_ROOT_ID}
        self.temp_names = itertools.count(1)
        self.done: set[int] = set()  # id() of the changes already emitted
        self.waiting: dict[tuple[int, str], list[Change]] = {}  # by the name they need
        self.waiting_delete: dict[int, Change] = {}  # by the directory to empty
        self.wake: list[Change] = []

    # -- who ends where --------------------------------------------------------------
    def final_id(self, skey: Key) -> int:
        """The id of the node that ends at source key ``skey``."""
        if not skey:
            return _ROOT_ID
        nid = self.created_id.get(skey)
        if nid is not None:
            return nid
        # Walk up to the nearest ancestor that is moved or created: below it, nodes
        # keep their relative place.
        for i in range(len(skey), 0, -1):
            head = skey[:i]
            d = self.moved_to_dst.get(head)
            if d is not None:
                return self.sim.of(d + skey[i:])
            if head in self.creates:
                if i == len(skey):
                    return self.created_id.setdefault(skey, self.sim.new())
                raise PlanError(f"{'/'.join(skey)}: below a created node but not created")
        return self.sim.of(skey)

    def placed(self, nid: int) -> bool:
        """True when the node and all its ancestors are at their final places."""
        chain = []
        sim = self.sim
        while nid not in self.placed_cache:
            if nid in self.deleted:
                return False
            cur = sim.loc.get(nid)
            if cur is None:
                return False  # not created yet
            fin = self.final.get(nid)
            if fin is not None and fin != cur:
                return False
            chain.append(nid)
            nid = cur[0]
        self.placed_cache.update(chain)
        return True

    # -- emitting ---------------------------------------------------------------------
    def emit(self, op: Op) -> None:
        self.ops.append(op)

    def do_move(self, nid: int, pid: int, name: str, change: Change | None) -> None:
        sim = self.sim
        before = sim.key(nid)
        self.freed(nid)
        sim.detach(nid)
        sim.attach(nid, pid, name)
        self.placed_cache = {_ROOT_ID}  # a move can change what is placed below it
        node = change.node if change is not None else sim.dst.nodes[sim.orig[nid]]
        kind = change.kind if change is not None else sim.dst.nodes[sim.orig[nid]].kind
        self.emit(
            Op(
                op=MOVE,
                kind=kind,
                key=before,
                to=sim.key(nid),
                node=node,
                old=change.old if change is not None else node,
                temporary=change is None,
            )
        )

    def park(self, nid: int) -> None:
        """Move a blocking node to a temporary name in its own parent."""
        pid, _ = self.sim.loc[nid]
        taken = self.sim.children(pid)
        while True:
            tmp = f"{TEMP_PREFIX}{next(self.temp_names)}"
            if self.fold(tmp) not in taken:
                break
        self.do_move(nid, pid, tmp, None)

    # -- the passes -------------------------------------------------------------------
    def run(self) -> list[Op]:
        sim = self.sim
        root_create = self.creates.pop(ROOT, None)
        if root_create is not None:
            self.emit(Op(op=CREATE, kind=root_create.kind, key=ROOT, node=root_create.node))
        for c in self.deletes:
            self.deleted.add(sim.of(c.key))
        for s, c in self.moves.items():
            assert s is not None
            self.final[sim.of(c.key)] = (self.final_id(s[:-1]), s[-1])
        for s in self.creates:
            nid = self.final_id(s)
            self.final[nid] = (self.final_id(s[:-1]), s[-1])

        deletes = sorted(self.deletes, key=lambda c: (-len(c.key), c.key))
        moves = sorted(self.moves.values(), key=lambda c: (len(c.to or ()), c.to))
        creates = sorted(self.creates.values(), key=lambda c: c.key)
        pending: list[Change] = [*deletes, *moves, *creates]
        while pending:
            blocked: list[tuple[int, Change]] = []  # (occupant, whose target it holds)
            progress = len(self.done)
            for c in pending:
                if id(c) not in self.done:
                    self.attempt(c, blocked)
            if len(self.done) == progress:
                parked = False
                # Only cycles are left: park one node of each (it frees a target, and the
                # wake-ups run the rest of that cycle at once).
                for occupant, c in blocked:
                    if id(c) in self.done:
                        continue
                    pid, name = self.final[self.node_of(c)]
                    if self.sim.children(pid).get(self.fold(name)) == occupant:
                        self.park(occupant)
                        parked = True
                        self.drain(blocked)
                if not parked:
                    raise PlanError(
                        "no legal order for: "
                        + ", ".join(f"{c.op} {'/'.join(c.key)}" for c in pending[:5])
                    )
            pending = [c for c in pending if id(c) not in self.done]
        self.emit_updates()
        return self.ops

    def node_of(self, c: Change) -> int:
        return self.sim.id_of[c.key] if c.op != CREATE else self.created_id[c.key]

    def attempt(self, c: Change, blocked: list[tuple[int, Change]]) -> None:
        """Try ``c``; then whatever its op unblocked (a freed name, an emptied directory),
        at once: a chain of n renames takes one pass, not n."""
        if not self.try_one(c, blocked):
            return
        self.done.add(id(c))
        self.drain(blocked)

    def drain(self, blocked: list[tuple[int, Change]]) -> None:
        while self.wake:
            w = self.wake.pop()
            if id(w) not in self.done and self.try_one(w, blocked):
                self.done.add(id(w))

    def freed(self, nid: int) -> None:
        """``nid`` is about to leave its place: wake what waits for that name, and the
        delete of its parent if it was the last child."""
        pid, name = self.sim.loc[nid]
        waiting = self.waiting.pop((pid, self.fold(name)), None)
        if waiting:
            self.wake.extend(waiting)
        parent_delete = self.waiting_delete.get(pid)
        if parent_delete is not None and len(self.sim.children(pid)) <= 1:
            del self.waiting_delete[pid]
            self.wake.append(parent_delete)

    def try_one(self, c: Change, blocked: list[tuple[int, Change]]) -> bool:
        sim = self.sim
        if c.op == DELETE:
            nid = sim.id_of[c.key]
            if sim.children(nid):
                self.waiting_delete[nid] = c
                return False
            before = sim.key(nid)
            self.freed(nid)
            sim.detach(nid)
            self.emit(Op(op=DELETE, kind=c.kind, key=before, old=c.old))
            return True
        nid = self.node_of(c)
        pid, name = self.final[nid]
        if not self.placed(pid):
            return False
        occupant = sim.children(pid).get(self.fold(name))
        if occupant is not None:
            if occupant == nid and sim.loc[nid][1] == name:
                return True  # already there (cannot happen for a real move)
            blocked.append((occupant, c))
            self.waiting.setdefault((pid, self.fold(name)), []).append(c)
            return False
        if c.op == MOVE:
            if sim.is_ancestor(nid, pid):
                return False  # rule 4: first its descendant must leave
            self.do_move(nid, pid, name, c)
        else:
            sim.attach(nid, pid, name)
            self.placed_cache.add(nid)
            self.emit(Op(op=CREATE, kind=c.kind, key=sim.key(nid), node=c.node))
        return True

    def emit_updates(self) -> None:
        self.ops += _creates_only(self.updates)


def plan(
    changes: Iterable[Change], destination: Snapshot, *, case_insensitive: bool = False
) -> Plan:
    """Order ``changes`` (from ``diff``) into ops valid against ``destination``."""
    changes = list(changes)
    fold = casefold if case_insensitive else _identity
    if all(c.op in (CREATE, UPDATE) for c in changes):
        ops = _creates_only(changes)
    else:
        ops = _Planner(changes, destination, fold).run()
    return Plan(ops=tuple(ops), changes=tuple(changes))


def _creates_only(changes: list[Change]) -> list[Op]:
    """Without moves and deletes every created key is free and its parent either exists
    or is created: key order (a parent sorts before its children) is a legal order.
    The common case of an initial sync, and of a tree that only grew."""
    creates = sorted((c for c in changes if c.op == CREATE), key=lambda c: c.key)
    ops = [Op(op=CREATE, kind=c.kind, key=c.key, node=c.node) for c in creates]
    updates = [c for c in changes if c.op == UPDATE]
    files = sorted((c for c in updates if c.kind != DIR), key=lambda c: c.key)
    dirs = sorted((c for c in updates if c.kind == DIR), key=lambda c: (-len(c.key), c.key))
    ops += [
        Op(op=UPDATE, kind=c.kind, key=c.key, node=c.node, old=c.old, content=c.content)
        for c in (*files, *dirs)
    ]
    return ops


def check_plan(
    ops: Iterable[Op],
    destination: Snapshot,
    source: Snapshot | None = None,
    *,
    case_insensitive: bool = False,
    allow_extra: bool = False,
) -> None:
    """Simulate ``ops`` on ``destination`` and raise ``PlanError`` at the first op that
    breaks a rule of SPEC section 4; with ``source``, also require the end state to
    equal it (``allow_extra``: destination-only nodes may remain, as with --no-delete).
    """
    fold = casefold if case_insensitive else _identity
    state: dict[Key, Node] = dict(destination.nodes)
    folded: dict[Key, Key] = {tuple(map(fold, k)): k for k in state}
    kids: dict[Key, set[Key]] = {}
    for k in state:
        if k:
            kids.setdefault(k[:-1], set()).add(k)

    def fail(i: int, op: Op, why: str) -> None:
        raise PlanError(f"op {i} ({op.op} {'/'.join(op.key)}): {why}")

    def occupied(k: Key) -> bool:
        return tuple(map(fold, k)) in folded

    def add(k: Key, node: Node) -> None:
        state[k] = node
        folded[tuple(map(fold, k))] = k
        if k:
            kids.setdefault(k[:-1], set()).add(k)

    def remove(k: Key) -> Node:
        node = state.pop(k)
        del folded[tuple(map(fold, k))]
        if k:
            kids[k[:-1]].discard(k)
        return node

    def parent_ok(i: int, op: Op, k: Key) -> None:
        if not k:
            return
        p = state.get(k[:-1])
        if p is None:
            fail(i, op, "parent does not exist (rule 1)")
        elif p.kind not in CONTAINERS:
            fail(i, op, "parent is not a container (rule 1)")

    for i, op in enumerate(ops):
        if op.op == CREATE:
            if occupied(op.key):
                fail(i, op, "target is occupied (rule 3)")
            parent_ok(i, op, op.key)
            assert op.node is not None
            add(op.key, op.node)
        elif op.op == DELETE:
            if op.key not in state:
                fail(i, op, "nothing to delete")
            if kids.get(op.key):
                fail(i, op, "has children (rule 2)")
            remove(op.key)
            kids.pop(op.key, None)
        elif op.op == MOVE:
            to = op.to
            if to is None or op.key not in state:
                fail(i, op, "nothing to move")
                continue
            if to[: len(op.key)] == op.key:
                fail(i, op, "moved into its own subtree (rule 4)")
            same_node = tuple(map(fold, to)) == tuple(map(fold, op.key))
            if occupied(to) and not same_node:
                fail(i, op, "target is occupied (rule 3)")
            if same_node:
                fail(i, op, "case-only rename onto itself needs a temporary name")
            parent_ok(i, op, to)
            moving = [op.key, *_descendants(kids, op.key)]
            moved = [(k, remove(k)) for k in moving]
            for k in moving:
                kids.pop(k, None)
            for k, node in moved:  # a rename carries the payload it had
                add(to + k[len(op.key) :], node)
        elif op.op == UPDATE:
            if op.key not in state:
                fail(i, op, "nothing to update")
            assert op.node is not None
            if state[op.key].kind != op.node.kind:
                fail(i, op, "update changes the kind")
            state[op.key] = op.node
        else:
            fail(i, op, "unknown op")

    if source is None:
        return
    for k, node in source.nodes.items():
        have = state.get(k)
        if have is None and _frozen(k, source, destination):
            continue
        if have is None:
            raise PlanError(f"{'/'.join(k) or '(root)'}: missing after the plan (rule 5)")
        if not same_payload(have, node) and not _frozen(k, source, destination):
            raise PlanError(f"{'/'.join(k) or '(root)'}: differs after the plan (rule 5)")
    if not allow_extra:
        for k in state:
            if k not in source.nodes and not _frozen(k, source, destination):
                raise PlanError(f"{'/'.join(k)}: left over after the plan (rule 5)")


def _frozen(k: Key, source: Snapshot, destination: Snapshot) -> bool:
    return (source.is_incomplete(k) or destination.is_incomplete(k)
            or any(k[:i] in source.mounts or k[:i] in destination.mounts
                   for i in range(len(k))))


def _descendants(kids: dict[Key, set[Key]], key: Key) -> list[Key]:
    out: list[Key] = []
    stack = [key]
    while stack:
        for c in kids.get(stack.pop(), ()):
            out.append(c)
            stack.append(c)
    return out
