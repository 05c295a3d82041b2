from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap_fixtures import ldap_env, slapd, slapd_server, tls_slapd  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own history location; nothing leaks into ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    os.environ.pop("HSYNC_BIND_PASSWORD", None)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private sshd on 127.0.0.1 (``tests/sshd.py``), for one test module (stopped
    after it: other modules check that the test process has no child left)."""
    from sshd import Sshd, available

    why = available()
    if why is not None:
        pytest.skip(why)
    server = Sshd(str(tmp_path_factory.mktemp("sshd")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def remote(sshd: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The sshd, with its client command as the default ``-e`` (``HSYNC_RSH``)."""
    monkeypatch.setenv("HSYNC_RSH", sshd.rsh)
    return sshd
