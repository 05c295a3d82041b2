"""One conformance suite for every backend (STYLE: fsspec's abstract tests, rclone's
fstests): the same scenarios, through ``hsync.sync``, against real endpoints.

A backend's test module subclasses ``BackendConformance`` and provides the ``adapter``
fixture: an object that builds and reads trees on the real endpoints. Trees are written
as ``{"a": None, "a/b": "token"}``: a path and its payload token (None: no payload; a
container where it has children). What the token is on the endpoint is the adapter's
business (a file's content, an entry's description).
"""

from __future__ import annotations

from typing import Any, Protocol

import pytest

import hsync

Tree = dict[str, "str | None"]


class Adapter(Protocol):
    """Real endpoints for one backend; ``side`` is "source" or "destination"."""

    type_change: bool
    """A leaf can become a container under the same name (files: yes; LDAP: an entry is
    both already)."""

    def url(self, side: str) -> str: ...

    def build(self, side: str, tree: Tree) -> None: ...

    def read(self, side: str) -> Tree: ...

    def rename(self, old: str, new: str) -> None:
        """Move ``old`` (with its subtree) to ``new`` on the source, keeping identity."""
        ...

    def write(self, path: str, token: str) -> None:
        """Change the payload of the source node ``path``."""
        ...

    def delete(self, path: str) -> None:
        """Delete ``path`` and its subtree on the source."""
        ...

    def retype(self, path: str, child: str) -> None:
        """Replace the source leaf ``path`` by a container holding ``child``."""
        ...

    def identity(self, side: str, path: str) -> Any: ...


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

    def sync(self, adapter: Adapter) -> hsync.Report:
        report = hsync.sync(adapter.url("source"), adapter.url("destination"), check=True)
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
        report = self.sync(adapter)
        assert report.counts["delete"] == 3

    def test_type_change(self, adapter: Adapter) -> None:
        if not adapter.type_change:
            pytest.skip("every node of this backend is a container already")
        adapter.build("source", BASE)
        self.sync(adapter)
        adapter.retype("c", "inner")
        self.sync(adapter)
        assert adapter.read("destination")["c/inner"] == "6"
