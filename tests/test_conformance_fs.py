"""The backend conformance suite on the filesystem backend (real trees in tmp_path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conformance import BackendConformance, Endpoints, Tree


class FsAdapter(Endpoints):
    type_change = True
    features = frozenset({"watchable"})

    def __init__(self, root: Path) -> None:
        self.base = root
        self.roots = {"source": root / "src", "destination": root / "dst"}
        for r in self.roots.values():
            r.mkdir()

    def url(self, side: str) -> str:
        return str(self.roots[side])

    def absent_url(self) -> str:
        return str(self.base / "never-made")

    def _p(self, side: str, path: str) -> Path:
        return self.roots[side] / path

    def build(self, side: str, tree: Tree) -> None:
        parents = {p.rsplit("/", 1)[0] for p in tree if "/" in p}
        for path in sorted(tree):
            token = tree[path]
            if token is None or path in parents:
                self._p(side, path).mkdir(parents=True, exist_ok=True)
            else:
                self._p(side, path).parent.mkdir(parents=True, exist_ok=True)
                self._p(side, path).write_text(token)

    def read(self, side: str) -> Tree:
        out: Tree = {}
        root = self.roots[side]
        for dirpath, dirs, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for d in dirs:
                out[os.path.normpath(os.path.join(rel, d))] = None
            for f in files:
                out[os.path.normpath(os.path.join(rel, f))] = Path(dirpath, f).read_text()
        return out

    def rename(self, old: str, new: str) -> None:
        self._p("source", new).parent.mkdir(parents=True, exist_ok=True)
        os.rename(self._p("source", old), self._p("source", new))

    def delete(self, path: str) -> None:
        p = self._p("source", path)
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    def retype(self, path: str, child: str) -> None:
        self._p("source", path).unlink()
        self._p("source", path).mkdir()
        (self._p("source", path) / child).write_text("6")

    def identity(self, side: str, path: str) -> Any:
        return os.stat(self._p(side, path)).st_ino

    def write(self, path: str, token: str) -> None:
        p = self._p("source", path)
        st = p.stat()
        p.write_text(token)
        if st.st_size == len(token.encode()):  # the same size: the mtime must tell
            os.utime(p, ns=(st.st_atime_ns, max(st.st_mtime_ns + 1, p.stat().st_mtime_ns)))


class TestFsConformance(BackendConformance):
    @pytest.fixture
    def adapter(self, tmp_path: Path) -> FsAdapter:
        return FsAdapter(tmp_path)
