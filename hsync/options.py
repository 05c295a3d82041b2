"""What a run is asked to do (``Options``) and what it did (``Report``)."""

from __future__ import annotations

from ._values import define, field, frozen
from .errors import EXIT_OK, EXIT_PARTIAL
from .filters import strings
from .model import CREATE, DELETE, MOVE, NEEDS_ROOT, UPDATE, Key, Plan, Problem

TYPE_CHECKING = False  # not typing's: a sync does not import typing
if TYPE_CHECKING:
    from typing import Any


def _counts() -> dict[str, int]:
    return dict.fromkeys((CREATE, UPDATE, MOVE, DELETE), 0)


@frozen(kw_only=True)
class Options:
    """The sync options, as the CLI, the daemon's config and the Python API give them."""

    dry_run: bool = False
    delete: bool | None = None
    """Deleting destination-only nodes: True (``--delete``) always, False
    (``--no-delete``) never, None (the default) only once the pair was synced with
    deletions allowed (SPEC 8: a destination hsync never synced from this source keeps
    what the source lacks; ``PairSession.deletes_allowed`` decides)."""
    checksum: bool = False
    exclude: tuple[str, ...] = field(default=(), converter=strings)
    max_delete: int | None = None
    state: str | None = None
    """History file; None for the default location, "" for no history."""
    allow_empty_source: bool = False
    fsync: bool = False
    check: bool = False
    """Run check_plan on every plan before applying it (tests, --debug)."""
    exclude_attrs: tuple[str, ...] = field(default=(), converter=strings)
    """Attribute names left out of entries' payloads (backends with attributes: LDAP)."""
    schema: tuple[str, ...] = field(default=(), converter=strings)
    """Schema files (``--schema``): how an endpoint without a server of its own (an
    LDIF file) compares and rebases the attributes they define (``SchemaAware``)."""
    hard_links: bool = False
    """Source files that are one inode stay one inode on the destination (rsync -H)."""
    wait_lock: bool = False
    """Wait for another run of the same pair to end (else exit 2 naming its pid)."""
    include: tuple[str, ...] = field(default=(), converter=strings)
    """Patterns kept whatever ``exclude`` says (rsync's ``+`` rules; ``hsync.filters``)."""
    filters: tuple[str, ...] = field(default=(), converter=strings)
    """rsync filter rules, ``+ PATTERN`` or ``- PATTERN``, first match wins."""
    delete_excluded: bool = False
    """Excluded nodes on the destination are deleted (rsync --delete-excluded)."""
    rsh: str | None = None
    """The ssh command for remote endpoints (``-e/--rsh``; SPEC 12)."""
    remote_hsync: str | None = None
    """The path of hsync on the far side of a remote endpoint (``--remote-hsync``)."""
    compress: bool = True
    """Compress bulk data on a link to a remote endpoint (``-z``/``--no-compress``)."""
    window: int | None = None
    """Batches a push to a remote endpoint keeps in flight (``--window``; SPEC 12)."""
    batch_ops: int | None = None
    """Ops one batch to a remote endpoint holds at most (``--batch-ops``)."""
    copy_unstable: bool = False
    """A file still changing after the retries of its copy is published as read, with a
    warning, instead of being a problem (``hsync.apply.retry_changed``)."""
    sparse: bool = True
    """Holes of sparse files stay holes on the destination (rsync -S; ``--no-sparse``)."""
    specials: bool = True
    """FIFOs, and device nodes when root, are synced (rsync -D; ``--no-specials``)."""
    one_file_system: bool = False
    """Mount points below either root are not crossed (rsync -x)."""
    owner: bool = True
    """Keep owners (where the destination may chown: root, CAP_CHOWN); rsync -o."""
    group: bool = True
    """Keep groups (likewise); rsync -g."""
    xattrs: bool = True
    """Keep extended attributes: user.*, and trusted.*, security.* as root; rsync -X."""
    acls: bool = True
    """Keep POSIX ACLs, access and default; rsync -A."""
    numeric_ids: bool = False
    """Owners and groups by number, not by name (rsync --numeric-ids)."""


@define
class Report:
    """What a run did (``sync --json`` prints ``to_json()``)."""

    source: str
    destination: str
    counts: dict[str, int] = field(factory=_counts)
    bytes_copied: int = 0
    problems: list[Problem] = field(factory=list)
    skipped: list[tuple[Key, str]] = field(factory=list)
    warnings: list[str] = field(factory=list)
    notices: list[str] = field(factory=list)
    """Warnings about the pair rather than its nodes (a corrupt history set aside): the
    command line prints each on stderr; ``to_json`` lists them first in warnings."""
    withheld: int = 0
    """Destination-only nodes kept because the destination was never synced from this
    source (``--delete`` would remove them)."""
    elapsed: float = 0.0
    dry_run: bool = False
    plan: Plan | None = None
    streamed: dict[str, int] | None = None
    """Ops per kind sent by a streamed initial copy (which has no plan)."""
    scanned: dict[str, int] = field(factory=dict)
    """Nodes seen by the scans, per side (``source``, ``destination``)."""
    compared: dict[str, int] = field(factory=dict)
    """Nodes that were compared one by one, per side: everything, or, on a re-sync
    compared by directory digests, only what differed (and its ancestors)."""
    bytes_examined: dict[str, int] = field(factory=dict)
    """Bytes of the files in the compared nodes, per side (``--stats``)."""
    wire: dict[str, int] | None = None
    """Bytes sent and received on the links to remote endpoints (after compression);
    None when neither endpoint is remote."""
    round_trips: int | None = None
    """The round trips on those links the run waited on, one after the other (the
    ssh login's own not counted: ``Linked.round_trips``); None when neither is remote."""

    @property
    def planned(self) -> dict[str, int]:
        """Ops per kind in the plan (what a dry run would do)."""
        if self.plan is None and self.streamed is not None:
            return dict(self.streamed)
        return self.plan.counts() if self.plan is not None else {}

    @property
    def withheld_line(self) -> str | None:
        """The one line that says what ``--delete`` would have removed, if anything."""
        if not self.withheld:
            return None
        return withheld_line(self.destination, self.source, self.withheld)

    def skipped_lines(self) -> list[str]:
        """One warning per node left out (a socket), and one for all the device nodes
        left out because only root can create them."""
        lines = []
        devices = sorted(k for k, why in self.skipped if why.endswith(NEEDS_ROOT))
        for key, why in self.skipped:
            if not why.endswith(NEEDS_ROOT):
                lines.append(f"{'/'.join(key) or '.'}: {why} skipped")
        if devices:
            n = len(devices)
            lines.append(
                f"{n} device node{'s' if n != 1 else ''} skipped (first: "
                f"{'/'.join(devices[0])}): only root can create device nodes"
            )
        return lines

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.problems else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "counts": self.counts,
            "planned": self.planned,
            "bytes_copied": self.bytes_copied,
            "errors": [p.to_json() for p in self.problems],
            "skipped": [{"path": "/".join(k), "kind": why} for k, why in self.skipped],
            "warnings": [*self.notices, *self.warnings],
            "deletions_withheld": self.withheld,
            "scanned": self.scanned,
            "compared": self.compared,
            "elapsed": round(self.elapsed, 6),
            **({"bytes_on_wire": self.wire} if self.wire is not None else {}),
            **({"round_trips": self.round_trips} if self.round_trips is not None else {}),
        }


def withheld_line(destination: str, source: str, n: int) -> str:
    return (
        f"{destination}: never synced from {source}: {n} destination-only node"
        f"{'s' if n != 1 else ''} kept; --delete would remove {'them' if n != 1 else 'it'}"
    )


DEFAULT = Options()
"""The options of a plain ``hsync sync SRC DST``."""
