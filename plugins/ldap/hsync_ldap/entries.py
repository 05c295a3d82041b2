"""Entries <-> hsync nodes, for one tree (a base DN and a schema).

- key: the RDNs from the base down, each normalized (``ou=people``: attribute names
  canonical lower-case, values by matching rule, multi-valued RDNs sorted); a key
  component is always exactly one RDN, so no name can address outside the base;
- identity: entryUUID;
- payload (``Node.data``): user attributes as a sorted tuple of
  ``(name, frozenset(values))``, values normalized (``schema.NValue`` keeps the spelling);
  operational and excluded attributes are left out; DN values inside the base are held
  relative to it (so a copy under another base compares equal and is written with the
  destination's base);
- the root (the base entry itself): its own RDN value is not payload (two bases have
  different names; the attribute is put back when the root is written); its ``data``
  is a ``RootData`` that also names the base DN (not payload either).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ldap
import ldap.dn

from hsync.model import ENTRY, Key, Node
from hsync.planner import TEMP_PREFIX

from .schema import AttrType, NValue, Schema, Value, raw_of

Data = tuple[tuple[str, frozenset[Value]], ...]
_UNSET = object()
_NOT_NORMAL = re.compile(rb"[A-Z\t\n\r\f\v\x80-\xff]|  |^ | $")
"""A byte that case folding or space folding would change (non-ASCII: let Python decide)."""
_NO_TYPE = AttrType("")
_PLAIN_RDN = re.compile(r'([a-z][a-z0-9-]*)=([^\\,+"<>;=\x00# ][^\\,+"<>;=\x00]*(?<! ))')
"""A key component of one attribute (canonical: lower case) whose value needs no
escaping in a DN (``ldap.dn.escape_dn_chars`` would leave it as it is)."""
_DN_SPECIAL = re.compile(r'[\\,+"<>;=\x00]|^[ #]| $')
"""What ``ldap.dn.escape_dn_chars`` escapes."""


def _case_ignore(v: bytes) -> Value:
    """caseIgnoreMatch (and objectClass names): case and insignificant spaces ignored."""
    if _NOT_NORMAL.search(v) is None:
        return v  # already in normal form (the common case for most values)
    try:
        text = v.decode("utf-8")
    except UnicodeDecodeError:
        return v
    n = " ".join(text.split()).lower().encode("utf-8")
    return v if n == v else NValue(n, v)


class RootData(tuple[tuple[str, frozenset[Value]], ...]):
    """The base entry's payload (``Data``), which also names the base DN it was read
    under. The base DN is not payload: equality and hash are the tuple's, so two bases
    with the same attributes compare equal. A new LDIF file written from this node
    takes that base (``ldif_backend``): the node says it, no backend is asked."""

    base_dn: str

    def __new__(cls, items: Data, base_dn: str) -> RootData:
        self = super().__new__(cls, items)
        self.base_dn = base_dn
        return self

    def __reduce__(self) -> Any:
        return (RootData, (tuple(self), self.base_dn))

    def __repr__(self) -> str:
        return f"RootData({tuple(self)!r}, base_dn={self.base_dn!r})"


def base_of(node: Node | None) -> str:
    """The base DN a root node was read under (``RootData``), or ""."""
    data = node.data if node is not None else None
    return data.base_dn if isinstance(data, RootData) else ""


class Mapper:
    """Keys, payloads and DNs for the tree rooted at ``base_dn``."""

    def __init__(self, schema: Schema, base_dn: str, exclude: Iterable[str] = ()) -> None:
        self.schema = schema
        self.base_dn = base_dn
        self.base_rdns = ldap.dn.str2dn(base_dn) if base_dn else []
        self.base_norm = [schema.norm_rdn_parts(r) for r in self.base_rdns]
        self.exclude = {schema.canonical(a) for a in exclude}
        self._rdn_cache: dict[tuple[Any, ...], str] = {}
        self._plans: dict[str, Any] = {}
        self._dns: dict[Key, str] = {}
        self._spell: dict[str, str] = {}
        self.temps: dict[str, str] = {}
        """Temporary names given by the planner (``.hsync-mv-N``) -> the RDN used."""

    # -- reading ---------------------------------------------------------------------------
    def key_of(self, dn: str) -> Key | None:
        """The key of ``dn``, or None when it is not at or below the base."""
        rdns = ldap.dn.str2dn(dn)
        n = len(rdns) - len(self.base_rdns)
        if n < 0:
            return None
        cache = self._rdn_cache
        norm = self.schema.norm_rdn_parts
        tail = rdns[n:]
        if tail != self.base_rdns and [norm(r) for r in tail] != self.base_norm:
            return None
        out = []
        for r in reversed(rdns[:n]):
            t = tuple(r)
            k = cache.get(t)
            if k is None:
                k = cache[t] = norm(r)
            out.append(k)
        return tuple(out)

    def _plan(self, name: str) -> tuple[str, Callable[[bytes], Value] | None] | None:
        """How to read attribute ``name``: (canonical name, value normalizer or None for
        exact bytes), or None when it is not payload (operational, excluded)."""
        schema = self.schema
        lname = schema.canonical(name)
        if lname in self.exclude or lname.partition(";")[0] in self.exclude:
            return None
        if schema.is_operational(lname):
            return None
        base = self.base_norm
        if schema.is_dn(lname):
            return lname, lambda v: schema.norm_value(lname, v, base)
        t = schema.types.get(lname.partition(";")[0]) or _NO_TYPE
        if lname == "objectclass" or t.equality.startswith("caseignore"):
            return lname, _case_ignore
        if t.equality in ("", "octetstringmatch"):
            return lname, None  # exact bytes
        return lname, lambda v: schema.norm_value(lname, v, base)

    def data_of(self, attrs: Mapping[str, Sequence[bytes]], *, root: bool = False) -> Data:
        plans = self._plans
        items: dict[str, frozenset[bytes]] = {}
        for name, values in attrs.items():
            p = plans.get(name, _UNSET)
            if p is _UNSET:
                p = plans[name] = self._plan(name)
            if p is None:
                continue
            lname, norm = p
            fs = frozenset(values) if norm is None else frozenset([norm(v) for v in values])
            if lname in items:  # the same attribute under two names (an LDIF alias)
                fs = items[lname] | fs
            if fs:
                items[lname] = fs
        if root and self.base_rdns:
            schema = self.schema
            for name, value, _ in self.base_rdns[0]:
                lname = schema.canonical(name)
                have = items.get(lname)
                if have is not None:
                    drop = schema.norm_value(lname, value.encode("utf-8"), None)
                    have = have - {drop}
                    if have:
                        items[lname] = have
                    else:
                        del items[lname]
        return tuple(sorted(items.items()))

    def node_of(self, attrs: Mapping[str, Sequence[bytes]], *, root: bool = False) -> Node:
        ident = None
        for name in ("entryUUID", "entryuuid"):
            v = attrs.get(name)
            if v:
                ident = v[0].decode("ascii", "replace")
                break
        data = self.data_of(attrs, root=root)
        return Node(ENTRY, identity=ident, data=RootData(data, self.base_dn) if root else data)

    # -- writing ---------------------------------------------------------------------------
    def dn_of(self, key: Key) -> str:
        """The DN of an existing entry at ``key`` (normalized RDNs: the server matches
        them by the same rules)."""
        dn = self._dns.get(key)
        if dn is not None:
            return dn
        parts = [self.temps.get(c, c) for c in reversed(key)]
        for p in parts:
            if len(ldap.dn.str2dn(p)) != 1:
                raise ValueError(f"{p!r} is not one RDN")
        dn = ",".join([*parts, self.base_dn] if self.base_dn else parts)
        if len(self._dns) < 100_000:
            self._dns[key] = dn
        return dn

    def rdn_for(self, name: str, data: Data | None) -> str:
        """The RDN to write for key component ``name``, spelled as in the entry's
        attribute values (``data``) where they hold it."""
        plain = _PLAIN_RDN.fullmatch(name)
        if plain is not None:
            # one attribute, a value with nothing escaped (the common case): the same
            # RDN as below without parsing and re-escaping it (a third of the time of
            # building an add request)
            lname, value = plain.group(1, 2)
            if lname in self._spell or lname == self.schema.canonical(lname):
                spelled = value
                want = value.encode("utf-8")
                for n, vs in data or ():
                    if n == lname:
                        for v in vs:
                            if v == want:
                                if type(v) is not bytes:  # spelled otherwise
                                    spelled = raw_of(v, self.base_dn).decode("utf-8", "replace")
                                    if _DN_SPECIAL.search(spelled):
                                        spelled = ldap.dn.escape_dn_chars(spelled)
                                break
                        break
                return f"{self._spelling(lname)}={spelled}"
        (parts,) = ldap.dn.str2dn(name)
        out = []
        for attr, value, flags in parts:
            lname = self.schema.canonical(attr)
            spelled = value
            # key components are normalized already: their values compare as they are
            want = value.encode("utf-8")
            for n, vs in data or ():
                if n == lname:
                    for v in vs:
                        if v == want:
                            spelled = raw_of(v, self.base_dn).decode("utf-8", "replace")
                            break
                    break
            out.append((self._spelling(lname), spelled, flags))
        return ldap.dn.dn2str([out])

    def _spelling(self, lname: str) -> str:
        s = self._spell.get(lname)
        if s is None:
            s = self._spell[lname] = self.schema.spelling(lname)
        return s

    def temp_rdn(self, tmp: str, current: str) -> str:
        """The RDN standing for the planner's temporary name ``tmp``: the first
        attribute of the entry's current RDN, with ``tmp`` as its value."""
        (parts,) = ldap.dn.str2dn(self.temps.get(current, current))
        rdn = ldap.dn.dn2str([[(parts[0][0], tmp, 1)]])
        self.temps[tmp] = rdn
        return rdn

    def is_temp(self, name: str) -> bool:
        return name.startswith(TEMP_PREFIX)

    def entry_attrs(self, data: Data | None, *, root: bool = False) -> dict[str, list[bytes]]:
        """Attributes to write (canonical spelling, original values, DNs inside the base
        rewritten to this tree's base)."""
        out: dict[str, list[bytes]] = {}
        base = self.base_dn
        names = self._spell
        for lname, values in data or ():
            name = names.get(lname) or self._spelling(lname)
            if len(values) == 1:  # most are: no list comprehension
                (v,) = values
                out[name] = [v if type(v) is bytes else raw_of(v, base)]
            else:
                out[name] = [v if type(v) is bytes else raw_of(v, base) for v in values]
        if root and self.base_rdns:
            for name, value, _ in self.base_rdns[0]:
                lname = self.schema.canonical(name)
                spelled = self.schema.spelling(lname)
                have = out.setdefault(spelled, [])
                want = self.schema.norm_value(lname, value.encode("utf-8"), None)
                normed = {self.schema.norm_value(lname, v, None) for v in have}
                if want not in normed:
                    have.append(value.encode("utf-8"))
        return out

    def modlist(self, current: Data, desired: Data) -> list[tuple[int, str, Any]]:
        """The minimal modify that turns ``current`` into ``desired``: a whole attribute
        added, deleted or replaced when every value changes, else values deleted and
        added one by one."""
        cur = dict(current)
        want = dict(desired)
        mods: list[tuple[int, str, Any]] = []
        base = self.base_dn
        for lname in sorted(cur.keys() | want.keys()):
            spelled = self.schema.spelling(lname)
            a, b = cur.get(lname, frozenset()), want.get(lname, frozenset())
            if a == b:
                continue
            if not a:
                mods.append((ldap.MOD_ADD, spelled, [raw_of(v, base) for v in b]))
            elif not b:
                mods.append((ldap.MOD_DELETE, spelled, None))
            elif not (a & b):
                mods.append((ldap.MOD_REPLACE, spelled, [raw_of(v, base) for v in b]))
            else:
                gone, new = a - b, b - a
                if gone:
                    mods.append((ldap.MOD_DELETE, spelled, [raw_of(v, base) for v in gone]))
                if new:
                    mods.append((ldap.MOD_ADD, spelled, [raw_of(v, base) for v in new]))
        return mods

