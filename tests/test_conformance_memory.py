"""The backend conformance suite on the in-memory test backend (``memory_backend``): a
backend written only from the documented contract passes it, with its watch
(``mem://``) and with nothing optional at all (``memmin://``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from conformance import BackendConformance, Endpoints, Tree
from memory_backend import (
    MemoryBackend,
    MinimalBackend,
    mem_mkdir,
    mem_node,
    mem_remove,
    mem_rename,
    mem_reset,
    mem_tree,
    mem_write,
)

from hsync.backend import Backend, Features, open_backend


class MemAdapter(Endpoints):
    type_change = True
    scheme: ClassVar[str] = "mem"
    features: ClassVar[frozenset[str]] = frozenset({"watchable"})

    def __init__(self) -> None:
        self.names = {"source": "src", "destination": "dst"}
        for name in self.names.values():
            mem_mkdir(name)

    def url(self, side: str) -> str:
        return f"{self.scheme}://{self.names[side]}"

    def absent_url(self) -> str:
        return f"{self.scheme}://never-made"

    def build(self, side: str, tree: Tree) -> None:
        parents = {p.rsplit("/", 1)[0] for p in tree if "/" in p}
        for path in sorted(tree):
            token = tree[path]
            if token is None or path in parents:
                mem_mkdir(self.names[side], path)
            else:
                mem_write(self.names[side], path, token)

    def read(self, side: str) -> Tree:
        out: Tree = {}
        for path, value in mem_tree(self.names[side]).items():
            assert not isinstance(value, str), "no symlink in these trees"
            out[path] = None if value is None else value.decode()
        return out

    def rename(self, old: str, new: str) -> None:
        mem_rename("src", old, new)

    def write(self, path: str, token: str) -> None:
        mem_write("src", path, token)

    def delete(self, path: str) -> None:
        mem_remove("src", path)

    def retype(self, path: str, child: str) -> None:
        mem_remove("src", path)
        mem_write("src", f"{path}/{child}", "6")

    def identity(self, side: str, path: str) -> Any:
        node = mem_node(self.names[side], path)
        assert node is not None, path
        return node.identity


class MinAdapter(MemAdapter):
    scheme = "memmin"
    features = frozenset()


@pytest.fixture(autouse=True)
def _fresh_trees() -> Iterator[None]:
    mem_reset()
    yield
    mem_reset()


class TestMemoryConformance(BackendConformance):
    @pytest.fixture
    def adapter(self) -> MemAdapter:
        return MemAdapter()

    def test_claims_exactly_watchable(self, adapter: MemAdapter) -> None:
        b = open_backend(adapter.url("source"), role="source")
        assert type(b) is MemoryBackend
        assert Features.of(b).names() == ["watchable"]


class TestMinimalConformance(BackendConformance):
    @pytest.fixture
    def adapter(self) -> MinAdapter:
        return MinAdapter()

    def test_claims_nothing_optional(self, adapter: MinAdapter) -> None:
        b = open_backend(adapter.url("source"), role="source")
        assert type(b) is MinimalBackend
        assert Features.of(b).names() == []
        # exactly the required protocol: no public name the protocol does not declare
        required = {n for n in vars(Backend) if not n.startswith("_")} | {"url", "capabilities"}
        public = {n for n in dir(b) if not n.startswith("_")}
        assert public == required, public ^ required
