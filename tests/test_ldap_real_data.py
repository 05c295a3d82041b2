"""The LDAP plugin on what administrators' real data brings (issue 13): re-keyed
entries, schemas beyond the built-in one, referral objects, swapped RDNs, destination
bases that cannot be made, LDIF records outside their base, operational attributes set
on purpose. Each against the real slapd the suite starts, each named after its bug."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
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
from treeutil import hsync_bin

import hsync

ldap = pytest.importorskip("ldap")
pytest.importorskip("hsync_ldap", reason="the LDAP plugin is not installed (bash tests/run.sh)")
ldif = pytest.importorskip("ldif")


@pytest.fixture
def rich(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Slapd]:
    """A slapd with more than the built-in schema, as production directories have:
    misc.schema (mailLocalAddress), duaconf.schema (defaultSearchBase, DN-valued), the
    ppolicy overlay's attribute types (pwdAttribute, pwdPolicySubentry); its admin
    credentials in the environment."""
    why = slapd_missing()
    if why is not None:
        pytest.skip(why)
    server = Slapd(tmp_path / "slapd", schemas=("misc", "duaconf"), modules=("ppolicy",))
    server.start()
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    try:
        yield server
    finally:
        server.stop()


def read_all(server: Slapd, base: str, attrs: list[str]) -> dict[str, dict[str, set[bytes]]]:
    """Like ``entries``, with ManageDsaIT (a referral object is read as an entry) and
    the attributes asked for by name (operational ones are not in ``*``)."""
    from ldap.controls.simple import ManageDSAITControl

    conn = ldap.initialize(server.url, bytes_mode=False)
    found = conn.search_ext_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["*", *attrs],
                              serverctrls=[ManageDSAITControl()])
    conn.unbind_s()
    out = {}
    for dn, a in found:
        rel = dn[: -len(base)].rstrip(",").lower()
        if rel:
            out[rel] = {k.lower(): set(v) for k, v in a.items()}
    return out


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HSYNC_")}
    full.update(env)
    return subprocess.run([hsync_bin(), *args], capture_output=True, text=True, env=full,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


def sync(src: str, dst: str, **options: Any) -> hsync.Report:
    report = hsync.sync(src, dst, check=True, **options)
    assert report.ok, [p.message for p in report.problems]
    return report


def records(path: Path) -> dict[str, dict[str, set[bytes]]]:
    with open(path, "rb") as f:
        parser = ldif.LDIFRecordList(f)
        parser.parse()
    return {dn.lower(): {k.lower(): set(v) for k, v in e.items()}
            for dn, e in parser.all_records}


# The shape of 389-ds's Example.ldif and OpenLDAP's tests/data people: an
# inetOrgPerson named by cn, with a uid.
HAMPSTER = f"""dn: ou=People,{SRC_BASE}
objectClass: organizationalUnit
ou: People

dn: cn=Ursula Hampster,ou=People,{SRC_BASE}
objectClass: inetOrgPerson
cn: Ursula Hampster
sn: Hampster
uid: uham
mail: uham@example.com
"""


# -- 1. re-keying --------------------------------------------------------------------------


def test_rekeyed_entry_whose_old_naming_value_changed_is_moved_not_recreated(
    ldap_env: Slapd,
) -> None:
    """modrdn cn=Ursula Hampster -> uid=uham (deleteoldrdn 0), then cn replaced: the
    destination gets the new cn before the modrdn drops the old one (inetOrgPerson
    requires cn at every step); one run, exit 0, the entryUUID kept."""
    add_ldif(ldap_env, SRC_BASE, HAMPSTER)
    sync(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE))
    before = uuids(ldap_env, DST_BASE)["cn=ursula hampster,ou=people"]
    conn = admin(ldap_env, SRC_BASE)
    conn.rename_s(f"cn=Ursula Hampster,ou=People,{SRC_BASE}", "uid=uham", None, 0)
    conn.modify_s(f"uid=uham,ou=People,{SRC_BASE}", [(ldap.MOD_REPLACE, "cn", [b"Ursula H"])])
    r = run_cli("sync", ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE),
                env=ldap_env.env())
    assert r.returncode == 0, r.stderr
    after = uuids(ldap_env, DST_BASE)
    assert "cn=ursula hampster,ou=people" not in after
    assert after["uid=uham,ou=people"] == before
    entry = entries(ldap_env, DST_BASE)["uid=uham,ou=people"]
    assert entry["cn"] == {b"Ursula H"} and entry["uid"] == {b"uham"}
    assert not hsync.diff(ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE))


# -- 5. a destination base that cannot be made ---------------------------------------------


@pytest.mark.parametrize(
    ("base", "cause"),
    [
        ("ou=copy,dc=nowhere", "outside every suffix"),
        (f"ou=copy,ou=missing,{DST_BASE}", f"its parent ou=missing,{DST_BASE} does not exist"),
    ],
    ids=["outside-every-suffix", "parent-missing"],
)
def test_destination_base_that_cannot_be_created_is_one_line_exit_2_before_any_write(
    ldap_env: Slapd, base: str, cause: str
) -> None:
    add_ldif(ldap_env, SRC_BASE, HAMPSTER)
    dst = ldap_env.endpoint(base)
    r = run_cli("sync", ldap_env.endpoint(SRC_BASE), dst, env=ldap_env.env())
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{dst}: destination" in lines[0] and cause in lines[0], lines[0]
    assert ldap_env.endpoint(SRC_BASE) not in lines[0]  # not blamed on the source
    assert entries(ldap_env, DST_BASE) == {}


def test_destination_base_the_source_root_cannot_become_is_one_line_exit_2(
    ldap_env: Slapd,
) -> None:
    """The parent is there, but the source's root (a dcObject) cannot be added under an
    ou= name: one line naming the destination and the server's answer, nothing below
    it tried (not one problem per entry)."""
    add_ldif(ldap_env, SRC_BASE, HAMPSTER)
    dst = ldap_env.endpoint(f"ou=copy,{DST_BASE}")
    r = run_cli("sync", ldap_env.endpoint(SRC_BASE), dst, env=ldap_env.env())
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert dst in lines[0] and "Object class violation" in lines[0]
    assert entries(ldap_env, DST_BASE) == {}


# -- 6. an LDIF record outside its base ------------------------------------------------------


def test_ldif_source_record_outside_its_base_is_bad_input_exit_2(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    """A file whose records are not one tree (an entry of another suffix left in a
    slapcat of several databases): one line naming the record, exit 2, nothing written."""
    src = tmp_path / "src.ldif"
    src.write_text(
        f"dn: {SRC_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: src\no: src\n\n"
        f"dn: cn=fine,{SRC_BASE}\nobjectClass: device\ncn: fine\n\n"
        "dn: cn=stray,dc=elsewhere,dc=test\nobjectClass: device\ncn: stray\n"
    )
    r = run_cli("sync", f"ldif:{src}", ldap_env.endpoint(DST_BASE),
                env={**ldap_env.env(), "XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "cn=stray,dc=elsewhere,dc=test" in lines[0] and "outside the base" in lines[0]
    assert str(src) in lines[0]
    assert entries(ldap_env, DST_BASE) == {}
    # with ?base= naming a subtree, the rest of the file is outside it as well
    r = run_cli("diff", f"ldif:{src}?base=cn=fine,{SRC_BASE}", ldap_env.endpoint(DST_BASE),
                env={**ldap_env.env(), "XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 2 and f"record {SRC_BASE} is outside" in r.stderr, r.stderr


# -- 4. two entries that swap RDNs -------------------------------------------------------------


def test_two_empty_ous_swapped_through_a_temporary_name_keep_their_entryuuids(
    ldap_env: Slapd,
) -> None:
    """Every key's payload is equal after the swap (the ou values follow the RDNs), but
    the history says each entryUUID moved: diff plans the modrdns, and the destination
    ends with each entry under the name its source entry has."""
    add_ldif(ldap_env, SRC_BASE,
             f"dn: ou=Sales,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Sales\n\n"
             f"dn: ou=Support,{SRC_BASE}\nobjectClass: organizationalUnit\nou: Support\n")
    src, dst = ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE)
    sync(src, dst)
    pairs_before = _pairs(ldap_env)
    conn = admin(ldap_env, SRC_BASE)
    conn.rename_s(f"ou=Sales,{SRC_BASE}", "ou=Tmp", None, 1)
    conn.rename_s(f"ou=Support,{SRC_BASE}", "ou=Sales", None, 1)
    conn.rename_s(f"ou=Tmp,{SRC_BASE}", "ou=Support", None, 1)
    plan = hsync.diff(src, dst)
    assert sorted(op.op for op in plan if op.op == "move") == ["move"] * 3  # via a temp
    report = sync(src, dst)
    assert report.counts["create"] == 0 and report.counts["delete"] == 0
    # each destination entry follows its source entry: the pairing of the last sync
    # holds under the new names
    src_now, dst_now = uuids(ldap_env, SRC_BASE), uuids(ldap_env, DST_BASE)
    assert {src_now[rel]: dst_now[rel] for rel in src_now} == pairs_before
    assert not hsync.diff(src, dst)


def _pairs(server: Slapd) -> dict[str, str]:
    """Source entryUUID -> destination entryUUID of the entry under the same name."""
    s, d = uuids(server, SRC_BASE), uuids(server, DST_BASE)
    return {s[rel]: d[rel] for rel in s}


# -- 3. referral objects -----------------------------------------------------------------------

# OpenLDAP's tests/data/referrals.ldif: subordinate referrals (RFC 3296) beside an
# ordinary entry
REFERRALS = [
    ("o=ABC", [("o", [b"ABC"]), ("objectClass", [b"referral", b"extensibleObject"]),
               ("ref", [b"ldap://hostA/o=ABC,c=US", b"ldap://hostB/o=ABC,c=US"])]),
    ("o=XYZ", [("o", [b"XYZ"]), ("objectClass", [b"referral", b"extensibleObject"]),
               ("ref", [b"ldap://hostC/o=XYZ,c=US"])]),
    ("o=University of Michigan", [("o", [b"University of Michigan"]),
                                  ("objectClass", [b"organization"])]),
]


def test_referral_objects_are_synced_as_entries_to_a_server_and_an_ldif_file(
    ldap_env: Slapd, tmp_path: Path
) -> None:
    """Read and written with ManageDsaIT, as ``ldapadd -M`` and syncrepl do: the
    referral objects reach the destination server and an LDIF export with their ref
    values, and a restore from that file gives them back."""
    from ldap.controls.simple import ManageDSAITControl

    conn = admin(ldap_env, SRC_BASE)
    for rdn, attrs in REFERRALS:
        conn.add_ext_s(f"{rdn},{SRC_BASE}", attrs, serverctrls=[ManageDSAITControl()])
    src, dst = ldap_env.endpoint(SRC_BASE), ldap_env.endpoint(DST_BASE)
    report = sync(src, dst)
    assert report.counts["create"] == 3
    got = read_all(ldap_env, DST_BASE, ["ref"])
    assert set(got) == {"o=abc", "o=xyz", "o=university of michigan"}
    assert got["o=abc"]["ref"] == {b"ldap://hostA/o=ABC,c=US", b"ldap://hostB/o=ABC,c=US"}
    assert got["o=xyz"]["objectclass"] == {b"referral", b"extensibleObject"}
    assert not hsync.diff(src, dst)
    # an LDIF export holds them, and a restore into an empty tree brings them back
    out = tmp_path / "export.ldif"
    sync(src, f"ldif:{out}")
    recs = records(out)
    assert recs[f"o=xyz,{SRC_BASE}"]["ref"] == {b"ldap://hostC/o=XYZ,c=US"}
    conn = admin(ldap_env, DST_BASE)
    for rdn, _ in REFERRALS:
        conn.delete_ext_s(f"{rdn},{DST_BASE}", serverctrls=[ManageDSAITControl()])
    sync(f"ldif:{out}", dst, state=str(tmp_path / "restore.sqlite"))
    assert read_all(ldap_env, DST_BASE, ["ref"])["o=abc"]["ref"] == got["o=abc"]["ref"]
    # a changed ref travels as an update
    admin(ldap_env, SRC_BASE).modify_ext_s(
        f"o=XYZ,{SRC_BASE}", [(ldap.MOD_REPLACE, "ref", [b"ldap://hostD/o=XYZ,c=US"])],
        serverctrls=[ManageDSAITControl()])
    assert sync(src, dst).counts["update"] == 1
    assert read_all(ldap_env, DST_BASE, ["ref"])["o=xyz"]["ref"] == {
        b"ldap://hostD/o=XYZ,c=US"}


# -- 7. operational attributes set on purpose ----------------------------------------------------


def test_user_modifiable_operational_attributes_are_copied_server_maintained_ones_never(
    rich: Slapd, tmp_path: Path
) -> None:
    """authzTo/authzFrom (proxy authorization rules) and ppolicy's pwdPolicySubentry
    (a DN inside the base: rebased) are copied and kept up to date; entryUUID, entryCSN
    and the timestamps stay the destination server's own."""
    add_ldif(rich, SRC_BASE, f"""dn: ou=Policies,{SRC_BASE}
objectClass: organizationalUnit
ou: Policies

dn: cn=strict,ou=Policies,{SRC_BASE}
objectClass: device
objectClass: pwdPolicy
cn: strict
pwdAttribute: userPassword
pwdMinLength: 12

dn: uid=proxy,{SRC_BASE}
objectClass: account
objectClass: simpleSecurityObject
uid: proxy
userPassword: not-a-real-one
authzTo: dn.regex:^uid=[^,]*,{SRC_BASE}$
authzFrom: dn.exact:cn=admin,{SRC_BASE}
pwdPolicySubentry: cn=strict,ou=Policies,{SRC_BASE}
""")
    src, dst = rich.endpoint(SRC_BASE), rich.endpoint(DST_BASE)
    sync(src, dst)
    names = ["authzTo", "authzFrom", "pwdPolicySubentry", "entryCSN", "createTimestamp",
             "entryUUID"]
    a = read_all(rich, SRC_BASE, names)["uid=proxy"]
    b = read_all(rich, DST_BASE, names)["uid=proxy"]
    assert b["authzto"] == a["authzto"]  # a rule's text is copied as written
    assert b["authzfrom"] == a["authzfrom"]
    assert b["pwdpolicysubentry"] == {f"cn=strict,ou=Policies,{DST_BASE}".encode()}
    assert b["entryuuid"] != a["entryuuid"] and b["entrycsn"] != a["entrycsn"]
    assert not hsync.diff(src, dst)
    conn = admin(rich, SRC_BASE)
    conn.modify_s(f"uid=proxy,{SRC_BASE}", [(ldap.MOD_DELETE, "authzFrom", None),
                                          (ldap.MOD_DELETE, "pwdPolicySubentry", None)])
    assert sync(src, dst).counts["update"] == 1
    b = read_all(rich, DST_BASE, names)["uid=proxy"]
    assert "authzfrom" not in b and "pwdpolicysubentry" not in b
    assert b["authzto"] == a["authzto"]
    # an LDIF export carries them too
    out = tmp_path / "export.ldif"
    sync(src, f"ldif:{out}")
    assert records(out)[f"uid=proxy,{SRC_BASE}"]["authzto"] == a["authzto"]
    assert "entrycsn" not in records(out)[f"uid=proxy,{SRC_BASE}"]


# -- 2. schemas beyond the built-in one ---------------------------------------------------------

# ppolicy's policy entry and a misc.schema mail routing attribute (389-ds and OpenLDAP
# sample data both carry them), a duaconf profile whose defaultSearchBase is a DN
# inside the tree
EXTENDED = f"""dn: {SRC_BASE}
objectClass: dcObject
objectClass: organization
dc: src
o: src

dn: ou=Policies,{SRC_BASE}
objectClass: organizationalUnit
ou: Policies

dn: cn=default,ou=Policies,{SRC_BASE}
objectClass: device
objectClass: pwdPolicy
cn: default
pwdAttribute: userPassword

dn: ou=People,{SRC_BASE}
objectClass: organizationalUnit
ou: People

dn: uid=uham,ou=People,{SRC_BASE}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
cn: Ursula Hampster
sn: Hampster
uid: uham
mailLocalAddress: UHam@Example.COM

dn: cn=profile,{SRC_BASE}
objectClass: DUAConfigProfile
cn: profile
defaultSearchBase: ou=People,{SRC_BASE}
"""


def test_ldif_and_server_settle_for_attributes_outside_the_builtin_schema(
    rich: Slapd, tmp_path: Path
) -> None:
    """The LDIF side compares by the server's schema: after a sync either way, diff
    says in sync and a re-sync writes nothing (pwdAttribute compares as an OID,
    mailLocalAddress ignoring case, as slapd does)."""
    src = tmp_path / "src.ldif"
    src.write_text(EXTENDED)
    dst = rich.endpoint(DST_BASE)
    env = {**rich.env(), "XDG_STATE_HOME": str(tmp_path / "state")}
    r = run_cli("sync", f"ldif:{src}", dst, env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli("diff", f"ldif:{src}", dst, env=env)
    assert (r.returncode, r.stdout) == (0, "in sync\n"), r.stdout + r.stderr
    assert sync(f"ldif:{src}", dst).counts == {"create": 0, "update": 0, "move": 0,
                                               "delete": 0}
    # and the other way: an export of the server settles too
    out = tmp_path / "export.ldif"
    sync(dst, f"ldif:{out}")
    before = out.read_bytes()
    r = run_cli("diff", dst, f"ldif:{out}", env=env)
    assert (r.returncode, r.stdout) == (0, "in sync\n"), r.stdout + r.stderr
    assert sync(dst, f"ldif:{out}").counts["update"] == 0
    assert out.read_bytes() == before


def test_dn_valued_attribute_outside_the_builtin_schema_is_rebased_by_export_and_restore(
    rich: Slapd, tmp_path: Path
) -> None:
    """defaultSearchBase (duaconf.schema) is DN-valued by the server's schema: exported
    from dc=src and restored into dc=dst, it names the restored tree."""
    add_ldif(rich, SRC_BASE, EXTENDED.split("\n\n", 1)[1])
    out = tmp_path / "export.ldif"
    sync(rich.endpoint(SRC_BASE), f"ldif:{out}")
    assert records(out)[f"cn=profile,{SRC_BASE}"]["defaultsearchbase"] == {
        f"ou=People,{SRC_BASE}".encode()}
    dst = rich.endpoint(DST_BASE)
    sync(f"ldif:{out}", dst)
    got = entries(rich, DST_BASE)["cn=profile"]["defaultsearchbase"]
    assert got == {f"ou=People,{DST_BASE}".encode()}
    assert not hsync.diff(f"ldif:{out}", dst)


def test_schema_files_make_two_ldif_files_compare_and_rebase_by_them(tmp_path: Path) -> None:
    """Without a server, ``--schema FILE`` (repeatable; OpenLDAP's .schema or its
    cn=config LDIF form) gives the rules: a mailLocalAddress differing only by case is
    in sync, a defaultSearchBase is rebased into the destination's base."""
    src = tmp_path / "src.ldif"
    src.write_text(EXTENDED)
    out = tmp_path / "out.ldif"
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    schemas = ["--schema", "/etc/ldap/schema/misc.schema",
               "--schema", "/etc/ldap/schema/duaconf.ldif"]
    dst = f"ldif:{out}?base={DST_BASE}"
    r = run_cli("sync", *schemas, f"ldif:{src}", dst, env=env)
    assert r.returncode == 0, r.stderr
    assert records(out)[f"cn=profile,{DST_BASE}"]["defaultsearchbase"] == {
        f"ou=People,{DST_BASE}".encode()}
    text = out.read_text().replace("UHam@Example.COM", "uham@example.com")
    out.write_text(text)
    r = run_cli("diff", *schemas, f"ldif:{src}", dst, env=env)
    assert (r.returncode, r.stdout) == (0, "in sync\n"), r.stdout + r.stderr
    r = run_cli("diff", f"ldif:{src}", dst, env=env)  # by the built-in table: bytes
    assert r.returncode == 1 and "uid=uham" in r.stdout, r.stdout + r.stderr
    # the same through the Python API
    assert not hsync.diff(f"ldif:{src}", dst, schema=["/etc/ldap/schema/misc.schema",
                                                      "/etc/ldap/schema/duaconf.schema"])
    # a schema file that cannot be read, or --schema where nothing takes a schema
    r = run_cli("diff", "--schema", str(tmp_path / "nope.schema"), f"ldif:{src}", dst, env=env)
    assert r.returncode == 2 and "nope.schema" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "a").mkdir()
    r = run_cli("diff", "--schema", "/etc/ldap/schema/misc.schema", str(tmp_path / "a"),
                str(tmp_path / "b"), env=env)
    assert r.returncode == 2 and "--schema" in r.stderr, r.stderr
