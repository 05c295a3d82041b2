"""The backend conformance suite on remote endpoints (``host:path`` through a real sshd
on 127.0.0.1): the destination remote (push) and the source remote (pull)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conformance import BackendConformance
from test_conformance_fs import FsAdapter


class RemoteAdapter(FsAdapter):
    def __init__(self, root: Path, far: str) -> None:
        super().__init__(root)
        self.far = far
        if far == "source":  # the suite looks at the source's features
            self.features = frozenset({"watchable", "digest_scanning", "bulk_hashing",
                                       "sorted_walk", "streaming", "prefetching", "linked",
                                       "windowed"})

    def url(self, side: str) -> str:
        path = super().url(side)
        return f"127.0.0.1:{path}" if side == self.far else path

    def absent_url(self) -> str:
        return f"127.0.0.1:{super().absent_url()}"


class TestPushConformance(BackendConformance):
    @pytest.fixture
    def adapter(self, tmp_path: Path, remote: Any) -> RemoteAdapter:
        return RemoteAdapter(tmp_path, "destination")


class TestPullConformance(BackendConformance):
    @pytest.fixture
    def adapter(self, tmp_path: Path, remote: Any) -> RemoteAdapter:
        return RemoteAdapter(tmp_path, "source")
