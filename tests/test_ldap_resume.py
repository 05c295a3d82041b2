"""A restarted ``hsync watch`` of a directory resumes from the syncrepl cookie kept in the
history: it asks the server for what changed while it was down instead of reading the
whole source, and it falls back to the full comparison when the server cannot answer
from that cookie. The token never runs ahead of what the history is synced up to."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap_fixtures import (
    DST_BASE,
    SRC_BASE,
    Slapd,
    add_ldif,
    admin,
    entries,
    slapd_missing,
    uuids,
)

import hsync
from hsync.live import PairWatch, RoundResult, WatchOptions
from hsync.options import Options

pytest.importorskip("ldap")
pytest.importorskip("hsync_ldap", reason="the LDAP plugin is not installed (bash tests/run.sh)")

from hsync_ldap import connection
from hsync_ldap.watch import SyncreplWatch

WATCH_THREAD = "test-pairwatch"
BIG = 300


def tree() -> str:
    out = [f"dn: ou={ou},{SRC_BASE}\nobjectClass: organizationalUnit\nou: {ou}\n\n"
           for ou in ("Staff", "Old", "Big")]
    out += [f"dn: uid=u{i},ou=Staff,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
            f"cn: User {i}\nsn: S{i}\n\n" for i in range(30)]
    out += [f"dn: uid=b{i},ou=Big,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: b{i}\n"
            f"cn: Big {i}\nsn: B{i}\n\n" for i in range(BIG)]
    return "".join(out)


class Reads:
    """Entries the watch read from the source: returned by its searches below the source
    base, and named by its syncrepl refresh (a full refresh names every entry)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        pages = connection.pages
        read_entry = connection.read_entry
        entry = SyncreplWatch.entry

        def source(dn: str) -> bool:
            return (threading.current_thread().name == WATCH_THREAD
                    and dn.lower().endswith(SRC_BASE))

        def counted_pages(conn: Any, dn: str, **kw: Any) -> Iterator[list[Any]]:
            for page in pages(conn, dn, **kw):
                if source(dn):
                    self.n += len(page)
                yield page

        def counted_read(conn: Any, dn: str, *a: Any, **kw: Any) -> Any:
            found = read_entry(conn, dn, *a, **kw)
            if found is not None and source(dn):
                self.n += 1
            return found

        def counted_entry(watch: SyncreplWatch, dn: str, uuid: str) -> None:
            self.n += 1
            entry(watch, dn, uuid)

        monkeypatch.setattr(connection, "pages", counted_pages)
        monkeypatch.setattr(connection, "read_entry", counted_read)
        monkeypatch.setattr(SyncreplWatch, "entry", counted_entry)

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def converged(src: tuple[Slapd, str], dst: tuple[Slapd, str]) -> Callable[[], bool]:
    """True when the destination holds the source's entries (raw reads, not hsync's)."""
    return lambda: entries(*src) == entries(*dst)


def run_watch(
    source: str, destination: str, state: Path, until: Callable[[], bool],
    rounds: list[RoundResult], timeout: float = 30,
) -> PairWatch:
    """Run a PairWatch (what ``hsync watch`` runs) until ``until()``, then stop it."""
    pw = PairWatch(source, destination, Options(state=str(state), check=True),
                   WatchOptions(debounce=0.05), on_round=rounds.append)
    before = _token_now(state)
    t = threading.Thread(target=pw.run, name=WATCH_THREAD)
    t.start()
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the watch did not get there in time"
            assert t.is_alive(), "the watch stopped"
            time.sleep(0.05)
        # the round that got there stores its token after it recorded the history: wait
        # for a new token (a bounded wait: a run that changes nothing stores none)
        settle = time.monotonic() + 5
        while _token_now(state) == before and time.monotonic() < settle:
            time.sleep(0.05)
        time.sleep(0.1)
    finally:
        pw.stop()
        t.join(15)
    assert not t.is_alive()
    return pw


def _token_now(state: Path) -> bytes | None:
    """The stored token, or None while there is no history file or table yet."""
    if not state.exists():
        return None
    try:
        return token(state)
    except sqlite3.OperationalError:
        return None


def token(state: Path) -> bytes | None:
    db = sqlite3.connect(state)
    try:
        row = db.execute("SELECT token FROM resume").fetchone()
    finally:
        db.close()
    return None if row is None else bytes(row[0])


def set_token(state: Path, value: bytes) -> None:
    db = sqlite3.connect(state)
    with db:
        assert db.execute("UPDATE resume SET token=?", (value,)).rowcount == 1
    db.close()


def left(source: str, destination: str) -> list[dict[str, str]]:
    return hsync.diff(source, destination, state="").to_json()


def changes_while_down(server: Slapd) -> None:
    """Adds, a modify, a subtree move, an RDN change and deletes, by another client."""
    conn = admin(server, SRC_BASE)
    conn.add_s(f"ou=New,{SRC_BASE}", [("objectClass", [b"organizationalUnit"]),
                                      ("ou", [b"New"])])
    conn.add_s(f"uid=n1,ou=New,{SRC_BASE}", [
        ("objectClass", [b"inetOrgPerson"]), ("uid", [b"n1"]), ("cn", [b"N"]), ("sn", [b"N"])])
    conn.modify_s(f"uid=b7,ou=Big,{SRC_BASE}", [(2, "sn", [b"Changed"])])
    conn.rename_s(f"ou=Staff,{SRC_BASE}", "ou=Staff", f"ou=Old,{SRC_BASE}", 1)
    conn.rename_s(f"uid=b8,ou=Big,{SRC_BASE}", "uid=b8renamed", None, 1)
    conn.delete_s(f"uid=b9,ou=Big,{SRC_BASE}")
    conn.delete_s(f"uid=u3,ou=Staff,ou=Old,{SRC_BASE}")
    conn.unbind_s()


@pytest.fixture
def pair(ldap_env: Slapd, tmp_path: Path) -> Iterator[tuple[Slapd, str, str, Path]]:
    add_ldif(ldap_env, SRC_BASE, tree())
    yield (ldap_env, ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
           tmp_path / "h.sqlite")


def test_a_restart_resumes_from_the_cookie_without_reading_the_source(
    pair: tuple[Slapd, str, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, src, dst, state = pair
    reads = Reads(monkeypatch)
    same = converged((server, SRC_BASE), (server, DST_BASE))
    rounds: list[RoundResult] = []
    run_watch(src, dst, state, same, rounds)
    first_reads = reads.take()
    assert first_reads >= BIG + 33  # the first run reads everything (a full comparison)
    assert token(state) is not None
    before = uuids(server, DST_BASE)

    changes_while_down(server)
    rounds = []
    pw = run_watch(src, dst, state, same, rounds)
    restart_reads = reads.take()

    assert left(src, dst) == []
    # no full comparison and no quick pass: only what changed was read
    assert (pw.status.full_comparisons, pw.status.quick_passes) == (0, 0)
    assert rounds and not any(r.full for r in rounds)
    assert restart_reads < (BIG + 33) // 4, (restart_reads, first_reads)
    # the subtree move is one modrdn; the destination kept its entries' entryUUIDs
    done = [op for r in rounds for op in r.done]
    moves = [op for op in done if op.op == "move"]
    assert ("ou=staff",) in {op.key for op in moves}
    assert not [op for op in done if op.op == "create" and op.key[:2] == ("ou=old", "ou=staff")]
    after = uuids(server, DST_BASE)
    moved = [k for k in before if k.endswith(",ou=staff") and k != "uid=u3,ou=staff"]
    assert moved and all(after[k + ",ou=old"] == before[k] for k in moved)
    # the RDN change is a move too, not a delete and a create
    assert after["uid=b8renamed,ou=big"] == before["uid=b8,ou=big"]
    assert pw.status.counts["delete"] == 2


@pytest.mark.parametrize("tamper", [
    # older than the server's session log: it answers with a present phase
    b"rid=000,csn=20000101000000.000000Z#000000#000#000000",
    # ahead of the server ("consumer state is newer than provider"): refused
    b"rid=000,csn=29990101000000.000000Z#000000#000#000000",
    # not a cookie at all: not used
    b"garbage",
], ids=["older-than-the-log", "ahead-of-the-server", "garbage"])
def test_a_cookie_the_server_cannot_resume_from_falls_back_to_a_full_comparison(
    pair: tuple[Slapd, str, str, Path], tamper: bytes
) -> None:
    server, src, dst, state = pair
    same = converged((server, SRC_BASE), (server, DST_BASE))
    run_watch(src, dst, state, same, [])
    set_token(state, tamper)
    changes_while_down(server)
    rounds: list[RoundResult] = []
    pw = run_watch(src, dst, state, same, rounds)
    assert left(src, dst) == []
    # the fallback: the start-up's pass over the whole source (against the history)
    assert (pw.status.full_comparisons, pw.status.quick_passes) == (0, 1)
    assert pw.status.counts["delete"] == 2  # what was deleted; no mass delete
    assert pw.status.counts["create"] == 2
    assert token(state) not in (None, tamper)  # a fresh token after the full round


def test_a_source_database_recreated_under_the_same_url_is_not_resumed(
    pair: tuple[Slapd, str, str, Path]
) -> None:
    """slapd restarted with a fresh source database (the same entries loaded again, new
    entryUUIDs): the stored token is not trusted (the source root is not the one the
    history describes); the full comparison deletes nothing that is still there."""
    import shutil
    import subprocess

    from ldap_fixtures import SLAPADD

    server, src, dst, state = pair
    same = converged((server, SRC_BASE), (server, DST_BASE))
    run_watch(src, dst, state, same, [])
    old = token(state)
    server.stop()
    shutil.rmtree(server.root / "db0")
    (server.root / "db0").mkdir()
    subprocess.run([SLAPADD, "-q", "-f", str(server.conf), "-b", SRC_BASE, "-l",
                    str(server.root / "base-src.ldif")], check=True, capture_output=True)
    server.start()
    add_ldif(server, SRC_BASE, tree())
    conn = admin(server, SRC_BASE)
    conn.delete_s(f"uid=b1,ou=Big,{SRC_BASE}")
    conn.unbind_s()
    rounds: list[RoundResult] = []
    pw = run_watch(src, dst, state, same, rounds)
    assert left(src, dst) == []
    assert (pw.status.full_comparisons, pw.status.quick_passes) == (0, 1)
    assert pw.status.counts["delete"] == 1
    assert token(state) not in (None, old)


def test_a_failed_round_does_not_advance_the_token(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The destination's schema lacks posixGroup (nis): the add of one fails with a
    schema violation while the rest of the round goes through. The token stays where it
    was; once the schema is fixed, a restarted watch resumes from it and creates the
    entry (had the token advanced past the add, nothing would ever report it again)."""
    if slapd_missing():
        pytest.skip(slapd_missing() or "")
    src_server = Slapd(tmp_path / "src", bases=(SRC_BASE,))
    dst_server = Slapd(tmp_path / "dst", bases=(DST_BASE,))
    conf = dst_server.conf.read_text()
    nis = "include /etc/ldap/schema/nis.schema\n"
    dst_server.conf.write_text(conf.replace(nis, ""))
    for k, v in src_server.env().items():
        monkeypatch.setenv(k, v)
    src_server.start()
    dst_server.start()
    try:
        src, dst = src_server.endpoint(SRC_BASE), dst_server.endpoint(DST_BASE)
        state = tmp_path / "h.sqlite"
        add_ldif(src_server, SRC_BASE, tree())
        same = converged((src_server, SRC_BASE), (dst_server, DST_BASE))
        run_watch(src, dst, state, same, [])
        synced_to = token(state)
        assert synced_to is not None

        conn = admin(src_server, SRC_BASE)
        conn.add_s(f"cn=admins,ou=Old,{SRC_BASE}", [
            ("objectClass", [b"posixGroup"]), ("cn", [b"admins"]), ("gidNumber", [b"42"])])
        conn.modify_s(f"uid=b1,ou=Big,{SRC_BASE}", [(2, "sn", [b"Fine"])])
        conn.unbind_s()
        rounds: list[RoundResult] = []

        def failed_and_rest_done() -> bool:
            got = entries(dst_server, DST_BASE).get("uid=b1,ou=big", {})
            return any(r.problems for r in rounds) and got.get("sn") == {b"Fine"}

        pw = run_watch(src, dst, state, failed_and_rest_done, rounds)
        assert (pw.status.full_comparisons, pw.status.quick_passes) == (0, 0)
        assert any("cn=admins" in p.message for r in rounds for p in r.problems)
        assert token(state) == synced_to  # not advanced past the failed add

        dst_server.stop()
        dst_server.conf.write_text(conf)  # the schema is fixed
        dst_server.start()
        rounds = []
        pw = run_watch(src, dst, state, same, rounds)
        # resumed from the token ...
        assert (pw.status.full_comparisons, pw.status.quick_passes) == (0, 0)
        assert "cn=admins,ou=old" in entries(dst_server, DST_BASE)  # ... and retried
        assert token(state) not in (None, synced_to)
    finally:
        src_server.stop()
        dst_server.stop()
