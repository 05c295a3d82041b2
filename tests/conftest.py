from __future__ import annotations

import os
from pathlib import Path

import pytest
from ldap_fixtures import ldap_env, slapd, slapd_server, tls_slapd  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own history location; nothing leaks into ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    os.environ.pop("HSYNC_BIND_PASSWORD", None)
