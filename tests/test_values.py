"""The value classes (``hsync._values``) behave as the attrs classes they replace.

Each case declares one class twice, with ``hsync._values`` and with attrs, and checks
that what a caller sees is the same: construction (positional, keyword-only,
defaults, factories, converters, errors), equality and hashing (a field with
``eq=False`` ignored), ``repr``, ``evolve``, immutability, pickling, and attrs's own
functions (``attrs.fields``, ``has``, ``evolve``, ``astuple``) on the new classes.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsync import _values
from hsync._values import FrozenInstanceError, define, evolve, field, frozen
from hsync.model import Node, Op, Problem, Snapshot
from hsync.options import Options


@frozen
class V:
    kind: str
    size: int = 0
    identity: int | None = field(default=None, eq=False)
    tags: tuple[str, ...] = field(default=(), converter=tuple)
    note: str = field(default="", kw_only=True, repr=False)


@attrs.frozen
class A:
    kind: str
    size: int = 0
    identity: int | None = attrs.field(default=None, eq=False)
    tags: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    note: str = attrs.field(default="", kw_only=True, repr=False)


@define
class M:
    items: list[int] = field(factory=list)
    _cache: dict[str, int] | None = field(default=None, init=False, repr=False, eq=False)
    count: int = 0


@attrs.define
class MA:
    items: list[int] = attrs.field(factory=list)
    _cache: dict[str, int] | None = attrs.field(default=None, init=False, repr=False, eq=False)
    count: int = 0


values = st.tuples(
    st.text(max_size=3), st.integers(-5, 5), st.none() | st.integers(0, 3),
    st.lists(st.sampled_from("ab"), max_size=2), st.text(max_size=2),
)


def _both(v: tuple[Any, ...]) -> tuple[V, A]:
    kind, size, ident, tags, note = v
    return V(kind, size, ident, tags, note=note), A(kind, size, ident, tags, note=note)


@given(values, values)
def test_equality_hash_and_repr_are_attrs(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    # every construction is made twice: the first instances bind without a compile
    # (``COMPILE_AFTER``), later ones run the compiled ``__init__``
    for _ in range(2):
        (va, aa), (vb, ab) = _both(a), _both(b)
        assert (va == vb) == (aa == ab)
        assert (va != vb) == (aa != ab)
        if va == vb:
            assert hash(va) == hash(vb)
        assert repr(va) == repr(aa).replace("A(", "V(", 1)
        assert va.tags == aa.tags and type(va.tags) is tuple


@given(values, st.integers(-5, 5))
def test_evolve_is_attrs_evolve(a: tuple[Any, ...], size: int) -> None:
    va, aa = _both(a)
    for new in (evolve(va, size=size, tags=["b"]), attrs.evolve(va, size=size, tags=["b"])):
        assert type(new) is V
        assert repr(new) == repr(attrs.evolve(aa, size=size, tags=["b"])).replace("A(", "V(")
        assert new.identity == va.identity and new.note == va.note
    assert evolve(aa, size=size) == attrs.evolve(aa, size=size)  # attrs classes too


def test_construction_errors_are_those_of_python() -> None:
    for _ in range(_values.COMPILE_AFTER + 2):  # bound, then compiled
        with pytest.raises(TypeError, match="kind"):
            V()  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
            V("f", nope=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="positional"):
            V("f", 1, None, (), "note")  # type: ignore[misc]
        with pytest.raises(TypeError, match="multiple values"):
            V("f", kind="g")  # type: ignore[misc]
        with pytest.raises(TypeError, match="key"):
            Op(op="create", kind="file")  # type: ignore[call-arg]


def test_frozen_values_refuse_changes_and_mutable_ones_do_not() -> None:
    v = V("f")
    with pytest.raises(FrozenInstanceError):
        v.size = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del v.kind  # type: ignore[misc]
    with pytest.raises(AttributeError):
        v.other = 1  # type: ignore[attr-defined]  # slotted: no other attribute
    m = M()
    m.count = 3
    assert m == MA_like(m) and m.count == 3
    with pytest.raises(TypeError):
        hash(m)  # compared by value and mutable: unhashable, as attrs.define
    assert M().items is not M().items  # a factory per instance
    assert M()._cache is None and "cache" not in repr(M())
    with pytest.raises(TypeError):
        M(cache={})  # type: ignore[call-arg]  # init=False


def MA_like(m: M) -> M:
    """``m`` rebuilt from an attrs class's view of it."""
    return M(**{a.alias: getattr(m, a.name) for a in attrs.fields(M) if a.init})


def test_attrs_sees_attrs_classes() -> None:
    assert attrs.has(V) and attrs.has(Node) and attrs.has(Options)
    assert [a.name for a in attrs.fields(V)] == [a.name for a in attrs.fields(A)]
    assert [a.name for a in attrs.fields(M)] == [a.name for a in attrs.fields(MA)]
    assert attrs.fields(Node).identity.eq is False
    n = Node("file", 0o644, 3, 7, None, 12)
    assert attrs.astuple(n, recurse=False) == _values.astuple(n) == (
        "file", 0o644, 3, 7, None, 12, None)
    assert attrs.asdict(Problem(("a",), "x", op="create")) == {
        "key": ("a",), "message": "x", "op": "create", "kind": "error"}
    assert attrs.evolve(Options(), exclude=["*.o"]).exclude == ("*.o",)  # converted


@pytest.mark.parametrize("value", [
    Node("file", 0o644, 3, 7, "t", 12, ("u", 1)),
    Op(op="move", kind="dir", key=("a",), to=("b",)),
    Problem(("a",), "failed", op="update", kind="retry"),
    Options(exclude=("x",), delete=True),
    V("f", 2, 3, ("a",), note="n"),
], ids=lambda v: type(v).__name__)
def test_values_pickle_and_copy(value: Any) -> None:
    for again in (pickle.loads(pickle.dumps(value)), copy.copy(value), copy.deepcopy(value)):
        assert again == value and repr(again) == repr(value)
        assert _values.astuple(again) == _values.astuple(value)  # identity too


def test_snapshot_keeps_its_own_methods() -> None:
    s = Snapshot(nodes={(): Node("dir"), ("a",): Node("file")})
    assert s == Snapshot(nodes={(): Node("dir"), ("a",): Node("file")})
    assert s != Snapshot()
    assert len(s) == 2 and ("a",) in s and s.children(()) == [("a",)]
