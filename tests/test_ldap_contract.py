"""The LDAP plugin on the backend contract (``hsync.backend``), through the backends
themselves against a real slapd on loopback: a scan stopped between pages, ops not run
when cancelled, problem kinds, each watch's own cookie, ``relation`` by URL, excluded
attributes given at open, and the base DN of a new LDIF file taken from the nodes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap_fixtures import DST_BASE, SRC_BASE, Slapd, add_ldif, admin, entries

from hsync.backend import Resume
from hsync.cancel import Cancel
from hsync.errors import Cancelled, UsageError
from hsync.model import CREATE, DELETE, ENTRY, UPDATE, Key, Op, Snapshot

ldap = pytest.importorskip("ldap")
pytest.importorskip("hsync_ldap", reason="the LDAP plugin is not installed (bash tests/run.sh)")

from hsync_ldap import connection  # noqa: E402
from hsync_ldap.backend import LdapBackend  # noqa: E402
from hsync_ldap.ldif_backend import LdifBackend  # noqa: E402
from hsync_ldap.watch import SyncreplWatch  # noqa: E402
from test_ldap_watch import RecordingSink  # noqa: E402


def people(base: str, n: int = 30) -> str:
    out = [f"dn: ou=People,{base}\nobjectClass: organizationalUnit\nou: People\n\n"]
    out += [f"dn: uid=u{i},ou=People,{base}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
            f"cn: User {i}\nsn: S{i}\nmail: u{i}@example.org\ntelephoneNumber: +1 555 {i}\n\n"
            for i in range(n)]
    return "".join(out)


def wait_for(pred: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pred()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("not within the time")


@pytest.fixture
def counted_pages(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Pages of 5 entries; counts the pages read and the searches closed early."""
    monkeypatch.setattr(connection, "PAGE_SIZE", 5)
    count = {"read": 0, "closed": 0}
    real = connection.pages

    def pages(*a: Any, **kw: Any) -> Iterator[Any]:
        search = real(*a, **kw)
        done = False
        try:
            for page in search:
                count["read"] += 1
                yield page
            done = True
        finally:
            if not done:
                count["closed"] += 1
            search.close()

    monkeypatch.setattr(connection, "pages", pages)
    return count


def test_a_cancelled_scan_stops_after_the_page_it_was_reading(
    ldap_env: Slapd, counted_pages: dict[str, int]
) -> None:
    add_ldif(ldap_env, SRC_BASE, people(SRC_BASE, 30))
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    try:
        assert len(backend.scan().nodes) == 32  # base, ou=People, 30 people
        every = counted_pages["read"]
        assert every >= 7
        counted_pages["read"] = 0
        with pytest.raises(Cancelled):
            backend.scan(cancel=Cancel.when(lambda: counted_pages["read"] >= 1))
        assert counted_pages["read"] == 1  # not one page more
        assert counted_pages["closed"] == 1  # the search was abandoned, not drained
        counted_pages["read"] = 0
        with pytest.raises(Cancelled):
            list(backend.stream(cancel=Cancel.when(lambda: counted_pages["read"] >= 2)))
        assert counted_pages["read"] == 2
        assert len(backend.scan().nodes) == 32  # the connection is still good
    finally:
        backend.close()


def test_ops_are_not_run_once_the_token_is_cancelled(ldap_env: Slapd, tmp_path: Path) -> None:
    add_ldif(ldap_env, SRC_BASE, people(SRC_BASE, 2))
    add_ldif(ldap_env, DST_BASE, people(DST_BASE, 2))
    src = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    dst = LdapBackend(ldap_env.endpoint(DST_BASE), role="destination")
    try:
        s, d = src.scan(), dst.scan()
        p, u0, u1 = ("ou=people",), ("ou=people", "uid=u0"), ("ou=people", "uid=u1")
        changed = admin(ldap_env, SRC_BASE)
        changed.modify_s(f"uid=u0,ou=People,{SRC_BASE}", [(ldap.MOD_REPLACE, "sn", [b"New"])])
        changed.unbind_s()
        s = src.scan()
        ops = [
            Op(op=UPDATE, kind=ENTRY, key=u0, node=s.nodes[u0], old=d.nodes[u0]),
            Op(op=DELETE, kind=ENTRY, key=u1, old=d.nodes[u1]),
            Op(op=CREATE, kind=ENTRY, key=(*p, "uid=u9"), node=s.nodes[u1]),
        ]
        before = entries(ldap_env, DST_BASE)
        cancel = Cancel()
        cancel.cancel()
        result = dst.apply_batch(ops, src, s, cancel=cancel)
        assert result.done == []
        assert [(x.key, x.op, x.kind) for x in result.problems] == [
            (op.key, op.op, "cancelled") for op in ops]
        assert all(x.message.endswith(": cancelled") for x in result.problems)
        assert entries(ldap_env, DST_BASE) == before  # nothing written

        # checked between ops: the first runs, the rest come back cancelled
        done: list[Op] = []
        result = dst.apply_batch(ops, src, s, cancel=Cancel.when(lambda: bool(done)),
                                 on_done=done.append)
        assert result.done == ops[:1] == done
        assert [(x.op, x.kind) for x in result.problems] == [
            ("delete", "cancelled"), ("create", "cancelled")]
        assert entries(ldap_env, DST_BASE)["uid=u0,ou=people"]["sn"] == {b"New"}
        assert "uid=u1,ou=people" in entries(ldap_env, DST_BASE)

        # an LDIF file is not even written
        out = tmp_path / "out.ldif"
        ldif = LdifBackend(f"ldif:{out}", role="destination")
        cancel = Cancel()
        cancel.cancel()
        creates = [Op(op=CREATE, kind=ENTRY, key=k, node=n) for k, n in s.nodes.items()]
        result = ldif.apply_batch(creates, src, s, cancel=cancel)
        assert not result.done and {x.kind for x in result.problems} == {"cancelled"}
        assert len(result.problems) == len(creates) and not out.exists()
    finally:
        src.close()
        dst.close()


def test_problems_carry_their_op_and_kind(ldap_env: Slapd) -> None:
    """An entry changed since the scan is "skip" (assertion failed, DN taken), a server
    gone is "retry", the rest "error"; each problem names its op."""
    add_ldif(ldap_env, SRC_BASE, people(SRC_BASE, 1))
    add_ldif(ldap_env, DST_BASE, people(DST_BASE, 1))
    src = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    dst = LdapBackend(ldap_env.endpoint(DST_BASE), role="destination")
    try:
        s, d = src.scan(), dst.scan()
        u0 = ("ou=people", "uid=u0")
        conn = admin(ldap_env, DST_BASE)  # another client replaces the entry
        conn.delete_s(f"uid=u0,ou=People,{DST_BASE}")
        conn.add_s(f"uid=u0,ou=People,{DST_BASE}", [
            ("objectClass", [b"inetOrgPerson"]), ("uid", [b"u0"]), ("cn", [b"x"]),
            ("sn", [b"x"])])
        conn.unbind_s()
        ops = [
            Op(op=DELETE, kind=ENTRY, key=u0, old=d.nodes[u0]),
            Op(op=CREATE, kind=ENTRY, key=u0, node=s.nodes[u0]),
            Op(op=CREATE, kind=ENTRY, key=("ou=nowhere", "uid=u0"), node=s.nodes[u0]),
        ]
        result = dst.apply_batch(ops, src, s)
        assert [(x.key, x.op, x.kind) for x in result.problems] == [
            (u0, "delete", "skip"), (u0, "create", "skip"),
            (("ou=nowhere", "uid=u0"), "create", "error")]
        ldap_env.stop()
        result = dst.apply_batch(ops[:1], src, s)
        assert [(x.op, x.kind) for x in result.problems] == [("delete", "retry")]
    finally:
        src.close()
        dst.close()


def test_each_watch_keeps_its_own_cookie(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, people(SRC_BASE, 3))
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    conn = admin(ldap_env, SRC_BASE)
    try:
        assert not hasattr(backend, "cookie")
        first = RecordingSink()
        with backend.watch(first) as w1:
            assert isinstance(w1, SyncreplWatch) and w1.alive and not w1.resumed
            start = wait_for(w1.checkpoint)
            conn.modify_s(f"uid=u0,ou=People,{SRC_BASE}", [(ldap.MOD_REPLACE, "sn", [b"A"])])
            c1 = wait_for(lambda: (w1.checkpoint() or start) != start and w1.checkpoint())
        assert not w1.alive
        assert not hasattr(backend, "cookie")
        ids = [(n.identity, k) for k, n in backend.scan().nodes.items()]
        second = RecordingSink()
        with backend.watch(second) as w2:
            wait_for(w2.checkpoint)
            conn.modify_s(f"uid=u1,ou=People,{SRC_BASE}", [(ldap.MOD_REPLACE, "sn", [b"B"])])
            wait_for(lambda: ("dirty", ("ou=people", "uid=u1"), False) in second.calls)
            c2 = wait_for(lambda: w2.checkpoint() != c1 and w2.checkpoint())
            assert w1.checkpoint() == c1  # the first watch's cookie did not move
        assert w2.checkpoint() == c2 and c1 != c2
        # a watch resumed from the first cookie reports what changed since
        third = RecordingSink()
        with backend.watch_from(third, Resume(c1, lambda: ids)) as w3:
            assert w3.resumed
            wait_for(lambda: ("dirty", ("ou=people", "uid=u1"), False) in third.calls)
            assert ("dirty", ("ou=people", "uid=u0"), False) not in third.calls
    finally:
        conn.unbind_s()
        backend.close()


def test_relation_by_url(ldap_env: Slapd, tmp_path: Path) -> None:
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    port = ldap_env.port
    try:
        assert backend.canonical_url() == f"ldap://127.0.0.1:{port}/dc=src,dc=test"
        cases = [
            ("the same URL", ldap_env.endpoint(SRC_BASE), "same"),
            ("spelled otherwise", f"LDAP://127.0.0.1:{port}/DC=Src, DC=TEST", "same"),
            ("its canonical URL", backend.canonical_url(), "same"),
            ("a subtree of it", f"ldap://127.0.0.1:{port}/ou=x,{SRC_BASE}", "inside"),
            ("deeper, spelled otherwise", f"ldap://127.0.0.1:{port}/CN=y,OU=x,DC=src,DC=test",
             "inside"),
            ("a base above it", f"ldap://127.0.0.1:{port}/dc=test", "contains"),
            ("a sibling base", ldap_env.endpoint(DST_BASE), None),
            ("a base that only ends alike", f"ldap://127.0.0.1:{port}/dc=xsrc,dc=test", None),
            ("another port", f"ldap://127.0.0.1:{port + 1}/{SRC_BASE}", None),
            ("the default port", f"ldap://127.0.0.1/{SRC_BASE}", None),
            ("an LDIF file", f"ldif:{tmp_path}/x.ldif", None),
            ("a path", str(tmp_path), None),
            ("not a URL it can read", "ldap:///", None),
        ]
        for description, url, expected in cases:
            assert backend.relation(url) == expected, description
    finally:
        backend.close()
    default = "ldap://127.0.0.1:389/dc=src,dc=test"
    ldif = tmp_path / "tree.ldif"
    ldif.write_text(f"dn: {SRC_BASE}\nobjectClass: dcObject\nobjectClass: organization\n"
                    "dc: src\no: src\n")
    (tmp_path / "link.ldif").symlink_to(ldif)
    b = LdifBackend(f"ldif:{ldif}")
    assert b.canonical_url() == f"ldif:{os.path.realpath(ldif)}"
    cases = [
        ("the same file", f"ldif:{ldif}", "same"),
        ("with a base", f"ldif://{ldif}?base={SRC_BASE}", "same"),
        ("through a symlink", f"ldif:{tmp_path}/link.ldif", "same"),
        ("another file", f"ldif:{tmp_path}/other.ldif", None),
        ("a directory server", default, None),
    ]
    for description, url, expected in cases:
        assert b.relation(url) == expected, description


def test_excluded_attributes_are_given_at_open(ldap_env: Slapd, tmp_path: Path) -> None:
    add_ldif(ldap_env, SRC_BASE, people(SRC_BASE, 1))
    key = ("ou=people", "uid=u0")
    url = ldap_env.endpoint(SRC_BASE)
    assert not hasattr(LdapBackend, "exclude_attributes")
    assert not hasattr(LdifBackend, "exclude_attributes")
    full = LdapBackend(url, role="source")
    less = LdapBackend(url, role="source", exclude_attrs=("telephoneNumber", "MAIL"))
    try:
        names = {n for n, _ in full.scan().nodes[key].data}
        assert {"mail", "telephonenumber"} <= names
        assert {n for n, _ in less.scan().nodes[key].data} == names - {"mail", "telephonenumber"}
        assert {n for n, _ in less.stat(key).data} == names - {"mail", "telephonenumber"}
        out = tmp_path / "people.ldif"
        snap = full.scan()
        LdifBackend(f"ldif:{out}", role="destination").apply_batch(
            [Op(op=CREATE, kind=ENTRY, key=k, node=n) for k, n in snap.nodes.items()],
            full, snap)
    finally:
        full.close()
        less.close()
    ldif = LdifBackend(f"ldif:{out}", exclude_attrs=("mail",))
    assert {n for n, _ in ldif.scan().nodes[key].data} == names - {"mail"}


def test_a_new_ldif_file_takes_the_base_the_source_root_names(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    """The base DN comes from the source's root node, not from the source object (which
    may be a proxy of a far endpoint): DN values inside the base are written under it."""
    add_ldif(ldap_env, SRC_BASE, people(SRC_BASE, 2) + (
        f"dn: cn=team,ou=People,{SRC_BASE}\nobjectClass: groupOfNames\ncn: team\n"
        f"member: uid=u0,ou=People,{SRC_BASE}\nmember: cn=outside,dc=elsewhere\n"))
    src = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    try:
        snap = src.scan()
        root = src.stat(())
    finally:
        src.close()

    class Proxy:  # what a remote endpoint's content source is: a URL and read()
        url = "remote:src"

        def read(self, key: Key) -> Any:
            raise OSError("no content")

    out = tmp_path / "new.ldif"
    ldif = LdifBackend(f"ldif:{out}", role="destination")
    ops = [Op(op=CREATE, kind=ENTRY, key=k, node=n) for k, n in snap.nodes.items()]
    result = ldif.apply_batch(ops, Proxy(), snap)
    assert not result.problems and len(result.done) == len(ops)
    text = out.read_text()
    assert f"dn: {SRC_BASE}\n" in text
    assert f"member: uid=u0,ou=People,{SRC_BASE}" in text
    assert "member: cn=outside,dc=elsewhere" in text
    back = LdifBackend(f"ldif:{out}").scan()
    assert dict(back.nodes) == dict(snap.nodes)
    # the root alone names it too (a stream starts from ``stat(())``), and the base is
    # not payload: roots of two bases with the same attributes compare equal
    assert root is not None and root == snap.nodes[()]
    other = tmp_path / "other.ldif"
    result = LdifBackend(f"ldif:{other}", role="destination").apply_batch(
        [Op(op=CREATE, kind=ENTRY, key=(), node=root)], Proxy(), Snapshot())
    assert not result.problems and other.read_text().startswith(f"dn: {SRC_BASE}\n")


def test_an_ldif_endpoint_takes_no_credentials(tmp_path: Path) -> None:
    from hsync.backend import Credentials

    with pytest.raises(UsageError, match="takes no credentials"):
        LdifBackend(f"ldif:{tmp_path}/x.ldif", credentials=Credentials("cn=x", "pw"))
