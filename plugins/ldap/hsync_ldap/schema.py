"""Attribute types and how their values compare (SPEC section 2: "values compared by the
attribute's matching rule where known").

A value is carried as ``bytes`` in its *normalized* form (what equality means for its
attribute); where that differs from what the server holds, it is an ``NValue`` that
also keeps the original spelling (``raw``) for writing. Two sides that normalize with
the same rules compare equal exactly when a directory would say so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs
import ldap.dn

from hsync.errors import UsageError

DN_SYNTAXES = frozenset(
    {
        "1.3.6.1.4.1.1466.115.121.1.12",  # DN
        "1.3.6.1.4.1.1466.115.121.1.34",  # Name and Optional UID (uniqueMember)
    }
)
DN_ATTRIBUTES = frozenset({"member", "uniquemember", "owner", "manager", "seealso"})
"""DN-valued whatever a schema says (the issue's list)."""

OPERATIONAL = frozenset(
    {
        "entryuuid", "entrycsn", "createtimestamp", "modifytimestamp", "creatorsname",
        "modifiersname", "structuralobjectclass", "hassubordinates", "subschemasubentry",
        "entrydn", "contextcsn", "numsubordinates", "pwdchangedtime", "memberof",
        # the subschema subentry's own (writable there, on no other entry)
        "attributetypes", "objectclasses", "ldapsyntaxes", "matchingrules",
        "matchingruleuse", "ditcontentrules", "ditstructurerules", "nameforms",
    }
)
"""Never payload, even when an LDIF file (slapcat) carries them: what the server
maintains (identity, change sequence, timestamps, ...)."""

WRITABLE_OPERATIONAL = {
    # slapd defines these itself and hides them from cn=Subschema (RFC 3296 ``ref`` is
    # listed; authzTo/authzFrom are not); ppolicy's pwdPolicySubentry comes with the
    # overlay. All are USAGE directoryOperation / distributedOperation without
    # NO-USER-MODIFICATION: administrators set them on purpose.
    "ref": ("ref", "caseexactmatch", False),
    "authzto": ("authzTo", "authzmatch", False),
    "saslauthzto": ("authzTo", "authzmatch", False),
    "authzfrom": ("authzFrom", "authzmatch", False),
    "saslauthzfrom": ("authzFrom", "authzmatch", False),
    "pwdpolicysubentry": ("pwdPolicySubentry", "distinguishednamematch", True),
}
"""Operational attributes a user writes (canonical name, equality, DN-valued), known
whatever a server's subschema lists: they are payload and requested by name."""


class NValue:
    """A normalized value that remembers the spelling it had (``raw``).

    Equal to, and hashed as, its normalized bytes (``norm``), so sets of values compare
    by matching rule whatever mix of ``bytes`` and ``NValue`` they hold. ``rel``: a DN
    inside the tree's base, held relative to it (``raw`` is the relative part as
    spelled, empty for the base itself); the writer appends its own base."""

    __slots__ = ("norm", "raw", "rel")

    def __init__(self, norm: bytes, raw: bytes, rel: bool = False) -> None:
        self.norm = norm
        self.raw = raw
        self.rel = rel

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NValue):
            return self.norm == other.norm
        return self.norm == other

    def __hash__(self) -> int:
        return hash(self.norm)

    def __bytes__(self) -> bytes:
        return self.norm

    def __str__(self) -> str:
        # what hsync.model.fingerprint hashes: the normalized form
        return self.norm.decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"NValue({self.norm!r}, raw={self.raw!r}{', rel' if self.rel else ''})"

    def __reduce__(self) -> Any:
        return (NValue, (self.norm, self.raw, self.rel))


Value = bytes | NValue
"""One attribute value as a payload holds it: its normalized bytes, or an ``NValue``."""

REL_MARK = b"\x00rel:"
"""Prefix of a normalized DN value inside the base (never a valid DN string)."""


@attrs.frozen
class AttrType:
    name: str
    """Canonical spelling (what is written)."""
    equality: str = ""
    """Equality matching rule name, lower-case ("" when unknown: exact bytes)."""
    dn: bool = False
    operational: bool = False
    """Not a user attribute: USAGE other than userApplications, or NO-USER-MODIFICATION."""
    writable: bool = False
    """An operational attribute a user may write (USAGE directoryOperation or
    distributedOperation without NO-USER-MODIFICATION: ``ref``, ``authzTo``,
    ``pwdPolicySubentry``): payload, copied with the entry, unless ``OPERATIONAL``
    names it (what the server maintains)."""


class Schema:
    """Attribute types by lower-case name (every alias); unknown names compare exactly."""

    def __init__(self, types: dict[str, AttrType] | None = None) -> None:
        self.types: dict[str, AttrType] = dict(types or {})

    @classmethod
    def builtin(cls) -> Schema:
        from ._builtin_schema import ATTRIBUTES

        types = {k: AttrType(*v) for k, v in ATTRIBUTES.items()}
        for k, (name, equality, dn) in WRITABLE_OPERATIONAL.items():
            types.setdefault(k, AttrType(name, equality, dn, True, True))
        return cls(types)

    @classmethod
    def from_subschema(cls, sub: Any) -> Schema:
        """From a ``ldap.schema.SubSchema`` (equality and syntax inherited through SUP)."""
        import ldap.schema

        raw: dict[str, Any] = {}
        for oid in sub.listall(ldap.schema.AttributeType):
            at = sub.get_obj(ldap.schema.AttributeType, oid)
            for n in at.names or (oid,):
                raw[n.lower()] = at

        def resolve(at: Any, field: str, depth: int = 0) -> str | None:
            value = getattr(at, field)
            if value or depth > 10 or not at.sup:
                return value
            parent = raw.get(at.sup[0].lower())
            return resolve(parent, field, depth + 1) if parent is not None else None

        types = {}
        for lname, at in raw.items():
            syntax = resolve(at, "syntax") or ""
            syntax = syntax.split("{")[0]
            equality = (resolve(at, "equality") or "").lower()
            canonical = (at.names or (lname,))[0]
            types[lname] = AttrType(
                canonical,
                equality,
                syntax in DN_SYNTAXES or equality in ("distinguishednamematch",
                                                      "uniquemembermatch"),
                bool(at.usage) or bool(at.no_user_mod),
                # usage: 0 user, 1 directoryOperation, 2 distributed, 3 dSAOperation
                # (per server: never copied)
                at.usage in (1, 2) and not at.no_user_mod,
            )
        return cls(types)

    @classmethod
    def from_files(cls, paths: Sequence[str]) -> Schema:
        """The attribute types of schema files: OpenLDAP's ``.schema`` format
        (``attributetype ( ... )``, ``objectidentifier`` macros expanded), or LDIF
        (``olcAttributeTypes:`` of cn=config, ``attributeTypes:`` of a subschema entry).
        ``UsageError`` naming the file when it cannot be read or holds no attribute
        type."""
        import ldap.schema

        found: list[str] = []
        seen: set[str] = set()
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise UsageError(f"{path}: cannot read the schema file: {why}") from None
            defs = _attribute_types(text)
            if not defs:
                raise UsageError(f"{path}: no attribute type in this schema file "
                                 "(attributetype, olcAttributeTypes or attributeTypes)")
            for d in defs:
                m = _NAMES.search(d)
                names = {n.lower() for n in re.findall(r"'([^']*)'", m.group(1))} if m else set()
                if not names & seen:  # the first file that defines a name wins
                    found.append(d)
                    seen |= names
        try:
            sub = ldap.schema.SubSchema({"attributeTypes": [d.encode() for d in found]})
        except (ValueError, KeyError, IndexError) as e:
            raise UsageError(f"{', '.join(paths)}: cannot parse the schema: {e}") from None
        return cls.from_subschema(sub)

    def merged(self, other: Schema) -> Schema:
        """``self`` with the names only ``other`` knows (a server's custom attributes)."""
        return Schema({**other.types, **self.types})

    # -- names ---------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """Lower-case canonical name of an attribute description (options kept)."""
        base, sep, options = name.partition(";")
        t = self.types.get(base.lower())
        head = t.name.lower() if t is not None else base.lower()
        return f"{head};{options.lower()}" if sep else head

    def spelling(self, lname: str) -> str:
        base, sep, options = lname.partition(";")
        t = self.types.get(base)
        return (t.name if t is not None else base) + (sep + options)

    def is_operational(self, lname: str) -> bool:
        """True when ``lname`` is not payload: what the server maintains, and operational
        attributes a user cannot write (``AttrType.writable``)."""
        base = lname.partition(";")[0]
        t = self.types.get(base)
        return base in OPERATIONAL or (t is not None and t.operational and not t.writable)

    def writable_operational(self) -> list[str]:
        """The operational attributes that are payload, as a search requests them by
        name (``*`` leaves every operational attribute out; ``+`` would send them all,
        the server-maintained ones included)."""
        return sorted({
            t.name for k, t in self.types.items()
            if t.operational and t.writable and k not in OPERATIONAL
        })

    def is_dn(self, lname: str) -> bool:
        base = lname.partition(";")[0]
        t = self.types.get(base)
        return base in DN_ATTRIBUTES or (t is not None and t.dn)

    # -- values --------------------------------------------------------------------------
    def norm_text(self, lname: str, value: str) -> str:
        """``value`` of attribute ``lname`` in the form equality compares."""
        base = lname.partition(";")[0]
        t = self.types.get(base)
        rule = t.equality if t is not None else ""
        if base == "objectclass" or rule == "objectidentifiermatch":
            return value.strip().lower()
        if rule.startswith("caseignore"):
            return " ".join(value.split()).lower()
        if rule.startswith("caseexact"):
            return " ".join(value.split())
        if rule == "telephonenumbermatch":
            return "".join(c for c in value if c not in " -").lower()
        if rule == "integermatch":
            try:
                return str(int(value))
            except ValueError:
                return value
        if rule == "booleanmatch":
            return value.upper()
        return value

    def norm_dn(self, dn: str) -> str:
        """A DN in normalized string form (types canonical, values by their rule)."""
        return ",".join(self.norm_rdn(rdn) for rdn in ldap.dn.explode_dn(dn))

    def norm_rdn_parts(self, parts: list[tuple[str, str, int]]) -> str:
        avas = []
        for name, value, _ in parts:
            lname = self.canonical(name)
            avas.append(f"{lname}={ldap.dn.escape_dn_chars(self.norm_text(lname, value))}")
        return "+".join(sorted(avas))

    def norm_rdn(self, rdn: str) -> str:
        (parts,) = ldap.dn.str2dn(rdn)
        return self.norm_rdn_parts(parts)

    def norm_value(self, lname: str, raw: bytes, base: list[str] | None) -> Value:
        """The normalized form of one value (an ``NValue`` when it differs from ``raw``).

        ``base``: the tree's base as normalized RDNs; a DN value at or below it is
        held relative to it."""
        base_name = lname.partition(";")[0]
        t = self.types.get(base_name)
        dn = base_name in DN_ATTRIBUTES or (t is not None and t.dn)
        exact = t is None or t.equality in ("", "octetstringmatch")
        if not dn and exact and base_name != "objectclass":
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
        if dn:
            return self._norm_dn_value(text, raw, base)
        norm = self.norm_text(lname, text).encode("utf-8")
        return raw if norm == raw else NValue(norm, raw)

    def _norm_dn_value(self, text: str, raw: bytes, base: list[str] | None) -> Value:
        uid = ""
        if "#" in text:  # nameAndOptionalUID: "DN#'0101'B"
            head, _, tail = text.rpartition("#")
            if tail.startswith("'") and tail.endswith("'B"):
                text, uid = head, "#" + tail
        try:
            rdns = ldap.dn.str2dn(text)
        except ldap.DECODING_ERROR:
            return raw
        normed = [self.norm_rdn_parts(r) for r in rdns]
        keep = len(normed) - len(base) if base is not None else -1
        if base is not None and keep >= 0 and normed[keep:] == base:
            rel_raw = ldap.dn.dn2str(rdns[:keep]) + uid
            norm = REL_MARK + (",".join(normed[:keep]) + uid).encode("utf-8")
            return NValue(norm, rel_raw.encode("utf-8"), rel=True)
        norm = (",".join(normed) + uid).encode("utf-8")
        return raw if norm == raw else NValue(norm, raw)


def raw_of(value: bytes | NValue, base_dn: str) -> bytes:
    """What to write for a (possibly normalized) value, on a tree based at ``base_dn``."""
    if isinstance(value, NValue):
        if value.rel:
            rel = value.raw.decode("utf-8")
            if "#" in rel and rel.endswith("'B"):
                head, _, tail = rel.rpartition("#")
                full = f"{head},{base_dn}" if head else base_dn
                return f"{full}#{tail}".encode()
            return (f"{rel},{base_dn}" if rel else base_dn).encode("utf-8")
        return value.raw
    return value


_MACRO = re.compile(r"^\s*(?:olc)?objectidentifier:?\s+(\S+)\s+(\S+)",
                    re.IGNORECASE | re.MULTILINE)
_NAMES = re.compile(r"\bNAME\s+(\([^)]*\)|'[^']*')", re.IGNORECASE)
_LDIF_AT = re.compile(r"^(?:olcattributetypes|attributetypes):\s*", re.IGNORECASE)


def _attribute_types(text: str) -> list[str]:
    """The attribute type definitions ``( OID NAME ... )`` of one schema file, with
    OpenLDAP's ``objectidentifier`` macros (``Name:1.2``) expanded."""
    macros = {m.group(1).lower(): m.group(2) for m in _MACRO.finditer(text)}

    def expand(oid: str) -> str:
        head, sep, tail = oid.partition(":")
        base = macros.get(head.lower())
        if base is None:
            return oid
        base = expand(base)
        return f"{base}.{tail}" if sep else base

    out: list[str] = []
    if re.search(r"^dn:", text, re.IGNORECASE | re.MULTILINE):  # LDIF: unfold, then read
        lines = re.sub(r"\r?\n ", "", text).splitlines()
        for line in lines:
            m = _LDIF_AT.match(line)
            if m:
                value = line[m.end():]
                value = re.sub(r"^\{\d+\}", "", value.strip())  # olc ordering prefix
                out.append(value)
    else:
        lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        body = "\n".join(lines)
        for m in re.finditer(r"^\s*attributetypes?\s*\(", body, re.IGNORECASE | re.MULTILINE):
            depth, i = 1, m.end()
            while i < len(body) and depth:
                depth += {"(": 1, ")": -1}.get(body[i], 0)
                i += 1
            out.append("(" + " ".join(body[m.end():i].split()))
    fixed = []
    for d in out:
        inner = d.strip()[1:].lstrip()
        oid, _, rest = inner.partition(" ")
        fixed.append(f"( {expand(oid)} {rest}")
    return fixed
