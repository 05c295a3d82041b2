"""The backend conformance suite on the LDAP backend (a real slapd on loopback)."""

from __future__ import annotations

from typing import Any

import pytest
from conformance import BackendConformance, Endpoints, Tree
from ldap_fixtures import DST_BASE, SRC_BASE, Slapd, admin

ldap = pytest.importorskip("ldap")
pytest.importorskip("hsync_ldap", reason="the LDAP plugin is not installed (bash tests/run.sh)")


class LdapAdapter(Endpoints):
    type_change = False
    features = frozenset({"watchable"})

    def __init__(self, server: Slapd) -> None:
        self.server = server
        self.bases = {"source": SRC_BASE, "destination": DST_BASE}

    def url(self, side: str) -> str:
        return self.server.endpoint(self.bases[side])

    def absent_url(self) -> str:
        return self.server.endpoint(f"ou=never-made,{SRC_BASE}")

    def key(self, path: str) -> tuple[str, ...]:
        """Normalized RDNs from the base down (the names here are lower case already)."""
        return tuple(f"ou={name}" for name in path.split("/")) if path else ()

    def dn(self, side: str, path: str) -> str:
        rdns = [f"ou={name}" for name in reversed(path.split("/"))] if path else []
        return ",".join([*rdns, self.bases[side]])

    def build(self, side: str, tree: Tree) -> None:
        conn = admin(self.server, self.bases[side])
        for path in sorted(tree, key=lambda p: p.count("/")):
            attrs = [("objectClass", [b"organizationalUnit"]),
                     ("ou", [path.rsplit("/", 1)[-1].encode()])]
            if tree[path] is not None:
                attrs.append(("description", [tree[path].encode()]))
            conn.add_s(self.dn(side, path), attrs)
        conn.unbind_s()

    def read(self, side: str) -> Tree:
        conn = admin(self.server, self.bases[side])
        base = self.bases[side]
        out: Tree = {}
        for dn, attrs in conn.search_s(base, ldap.SCOPE_SUBTREE, "(objectClass=*)", ["*"]):
            rdns = ldap.dn.str2dn(dn)[: -len(ldap.dn.str2dn(base))]
            if not rdns:
                continue
            path = "/".join(r[0][1] for r in reversed(rdns))
            desc = attrs.get("description")
            out[path] = desc[0].decode() if desc else None
        conn.unbind_s()
        return out

    def rename(self, old: str, new: str) -> None:
        conn = admin(self.server, SRC_BASE)
        parent = new.rsplit("/", 1)[0] if "/" in new else ""
        conn.rename_s(self.dn("source", old), f"ou={new.rsplit('/', 1)[-1]}",
                      self.dn("source", parent), 1)
        conn.unbind_s()

    def write(self, path: str, token: str) -> None:
        conn = admin(self.server, SRC_BASE)
        conn.modify_s(self.dn("source", path),
                      [(ldap.MOD_REPLACE, "description", [token.encode()])])
        conn.unbind_s()

    def delete(self, path: str) -> None:
        conn = admin(self.server, SRC_BASE)
        found = conn.search_s(self.dn("source", path), ldap.SCOPE_SUBTREE, "(objectClass=*)",
                              ["1.1"])
        for dn, _ in sorted(found, key=lambda r: -len(ldap.dn.str2dn(r[0]))):
            conn.delete_s(dn)
        conn.unbind_s()

    def retype(self, path: str, child: str) -> None:
        raise AssertionError("no type change in LDAP")

    def identity(self, side: str, path: str) -> Any:
        conn = admin(self.server, self.bases[side])
        ((_, attrs),) = conn.search_s(self.dn(side, path), ldap.SCOPE_BASE, "(objectClass=*)",
                                      ["entryUUID"])
        conn.unbind_s()
        return attrs["entryUUID"][0]


class TestLdapConformance(BackendConformance):
    @pytest.fixture
    def adapter(self, ldap_env: Slapd) -> LdapAdapter:
        return LdapAdapter(ldap_env)
