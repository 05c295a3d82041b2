"""The LDAP plugin against a real slapd on loopback: moves, renames, swaps, DN-valued
attributes, matching rules, LDIF round trips, errors through the real CLI."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap_fixtures import (
    DST_BASE,
    PASSWORD,
    SRC_ADMIN,
    SRC_BASE,
    Slapd,
    add_ldif,
    admin,
    entries,
    free_port,
    uuids,
)
from treeutil import hsync_bin

import hsync

ldap = pytest.importorskip("ldap")
pytest.importorskip("hsync_ldap", reason="the LDAP plugin is not installed (bash tests/run.sh)")
ldif = pytest.importorskip("ldif")

from hsync_ldap.backend import LdapBackend  # noqa: E402
from hsync_ldap.entries import Mapper  # noqa: E402
from hsync_ldap.schema import Schema  # noqa: E402

PEOPLE = f"""dn: ou=People,{SRC_BASE}
objectClass: organizationalUnit
ou: People

dn: cn=Alice Smith,ou=People,{SRC_BASE}
objectClass: inetOrgPerson
cn: Alice Smith
sn: Smith
mail: alice@example.com
telephoneNumber: +1 555 0100

dn: cn=Bob,ou=People,{SRC_BASE}
objectClass: inetOrgPerson
cn: Bob
sn: Builder
manager: cn=Alice Smith,ou=People,{SRC_BASE}
seeAlso: cn=Someone,dc=elsewhere

dn: ou=Groups,{SRC_BASE}
objectClass: organizationalUnit
ou: Groups

dn: cn=Staff,ou=Groups,{SRC_BASE}
objectClass: groupOfNames
cn: Staff
member: cn=Alice Smith,ou=People,{SRC_BASE}
member: CN=Bob,OU=People,{SRC_BASE.upper()}
owner: {SRC_BASE}

dn: cn=Unique,ou=Groups,{SRC_BASE}
objectClass: groupOfUniqueNames
cn: Unique
uniqueMember: cn=Bob,ou=People,{SRC_BASE}
"""


def sync(server: Slapd, **options: Any) -> hsync.Report:
    report = hsync.sync(server.endpoint(SRC_BASE), server.endpoint(DST_BASE), check=True,
                        **options)
    assert report.ok, report.problems
    return report


def same(server: Slapd) -> None:
    """The two suffixes hold the same entries and values (DNs inside rewritten)."""
    src = entries(server, SRC_BASE)
    dst = entries(server, DST_BASE)
    assert src.keys() == dst.keys()
    norm = Schema.builtin()
    for rel in src:
        a = {k: {norm.norm_value(k, v, None) for v in vs} for k, vs in src[rel].items()}
        b = {k: {norm.norm_value(k, v, None) for v in vs} for k, vs in dst[rel].items()}
        for k in a:
            if norm.is_dn(k):
                a[k] = {bytes(v).replace(b"dc=src,dc=test", b"dc=dst,dc=test") for v in a[k]}
                b[k] = {bytes(v) for v in b[k]}
        assert a == b, rel


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HSYNC_")}
    full.update(env)
    return subprocess.run([hsync_bin(), *args], capture_output=True, text=True, env=full,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


# -- moves ------------------------------------------------------------------------------------


def test_subtree_move_of_1000_entries_is_one_modrdn_and_keeps_entryuuids(
    ldap_env: Slapd,
) -> None:
    people = "".join(
        f"dn: uid=u{i},ou=Big,ou=Old,{SRC_BASE}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
        f"cn: User {i}\nsn: S{i}\n\n"
        for i in range(1000)
    )
    add_ldif(ldap_env, SRC_BASE,
             f"dn: ou=Old,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Old\n\n"
             f"dn: ou=New,{SRC_BASE}\nobjectClass: organizationalUnit\nou: New\n\n"
             f"dn: ou=Big,ou=Old,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Big\n\n"
             + people)
    assert sync(ldap_env).counts["create"] == 1003
    before = uuids(ldap_env, DST_BASE)
    conn = admin(ldap_env, SRC_BASE)
    conn.rename_s(f"ou=Big,ou=Old,{SRC_BASE}", "ou=Big", f"ou=New,{SRC_BASE}", 1)
    report = sync(ldap_env)
    assert report.counts == {"create": 0, "update": 0, "move": 1, "delete": 0}
    assert [op.op for op in report.plan] == ["move"]
    after = uuids(ldap_env, DST_BASE)
    for i in range(1000):
        assert after[f"uid=u{i},ou=big,ou=new"] == before[f"uid=u{i},ou=big,ou=old"]
    same(ldap_env)


def test_rdn_change_renames_with_deleteoldrdn(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    uid = uuids(ldap_env, DST_BASE)["cn=bob,ou=people"]
    admin(ldap_env, SRC_BASE).rename_s(f"cn=Bob,ou=People,{SRC_BASE}", "cn=Robert", None, 1)
    report = sync(ldap_env)
    assert report.counts["move"] == 1 and report.counts["create"] == 0
    dst = entries(ldap_env, DST_BASE)
    assert dst["cn=robert,ou=people"]["cn"] == {b"Robert"}
    assert uuids(ldap_env, DST_BASE)["cn=robert,ou=people"] == uid
    same(ldap_env)


def test_rdn_change_keeps_the_old_value_when_the_source_kept_it(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    admin(ldap_env, SRC_BASE).rename_s(f"cn=Bob,ou=People,{SRC_BASE}", "cn=Robert", None, 0)
    report = sync(ldap_env)
    # one modrdn with deleteoldrdn=0 (the payload keeps "Bob"): nothing left to modify
    assert report.counts == {"create": 0, "update": 0, "move": 1, "delete": 0}
    assert entries(ldap_env, DST_BASE)["cn=robert,ou=people"]["cn"] == {b"Bob", b"Robert"}
    same(ldap_env)


def test_swap_of_two_ous_moves_the_ous(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    before = uuids(ldap_env, DST_BASE)
    conn = admin(ldap_env, SRC_BASE)
    conn.rename_s(f"ou=People,{SRC_BASE}", "ou=Tmp", None, 1)
    conn.rename_s(f"ou=Groups,{SRC_BASE}", "ou=People", None, 1)
    conn.rename_s(f"ou=Tmp,{SRC_BASE}", "ou=Groups", None, 1)
    report = sync(ldap_env)
    # two modrdns (plus a temporary one); the ou values they changed leave the planned
    # updates nothing to modify (not counted)
    assert report.counts == {"create": 0, "update": 0, "move": 2, "delete": 0}
    assert sum(1 for op in report.plan if op.op == "move") == 3
    after = uuids(ldap_env, DST_BASE)
    assert after["cn=alice smith,ou=groups"] == before["cn=alice smith,ou=people"]
    assert after["cn=staff,ou=people"] == before["cn=staff,ou=groups"]
    same(ldap_env)


# -- payload -----------------------------------------------------------------------------------


def test_dn_valued_attributes_are_rewritten_to_the_destination_base(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    dst = entries(ldap_env, DST_BASE)
    staff = dst["cn=staff,ou=groups"]
    assert {v.lower() for v in staff["member"]} == {
        f"cn=alice smith,ou=people,{DST_BASE}".encode(), f"cn=bob,ou=people,{DST_BASE}".encode()}
    assert staff["owner"] == {DST_BASE.encode()}
    assert dst["cn=unique,ou=groups"]["uniquemember"] == {
        f"cn=Bob,ou=People,{DST_BASE}".encode()}
    bob = dst["cn=bob,ou=people"]
    assert bob["manager"] == {f"cn=Alice Smith,ou=People,{DST_BASE}".encode()}
    assert bob["seealso"] == {b"cn=Someone,dc=elsewhere"}  # outside the base: as it is
    same(ldap_env)


def test_values_compare_by_matching_rule(ldap_env: Slapd) -> None:
    """Spellings a directory calls equal (caseIgnore, telephoneNumber) plan nothing."""
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    admin(ldap_env, DST_BASE).modify_s(
        f"cn=Alice Smith,ou=People,{DST_BASE}",
        [(ldap.MOD_REPLACE, "mail", [b"ALICE@Example.COM"]),
         (ldap.MOD_REPLACE, "telephoneNumber", [b"+15550100"]),
         (ldap.MOD_REPLACE, "sn", [b"SMITH"])],
    )
    assert not hsync.diff(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE))
    admin(ldap_env, DST_BASE).modify_s(
        f"cn=Alice Smith,ou=People,{DST_BASE}", [(ldap.MOD_REPLACE, "sn", [b"Smyth"])])
    assert [op.op for op in hsync.diff(ldap_env.endpoint(SRC_BASE),
                                       ldap_env.endpoint(DST_BASE))] == ["update"]


def test_update_changes_only_what_differs(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    conn = admin(ldap_env, SRC_BASE)
    conn.modify_s(f"cn=Staff,ou=Groups,{SRC_BASE}",
                  [(ldap.MOD_DELETE, "member", [f"cn=Bob,ou=People,{SRC_BASE}".encode()]),
                   (ldap.MOD_ADD, "description", [b"the staff"])])
    report = sync(ldap_env)
    assert report.counts == {"create": 0, "update": 1, "move": 0, "delete": 0}
    same(ldap_env)


@settings(max_examples=400, deadline=None)
@given(
    value=st.text(st.sampled_from(list('aB #,+"\\<>;=\x00\u00e9x')), min_size=1, max_size=8),
    attr=st.sampled_from(["cn", "CN", "ou", "uid", "userid", "description", "telephoneNumber"]),
)
def test_the_rdn_written_is_the_entry_s_own_spelling_of_its_key(value: str, attr: str) -> None:
    """The RDN an add or a rename sends for a key component (the quick path for values
    with nothing to escape, the general one otherwise) names the same entry (it
    normalizes back to the key) and spells the value as the entry's attribute does."""
    m = Mapper(Schema.builtin(), "dc=x")
    key = m.schema.norm_rdn_parts([(attr, value, 1)])
    rdn = m.rdn_for(key, m.data_of({attr: [value.encode()]}))
    (parts,) = ldap.dn.str2dn(rdn)
    assert m.schema.norm_rdn_parts(parts) == key
    assert [(a, v) for a, v, _ in parts] == [(m.schema.spelling(m.schema.canonical(attr)), value)]


def test_minimal_modlist() -> None:
    """Table: current -> desired -> the modify sent."""
    m = Mapper(Schema.builtin(), "dc=x")

    def data(**kv: list[bytes]) -> Any:
        return m.data_of(kv)

    cases = [
        ("a value added to a multi-valued attribute",
         data(cn=[b"a"]), data(cn=[b"a", b"b"]), [(ldap.MOD_ADD, "cn", [b"b"])]),
        ("a value removed",
         data(cn=[b"a", b"b"]), data(cn=[b"a"]), [(ldap.MOD_DELETE, "cn", [b"b"])]),
        ("every value changes: replace",
         data(sn=[b"x"]), data(sn=[b"y"]), [(ldap.MOD_REPLACE, "sn", [b"y"])]),
        ("a new attribute", data(), data(sn=[b"y"]), [(ldap.MOD_ADD, "sn", [b"y"])]),
        ("an attribute gone", data(sn=[b"y"]), data(), [(ldap.MOD_DELETE, "sn", None)]),
        ("a spelling the matching rule calls equal: nothing",
         data(cn=[b"Alice"]), data(cn=[b"ALICE"]), []),
    ]
    for description, cur, want, expected in cases:
        assert m.modlist(cur, want) == expected, description


def test_operational_attributes_are_never_payload(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    try:
        snap = backend.scan()
    finally:
        backend.close()
    node = snap.nodes[("ou=people", "cn=alice smith")]
    names = {name for name, _ in node.data}
    assert names == {"objectclass", "cn", "sn", "mail", "telephonenumber"}
    assert node.identity and len(node.identity) == 36  # the entryUUID
    assert next(iter(snap.nodes)) == ()  # parents before children
    assert all(len(k) >= len(p) for p, k in zip(snap.nodes, list(snap.nodes)[1:], strict=False))


def test_partial_scan_and_stat(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    backend = LdapBackend(ldap_env.endpoint(SRC_BASE), role="source")
    try:
        sub = backend.scan(("ou=people",))
        assert set(sub.nodes) == {("ou=people",), ("ou=people", "cn=alice smith"),
                                  ("ou=people", "cn=bob")}
        assert not backend.scan(("ou=nobody",)).nodes
        assert backend.stat(("ou=people", "cn=bob")) == sub.nodes[("ou=people", "cn=bob")]
        assert backend.stat(("ou=nobody", "cn=bob")) is None
    finally:
        backend.close()


def test_exclude_attr_is_neither_copied_nor_deleted(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    sync(ldap_env)
    admin(ldap_env, SRC_BASE).modify_s(f"cn=Bob,ou=People,{SRC_BASE}",
                                       [(ldap.MOD_ADD, "description", [b"from the source"])])
    admin(ldap_env, DST_BASE).modify_s(f"cn=Alice Smith,ou=People,{DST_BASE}",
                                       [(ldap.MOD_ADD, "description", [b"kept here"])])
    r = run_cli("sync", "--exclude-attr", "description", ldap_env.endpoint(SRC_BASE),
                ldap_env.endpoint(DST_BASE), env=ldap_env.env())
    assert r.returncode == 0, r.stderr
    dst = entries(ldap_env, DST_BASE)
    assert "description" not in dst["cn=bob,ou=people"]
    assert dst["cn=alice smith,ou=people"]["description"] == {b"kept here"}


def test_special_characters_and_multi_valued_rdns(ldap_env: Slapd) -> None:
    add_ldif(ldap_env, SRC_BASE,
             f"dn: cn=a\\2Cb/c\\2B..,{SRC_BASE}\nobjectClass: device\ncn: a,b/c+..\n\n"
             f"dn: cn=x+serialNumber=7,{SRC_BASE}\nobjectClass: device\ncn: x\n"
             "serialNumber: 7\n")
    report = sync(ldap_env)
    assert report.counts["create"] == 2
    same(ldap_env)
    assert not hsync.diff(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE))


# -- LDIF --------------------------------------------------------------------------------------


def _records(path: Path) -> dict[str, dict[str, set[bytes]]]:
    with open(path, "rb") as f:
        parser = ldif.LDIFRecordList(f)
        parser.parse()
    return {dn.lower(): {k.lower(): set(v) for k, v in e.items()}
            for dn, e in parser.all_records}


def test_ldif_round_trip_is_exact(ldap_env: Slapd, tmp_path: Path) -> None:
    photo = bytes(range(256))
    text = (
        f"dn: {SRC_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: src\n"
        "o: src\n\n"
        f"dn: ou=Zoë,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Zoë\n"
        "description:: " + base64.b64encode(b" leading space").decode() + "\n"
        "description:: " + base64.b64encode("日本語 ünïcödé".encode()).decode() + "\n\n"
        f"dn: cn=Pic,ou=Zoë,{SRC_BASE}\nobjectClass: inetOrgPerson\ncn: Pic\nsn: P\n"
        "jpegPhoto:: " + base64.b64encode(photo).decode() + "\n"
        f"seeAlso: ou=Zoë,{SRC_BASE}\n"
    )
    original = tmp_path / "in.ldif"
    original.write_text(text, encoding="utf-8")
    report = hsync.sync(f"ldif:{original}", ldap_env.endpoint(DST_BASE), check=True)
    assert report.ok, report.problems
    assert entries(ldap_env, DST_BASE)["cn=pic,ou=zoë"]["jpegphoto"] == {photo}
    exported = tmp_path / "out.ldif"
    report = hsync.sync(ldap_env.endpoint(DST_BASE), f"ldif:{exported}?base={SRC_BASE}",
                        check=True)
    assert report.ok, report.problems
    assert oct(exported.stat().st_mode & 0o777) == "0o600"
    a, b = _records(original), _records(exported)
    assert a == b
    assert not hsync.diff(f"ldif:{original}", f"ldif:{exported}")
    assert not hsync.diff(f"ldif:{exported}", ldap_env.endpoint(DST_BASE))


def test_ldif_destination_follows_moves_and_deletes(ldap_env: Slapd, tmp_path: Path) -> None:
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    out = tmp_path / "backup.ldif"
    hsync.sync(ldap_env.endpoint(SRC_BASE), f"ldif:{out}", check=True)
    conn = admin(ldap_env, SRC_BASE)
    conn.rename_s(f"ou=People,{SRC_BASE}", "ou=Folk", None, 1)
    conn.delete_s(f"cn=Unique,ou=Groups,{SRC_BASE}")
    report = hsync.sync(ldap_env.endpoint(SRC_BASE), f"ldif:{out}", check=True)
    assert report.ok and report.counts["move"] == 1 and report.counts["delete"] == 1
    recs = _records(out)
    assert f"cn=bob,ou=folk,{SRC_BASE}" in recs and f"ou=people,{SRC_BASE}" not in recs
    assert recs[f"ou=folk,{SRC_BASE}"]["ou"] == {b"Folk"}
    assert not hsync.diff(ldap_env.endpoint(SRC_BASE), f"ldif:{out}")


# -- errors, through the real command line ------------------------------------------------------


def test_bad_credentials_exit_2_with_one_clear_line(ldap_env: Slapd, tmp_path: Path) -> None:
    env = {**ldap_env.env(), "HSYNC_SRC_BIND_PASSWORD": "wrong-password-xyz",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    r = run_cli("sync", ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE), env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert SRC_ADMIN in lines[0] and "Invalid credentials" in lines[0]
    assert "wrong-password-xyz" not in r.stderr + r.stdout


def test_unreachable_server_exit_2(tmp_path: Path) -> None:
    url = f"ldap://127.0.0.1:{free_port()}/{SRC_BASE}"
    r = run_cli("sync", url, str(tmp_path / "dst"), env={"XDG_STATE_HOME": str(tmp_path)})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the server" in lines[0], r.stderr
    assert url in lines[0]


def test_schema_violation_is_a_problem_and_the_rest_goes_on(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    source = tmp_path / "src.ldif"
    source.write_text(
        f"dn: {SRC_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: src\no: src\n\n"
        f"dn: cn=NoSurname,{SRC_BASE}\nobjectClass: inetOrgPerson\ncn: NoSurname\n\n"
        f"dn: cn=Fine,{SRC_BASE}\nobjectClass: inetOrgPerson\ncn: Fine\nsn: F\n"
    )
    state = tmp_path / "state"
    env = {**ldap_env.env(), "XDG_STATE_HOME": str(state)}
    r = run_cli("sync", f"ldif:{source}", ldap_env.endpoint(DST_BASE), env=env)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"cn=NoSurname,{DST_BASE}" in lines[0]
    assert "Object class violation" in lines[0] and "sn" in lines[0]
    assert "cn=fine" in entries(ldap_env, DST_BASE)
    # secrets stay out of the history and of what was printed
    for path in state.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes()
    assert PASSWORD not in r.stdout + r.stderr
    db = sqlite3.connect(next(state.rglob("history.sqlite")))
    assert db.execute("SELECT count(*) FROM nodes").fetchone()[0] == 2  # the root and Fine


def test_same_or_nested_endpoints_are_refused(ldap_env: Slapd) -> None:
    src = ldap_env.endpoint(SRC_BASE)
    r = run_cli("sync", src, ldap_env.endpoint(SRC_BASE.upper()), env=ldap_env.env())
    assert r.returncode == 2 and "same tree" in r.stderr
    r = run_cli("sync", src, ldap_env.endpoint(f"ou=inner,{SRC_BASE}"), env=ldap_env.env())
    assert r.returncode == 2 and "inside the source" in r.stderr


def test_diff_json_paths_are_dns_relative_to_the_base(ldap_env: Slapd) -> None:
    import json

    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    r = run_cli("diff", "--json", ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
                env=ldap_env.env())
    assert r.returncode == 1, r.stderr
    ops = json.loads(r.stdout)
    assert {"op": "create", "kind": "entry", "path": "cn=alice smith,ou=people"} in ops


def test_files_and_entries_are_not_synced_into_each_other(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    (tmp_path / "tree").mkdir()
    for a, b in ((ldap_env.endpoint(SRC_BASE), str(tmp_path / "copy")),
                 (str(tmp_path / "tree"), ldap_env.endpoint(DST_BASE))):
        r = run_cli("sync", a, b, env=ldap_env.env())
        assert r.returncode == 2, r.stderr
        assert "different kinds of trees" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "copy").exists()


def test_a_refused_entry_takes_its_subtree_with_it_in_one_problem_each(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    """An entry the destination refuses (an inetOrgPerson without sn): one clear
    problem for it, and the entries below it are not even sent. (A destination base
    that cannot be made is one error for the run: test_ldap_real_data.)"""
    source = tmp_path / "src.ldif"
    source.write_text(
        f"dn: {SRC_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: src\no: src\n\n"
        f"dn: cn=NoSurname,{SRC_BASE}\nobjectClass: inetOrgPerson\ncn: NoSurname\n\n"
        f"dn: cn=a,cn=NoSurname,{SRC_BASE}\nobjectClass: device\ncn: a\n\n"
        f"dn: cn=b,cn=a,cn=NoSurname,{SRC_BASE}\nobjectClass: device\ncn: b\n"
    )
    report = hsync.sync(f"ldif:{source}", ldap_env.endpoint(DST_BASE))
    assert report.exit_code == 3
    first, *rest = report.problems
    assert f"cn=NoSurname,{DST_BASE}" in first.message
    assert "Object class violation" in first.message
    assert len(rest) == 2 and all("was not created" in p.message for p in rest)


def test_an_entry_refused_in_the_middle_of_the_add_window_is_one_problem(
    ldap_env: Slapd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adds are pipelined (``WINDOW`` in flight on one connection): an entry the
    destination refuses while hundreds of its siblings are in flight is one problem
    naming it and the server's answer; its children, which come in a later batch of
    the streamed copy, are each reported (not sent, not lost); every other entry,
    before and after it in the window, is loaded."""
    from hsync_ldap.backend import WINDOW

    import hsync.apply
    from hsync.apply import Batching

    # batches of 2 windows: the refused entry in the first, its children in the second
    # (the streamed copy reads hsync.apply.STREAMED when it starts)
    monkeypatch.setattr(hsync.apply, "STREAMED",
                        Batching(max_ops=2 * WINDOW, min_ops=2 * WINDOW))
    before, after = WINDOW // 2, WINDOW * 2
    people = [f"dn: cn=p{i},ou=many,{SRC_BASE}\nobjectClass: inetOrgPerson\ncn: p{i}\n"
              f"sn: S{i}\n" for i in range(before + after)]
    # a group needs a member; members are excluded from the sync: the destination
    # refuses the group (objectClassViolation) and only it
    group = (f"dn: cn=team,ou=many,{SRC_BASE}\nobjectClass: groupOfNames\ncn: team\n"
             f"member: cn=p0,ou=many,{SRC_BASE}\n")
    kids = [f"dn: cn=k{i},cn=team,ou=many,{SRC_BASE}\nobjectClass: organizationalRole\n"
            f"cn: k{i}\n" for i in range(3)]
    add_ldif(ldap_env, SRC_BASE, "\n".join([
        f"dn: ou=many,{SRC_BASE}\nobjectClass: organizationalUnit\nou: many\n",
        *people[:before], group, *people[before:], *kids]))
    report = hsync.sync(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
                        exclude_attrs=["member"])
    assert report.exit_code == 3
    refused = [p for p in report.problems if p.key == ("ou=many", "cn=team")]
    assert len(refused) == 1 and "Object class violation" in refused[0].message
    assert f"cn=team,ou=many,{DST_BASE}" in refused[0].message
    kid_problems = sorted(p.key for p in report.problems if p.key != refused[0].key)
    assert kid_problems == [("ou=many", "cn=team", f"cn=k{i}") for i in range(3)]
    assert all("was not created" in p.message and "cn=team" in p.message
               for p in report.problems if p is not refused[0])
    loaded = entries(ldap_env, DST_BASE)
    assert {dn for dn in loaded if dn.startswith("cn=p")} == {
        f"cn=p{i},ou=many" for i in range(before + after)}
    assert not [dn for dn in loaded if "team" in dn]


def test_an_entry_replaced_after_the_scan_is_not_deleted(ldap_env: Slapd) -> None:
    """Before a destructive op the destination must still hold what the plan saw: an
    entry deleted and re-added under the same DN (a new entryUUID) is left alone."""
    add_ldif(ldap_env, DST_BASE, f"dn: ou=Old,{DST_BASE}\nobjectClass: organizationalUnit\n"
                                 "ou: Old\n")
    from hsync.compare import compare_trees
    from hsync.options import Options
    from hsync.session import PairSession

    with PairSession(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
                     Options(state="", allow_empty_source=True, delete=True)) as session:
        c = compare_trees(session)
        ops = [op for op in c.plan if op.key]  # (the base entry's "o" differs too)
        assert [(op.op, op.key) for op in ops] == [("delete", ("ou=old",))]
        conn = admin(ldap_env, DST_BASE)  # meanwhile another client replaces it
        conn.delete_s(f"ou=Old,{DST_BASE}")
        conn.add_s(f"ou=Old,{DST_BASE}", [("objectClass", [b"organizationalUnit"]),
                                          ("ou", [b"Old"]), ("description", [b"new"])])
        result = session.destination.backend.apply_batch(ops, session.source.backend, c.src)
    assert not result.done
    (problem,) = result.problems
    assert "Assertion Failed" in problem.message, problem.message
    assert "ou=old" in entries(ldap_env, DST_BASE)


def test_exclude_patterns_match_rdn_paths(ldap_env: Slapd) -> None:
    """--exclude takes gitignore patterns over the RDN path: an excluded subtree is
    neither copied nor deleted."""
    add_ldif(ldap_env, SRC_BASE, PEOPLE)
    add_ldif(ldap_env, DST_BASE, f"dn: ou=Local,{DST_BASE}\nobjectClass: organizationalUnit\n"
                                 "ou: Local\n")
    report = sync(ldap_env, exclude=["ou=groups", "ou=local"])
    assert report.counts["delete"] == 0
    dst = entries(ldap_env, DST_BASE)
    assert "ou=local" in dst and "cn=bob,ou=people" in dst
    assert not any(k.endswith("ou=groups") for k in dst)


def test_starttls_and_ldaps_verify_the_server_certificate(tmp_path: Path) -> None:
    """StartTLS (URL extension) and ldaps:// connect with the CA given; without it the
    certificate check refuses the server: a clear error, exit 2."""
    import shutil

    from ldap_fixtures import slapd_missing

    if slapd_missing() or not shutil.which("openssl"):
        pytest.skip(slapd_missing() or "openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    key.chmod(0o644)  # slapd runs as root here, but may drop to its own user
    server = Slapd(tmp_path / "slapd", tls=(cert, key))
    server.start()
    try:
        env = {**server.env(), "HSYNC_LDAP_TLS_REQCERT": "demand",
               "XDG_STATE_HOME": str(tmp_path / "state")}
        starttls = f"{server.url}/{SRC_BASE}????!StartTLS"
        assert server.ldaps_url is not None
        ldaps = f"{server.ldaps_url}/{SRC_BASE}"
        for src in (starttls, ldaps):
            r = run_cli("diff", src, server.endpoint(DST_BASE),
                        env={**env, "HSYNC_LDAP_CACERT": str(cert)})
            assert r.returncode in (0, 1), r.stderr  # connected, compared
            r = run_cli("diff", src, server.endpoint(DST_BASE), env=env)
            assert r.returncode == 2, r.stderr  # the certificate is not trusted
            assert len(r.stderr.splitlines()) == 1 and SRC_BASE in r.stderr
    finally:
        server.stop()


def test_ldif_orphans_are_skipped_with_a_warning_and_change_records_refused(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    src = tmp_path / "src.ldif"
    src.write_text(
        f"dn: {SRC_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: src\no: src\n\n"
        f"dn: cn=orphan,ou=Missing,{SRC_BASE}\nobjectClass: device\ncn: orphan\n\n"
        f"dn: cn=fine,{SRC_BASE}\nobjectClass: device\ncn: fine\n"
    )
    r = run_cli("sync", f"ldif:{src}", ldap_env.endpoint(DST_BASE),
                env={**ldap_env.env(), "XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr
    assert "ou=missing/cn=orphan" in r.stderr and "parent is not in the file" in r.stderr
    assert set(entries(ldap_env, DST_BASE)) == {"cn=fine"}
    src.write_text(f"dn: cn=x,{SRC_BASE}\nchangetype: add\nobjectClass: device\ncn: x\n")
    r = run_cli("sync", f"ldif:{src}", ldap_env.endpoint(DST_BASE), env=ldap_env.env())
    assert r.returncode == 2 and "change records" in r.stderr, r.stderr
