"""The LDAP backend's ``watch(sink)``: syncrepl events from a real slapd reach a recording
sink (a real object that collects calls); a killed and restarted slapd is reconnected."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from ldap_fixtures import SRC_BASE, Slapd, add_ldif, admin

from hsync.model import Key

pytest.importorskip("ldap")
pytest.importorskip("hsync_ldap", reason="the LDAP plugin is not installed (bash tests/run.sh)")

from hsync_ldap.backend import LdapBackend


class RecordingSink:
    """Collects what a watcher reports (the sink protocol of hsync.backend)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def dirty(self, key: Key, *, deep: bool = True) -> None:
        with self.lock:
            self.calls.append(("dirty", key, deep))

    def lost(self, reason: str) -> None:
        with self.lock:
            self.calls.append(("lost", reason))

    def moved(self, old: Key, new: Key, *, directory: bool = True) -> None:
        with self.lock:
            self.calls.append(("moved", old, new))

    def unwatched(self, key: Key, reason: str) -> None:
        with self.lock:
            self.calls.append(("unwatched", key, reason))

    def wait(self, pred: Callable[[list[tuple[Any, ...]]], bool], timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self.calls):
                    return True
            time.sleep(0.02)
        return False

    def take(self) -> list[tuple[Any, ...]]:
        with self.lock:
            out, self.calls = self.calls, []
        return out


TREE = f"""dn: ou=A,{SRC_BASE}
objectClass: organizationalUnit
ou: A

dn: ou=Deep,ou=A,{SRC_BASE}
objectClass: organizationalUnit
ou: Deep

dn: cn=x,ou=Deep,ou=A,{SRC_BASE}
objectClass: device
cn: x

dn: ou=B,{SRC_BASE}
objectClass: organizationalUnit
ou: B
"""


def _has(call: tuple[Any, ...]) -> Callable[[list[tuple[Any, ...]]], bool]:
    return lambda calls: call in calls


def test_changes_reach_the_sink_with_old_and_new_keys(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, TREE)
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    sink = RecordingSink()
    before = set(threading.enumerate())
    try:
        with backend.watch(sink):
            assert sink.take() == []  # the refresh phase is not reported
            conn = admin(ldap_env, SRC_BASE)  # another client of the directory
            conn.modify_s(f"cn=x,ou=Deep,ou=A,{SRC_BASE}",
                          [(0, "description", [b"changed"])])
            assert sink.wait(_has(("dirty", ("ou=a", "ou=deep", "cn=x"), False)))
            sink.take()
            # a subtree move is one event; the watcher knows where the children went
            conn.rename_s(f"ou=Deep,ou=A,{SRC_BASE}", "ou=Moved", f"ou=B,{SRC_BASE}", 1)
            assert sink.wait(_has(("dirty", ("ou=b", "ou=moved"), True)))
            assert ("dirty", ("ou=a", "ou=deep"), True) in sink.take()
            # a delete carries only the uuid: the map resolves it to the moved key
            conn.delete_s(f"cn=x,ou=Moved,ou=B,{SRC_BASE}")
            assert sink.wait(_has(("dirty", ("ou=b", "ou=moved", "cn=x"), True)))
            sink.take()
            add_ldif(ldap_env, SRC_BASE,
                     f"dn: ou=New,{SRC_BASE}\nobjectClass: organizationalUnit\nou: New\n")
            assert sink.wait(_has(("dirty", ("ou=new",), True)))
            conn.unbind_s()
    finally:
        backend.close()
    assert set(threading.enumerate()) <= before  # the watcher's thread is joined


def test_a_killed_server_is_reconnected_and_reported_lost(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, TREE)
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    sink = RecordingSink()
    try:
        with backend.watch(sink):
            ldap_env.stop(signal.SIGKILL)
            time.sleep(0.3)
            ldap_env.start()
            assert sink.wait(lambda calls: any(c[0] == "lost" for c in calls), timeout=20)
            sink.take()
            # and it keeps watching on the new connection
            add_ldif(ldap_env, SRC_BASE,
                     f"dn: ou=After,{SRC_BASE}\nobjectClass: organizationalUnit\nou: After\n")
            assert sink.wait(_has(("dirty", ("ou=after",), True)))
    finally:
        backend.close()


def test_watch_on_a_server_gone_at_start_is_a_clear_error(ldap_env: Slapd) -> None:
    from hsync.errors import BackendError

    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    ldap_env.stop()
    try:
        with pytest.raises(BackendError, match="cannot watch"), backend.watch(RecordingSink()):
            pass
    finally:
        backend.close()


def test_without_syncprov_the_watcher_polls(tmp_path: Any, monkeypatch: Any) -> None:
    from ldap_fixtures import slapd_missing

    if slapd_missing():
        pytest.skip(slapd_missing() or "")
    server = Slapd(tmp_path / "noprov", syncprov=False)
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    server.start()
    try:
        add_ldif(server, SRC_BASE, TREE)
        backend = LdapBackend(server.endpoint(SRC_BASE), role="source")
        sink = RecordingSink()
        try:
            watch = backend.watch(sink)
            watch.poll_interval = 0.2  # type: ignore[attr-defined]
            with watch:
                assert watch.polling  # type: ignore[attr-defined]
                conn = admin(server, SRC_BASE)
                conn.modify_s(f"ou=B,{SRC_BASE}", [(0, "description", [b"x"])])
                assert sink.wait(_has(("dirty", ("ou=b",), False)))
                conn.rename_s(f"ou=Deep,ou=A,{SRC_BASE}", "ou=Moved", f"ou=B,{SRC_BASE}", 1)
                assert sink.wait(_has(("dirty", ("ou=b", "ou=moved"), True)))
                assert ("dirty", ("ou=a", "ou=deep"), True) in sink.take()
                conn.delete_s(f"cn=x,ou=Moved,ou=B,{SRC_BASE}")
                assert sink.wait(_has(("dirty", ("ou=b", "ou=moved", "cn=x"), True)))
                conn.unbind_s()
        finally:
            backend.close()
    finally:
        server.stop()
