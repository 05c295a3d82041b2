"""The command line (typer). It only parses and prints; the work is in the pipeline
(``hsync.oneshot`` for ``sync`` and ``diff``, ``hsync.live`` for ``watch``).

The hot commands (``sync``, ``diff``, ``verify``, ``agent``) are declared here and run
by ``hsync.commands``; ``hsync.fastcli`` parses their command lines without importing
typer when it understands them whole, from a table derived from this module
(``hsync/_argtable.py``, checked by ``tests/test_fastcli.py``), and hands anything else
here (``--help``, a mistake, another command), so every message is typer's.

Exit codes (SPEC section 9): 0 success / in sync; 1 the trees differ; 2 bad usage or
bad input; 3 partial: some nodes failed, the rest was synced.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from .commands import (
    _credentials,
    _err,
    _filtered,
    _human_bytes,
    _meta,
    _options,
    _state,
    end_process,
    guarded,
    run,
    start_process,
)
from .errors import EXIT_DIFFER, EXIT_OK, EXIT_USAGE, HsyncError
from .itemize import escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Keep a destination tree equal to a source tree, in an order that keeps the "
    "hierarchy: parents before children, children leave before parents, moves as renames.",
)

F = TypeVar("F", bound=Callable[..., Any])


def _guard(fn: F) -> F:
    """One clear line on stderr and the SPEC's exit code; a traceback only with --debug
    (``hsync.commands.guarded``); a usage mistake the command finds itself
    (``typer.BadParameter``) is one line too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        def call() -> int:
            try:
                fn(*args, **kwargs)
            except typer.Exit as e:
                return e.exit_code
            except ClickException as e:
                _err(f"error: {e.format_message()}")
                return EXIT_USAGE
            return EXIT_OK

        raise typer.Exit(guarded(call))

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"hsync {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and check every plan."),
    _show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    _state["debug"] = debug


IncludeOpt = typer.Option(
    None, "--include", metavar="PATTERN",
    help="Keep what PATTERN matches whatever --exclude says (rsync's '+ PATTERN'; "
    "tried before --exclude). Repeatable.",
)
FilterOpt = typer.Option(
    None, "--filter", metavar="RULE",
    help="rsync filter rule, '+ PATTERN' or '- PATTERN'; the first rule that matches "
    "decides (after --include, before --exclude). Repeatable.",
)
DeleteExcludedOpt = typer.Option(
    False, "--delete-excluded", help="Delete excluded nodes on the destination (rsync)."
)
CopyUnstableOpt = typer.Option(
    False, "--copy-unstable",
    help="A file still changing after a few tries is copied as read, with a warning "
    "(default: reported, exit 3).",
)
SparseOpt = typer.Option(
    True, "--sparse/--no-sparse", "-S",
    help="Holes of sparse files stay holes (rsync -S; default on).",
)
SpecialsOpt = typer.Option(
    True, "--specials/--no-specials", "-D",
    help="Sync FIFOs, and device nodes when root (rsync -D; default on).",
)
OneFsOpt = typer.Option(
    False, "--one-file-system", "-x",
    help="Do not cross mount points: a mount point is synced as an empty directory "
    "(rsync -x).",
)


ExcludeOpt = typer.Option(
    None,
    "--exclude",
    metavar="PATTERN",
    help="Gitignore-style pattern; excluded nodes are neither copied nor deleted. Repeatable.",
)
ExcludeFromOpt = typer.Option(
    None, "--exclude-from", metavar="FILE", help="File of exclude patterns."
)
ExcludeAttrOpt = typer.Option(
    None,
    "--exclude-attr",
    metavar="NAME",
    help="LDAP attribute left out of the comparison (never read, written or deleted). "
    "Repeatable.",
)
RshOpt = typer.Option(
    None, "--rsh", "-e", metavar="CMD",
    help="The ssh command for remote trees (host:path, ssh://host/path), as rsync's -e; "
    "default $HSYNC_RSH, else ssh.",
)
RemoteHsyncOpt = typer.Option(
    None, "--remote-hsync", metavar="PATH",
    help="hsync on the remote host (rsync's --rsync-path); default: hsync on its PATH.",
)
CompressOpt = typer.Option(
    True, "--compress/--no-compress", "-z",
    help="Compress data on the link to a remote tree (zstd; on by default).",
)
WindowOpt = typer.Option(
    None, "--window", min=1, metavar="N",
    help="Batches a push to a remote tree keeps in flight, unacknowledged (default 4).",
)
BatchOpsOpt = typer.Option(
    None, "--batch-ops", min=1, metavar="N",
    help="Ops one batch to a remote tree holds at most (default 2000).",
)
SchemaOpt = typer.Option(
    None,
    "--schema",
    metavar="FILE",
    help="LDAP schema file (OpenLDAP .schema or LDIF) by which an ldif: endpoint compares "
    "and rebases values when its peer is no server (with a server, the server's schema "
    "is used). Repeatable.",
)
StateOpt = typer.Option(
    None,
    "--state",
    metavar="PATH",
    help="History file (SQLite). Default: $XDG_STATE_HOME/hsync/history.sqlite",
)


SrcBindDnOpt = typer.Option(
    None, "--src-bind-dn", metavar="DN",
    help="LDAP: the source's bind DN (default: HSYNC_SRC_BIND_DN, else HSYNC_BIND_DN).",
)
DstBindDnOpt = typer.Option(
    None, "--dst-bind-dn", metavar="DN",
    help="LDAP: the destination's bind DN (default: HSYNC_DST_BIND_DN, else HSYNC_BIND_DN).",
)
SrcPasswordFileOpt = typer.Option(
    None, "--src-password-file", metavar="FILE",
    help="LDAP: the source's bind password, read from FILE (mode 0600; its trailing "
    "newline is not part of it).",
)
DstPasswordFileOpt = typer.Option(
    None, "--dst-password-file", metavar="FILE",
    help="LDAP: the destination's bind password, read from FILE (mode 0600).",
)
CaFileOpt = typer.Option(
    None, "--ca-file", metavar="FILE",
    help="LDAP over TLS: the CA certificates (PEM) the servers' certificates are checked "
    "against, for both sides (default: HSYNC_LDAP_CACERT, else the system's).",
)
StartTlsOpt = typer.Option(
    False, "--starttls",
    help="LDAP: StartTLS on every ldap:// endpoint (ldaps:// is TLS already).",
)


# metadata kept (rsync -a's -o -g, and -X -A): on by default; rsync's spellings accepted
OwnerOpt = typer.Option(
    True, "--owner/--no-owner", "-o",
    help="Keep owners, by name unless --numeric-ids (where the destination may chown).",
)
GroupOpt = typer.Option(True, "--group/--no-group", "-g", help="Keep groups (likewise).")
XattrsOpt = typer.Option(
    True, "--xattrs/--no-xattrs", "-X",
    help="Keep extended attributes (user.*; trusted.*, security.* as root).",
)
AclsOpt = typer.Option(True, "--acls/--no-acls", "-A", help="Keep POSIX ACLs.")
NumericIdsOpt = typer.Option(
    False, "--numeric-ids", help="Owners and groups by number, not by name."
)


WaitLockOpt = typer.Option(
    False, "--wait-lock",
    help="Wait while another run syncs the same pair (default: exit 2 naming its pid).",
)


@app.command()
def sync(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(
        ..., metavar="DST", help="Destination tree; created when missing."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Print the plan, change nothing."),
    delete: bool | None = typer.Option(
        None, "--delete/--no-delete",
        help="Delete destination-only nodes, even in a destination never synced from SRC "
        "/ never delete them. Default: delete once the pair was synced.",
    ),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare content by hash."),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    include: list[str] = IncludeOpt,
    filter_rule: list[str] = FilterOpt,
    delete_excluded: bool = DeleteExcludedOpt,
    copy_unstable: bool = CopyUnstableOpt,
    sparse: bool = SparseOpt,
    specials: bool = SpecialsOpt,
    one_file_system: bool = OneFsOpt,
    exclude_attr: list[str] = ExcludeAttrOpt,
    schema: list[str] = SchemaOpt,
    max_delete: int | None = typer.Option(
        None,
        "--max-delete",
        min=0,
        metavar="N",
        help="Delete nothing when more than N deletions are due.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    window: int | None = WindowOpt,
    batch_ops: int | None = BatchOpsOpt,
    wait_lock: bool = WaitLockOpt,
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."
    ),
    allow_empty_source: bool = typer.Option(
        False, "--allow-empty-source", help="Let an empty source empty the destination."
    ),
    fsync: bool = typer.Option(
        False, "--fsync", help="fsync every file (default: one syncfs per batch)."
    ),
    hard_links: bool = typer.Option(
        False, "--hard-links", "-H", help="Keep hard-linked source files linked (rsync -H)."
    ),
    itemize: bool = typer.Option(
        False, "--itemize-changes", "-i", help="Print one line per applied op."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="The same as -i."),
    log_file: str | None = typer.Option(
        None, "--log-file", metavar="FILE",
        help="Append each applied op, with a timestamp, to FILE.",
    ),
    stats: bool = typer.Option(False, "--stats", help="Print a summary of the run (rsync's)."),
    src_bind_dn: str | None = SrcBindDnOpt,
    src_password_file: str | None = SrcPasswordFileOpt,
    dst_bind_dn: str | None = DstBindDnOpt,
    dst_password_file: str | None = DstPasswordFileOpt,
    ca_file: str | None = CaFileOpt,
    starttls: bool = StartTlsOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Make DST equal to SRC (SRC's contents go into DST, like rsync SRC/ DST/)."""
    raise typer.Exit(run("sync", locals()))


@app.command()
def diff(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination tree."),
    json_out: bool = typer.Option(False, "--json", help="Print the ordered plan as JSON."),
    tree: bool = typer.Option(False, "--tree", help="Render the plan as a tree."),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare content by hash."),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    include: list[str] = IncludeOpt,
    filter_rule: list[str] = FilterOpt,
    delete_excluded: bool = DeleteExcludedOpt,
    exclude_attr: list[str] = ExcludeAttrOpt,
    schema: list[str] = SchemaOpt,
    no_delete: bool = typer.Option(False, "--no-delete", help="Plan as sync --no-delete would."),
    hard_links: bool = typer.Option(
        False, "--hard-links", "-H", help="Plan as sync -H would (hard links kept)."
    ),
    specials: bool = SpecialsOpt,
    one_file_system: bool = OneFsOpt,
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    src_bind_dn: str | None = SrcBindDnOpt,
    src_password_file: str | None = SrcPasswordFileOpt,
    dst_bind_dn: str | None = DstBindDnOpt,
    dst_password_file: str | None = DstPasswordFileOpt,
    ca_file: str | None = CaFileOpt,
    starttls: bool = StartTlsOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Print the plan that would make DST equal to SRC. Exit 0 in sync, 1 differ."""
    raise typer.Exit(run("diff", locals()))


LogFormatOpt = typer.Option("text", "--log-format", help="Log lines as text or json.")
LogLevelOpt = typer.Option("info", "--log-level", help="debug, info, warning or error.")


@app.command()
@_guard
def watch(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination tree; created when missing."),
    debounce: float = typer.Option(
        100, "--debounce", min=0, metavar="MS", help="Quiet period before a round (ms)."
    ),
    max_delay: float = typer.Option(
        1000, "--max-delay", min=0, metavar="MS",
        help="A round starts at the latest this long after the first change (ms).",
    ),
    settle: float = typer.Option(
        2, "--settle", min=0, metavar="SECONDS",
        help="A file still open for writing is copied once closed, or once quiet this long.",
    ),
    status_file: str | None = typer.Option(
        None, "--status-file", metavar="PATH", help="JSON status, rewritten every round."
    ),
    rescan_interval: float | None = typer.Option(
        None, "--rescan-interval", min=0, metavar="SECONDS",
        help="Full comparison this often, to repair changes made by others (default off).",
    ),
    poll_interval: float = typer.Option(
        10, "--poll-interval", min=0.1, metavar="SECONDS",
        help="Rescan period of directories that could not be watched.",
    ),
    verify_interval: float | None = typer.Option(
        None, "--verify-interval", min=0, metavar="SECONDS",
        help="Content-level verify this often; differences are repaired (default off).",
    ),
    delete: bool | None = typer.Option(
        None, "--delete/--no-delete",
        help="Delete destination-only nodes, even in a destination never synced from SRC "
        "/ never delete them. Default: delete once the pair was synced.",
    ),
    checksum: bool = typer.Option(False, "--checksum", "-c", help="Compare content by hash."),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    include: list[str] = IncludeOpt,
    filter_rule: list[str] = FilterOpt,
    delete_excluded: bool = DeleteExcludedOpt,
    exclude_attr: list[str] = ExcludeAttrOpt,
    schema: list[str] = SchemaOpt,
    max_delete: int | None = typer.Option(
        None, "--max-delete", min=0, metavar="N",
        help="Delete nothing in a round when more than N deletions are due.",
    ),
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    wait_lock: bool = WaitLockOpt,
    allow_empty_source: bool = typer.Option(
        False, "--allow-empty-source", help="Let an empty source empty the destination."
    ),
    fsync: bool = typer.Option(False, "--fsync", help="fsync every file."),
    hard_links: bool = typer.Option(
        False, "--hard-links", "-H", help="Keep hard-linked source files linked."
    ),
    sparse: bool = SparseOpt,
    specials: bool = SpecialsOpt,
    one_file_system: bool = OneFsOpt,
    log_format: str = LogFormatOpt,
    log_level: str = LogLevelOpt,
    verbose: bool = typer.Option(
        False, "--verbose", "-v",
        help="Log every op of the initial copy (else its first 100, progress, a summary).",
    ),
    src_bind_dn: str | None = SrcBindDnOpt,
    src_password_file: str | None = SrcPasswordFileOpt,
    dst_bind_dn: str | None = DstBindDnOpt,
    dst_password_file: str | None = DstPasswordFileOpt,
    ca_file: str | None = CaFileOpt,
    starttls: bool = StartTlsOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Keep DST equal to SRC until stopped (SIGTERM/SIGINT): a full comparison, then
    only what changes."""
    from .daemon import PairConfig, Supervisor, serve, setup_logging
    from .live import WatchOptions

    creds = _credentials(src, dst, src_bind_dn, src_password_file, dst_bind_dn,
                         dst_password_file, ca_file, starttls)

    _log_setup(setup_logging, log_format, log_level)
    opts = _options(
        rsh=rsh, remote_hsync=remote_hsync, compress=compress,
        delete=delete, checksum=checksum, exclude=exclude, exclude_from=exclude_from,
        exclude_attr=exclude_attr, max_delete=max_delete, state=state,
        allow_empty_source=allow_empty_source, fsync=fsync,
        hard_links=hard_links, wait_lock=wait_lock, schema=schema,
        **_meta(owner, group, xattrs, acls, numeric_ids),
    )
    opts = _filtered(opts, include, filter_rule, delete_excluded, sparse=sparse,
                     specials=specials, one_file_system=one_file_system)
    wopts = WatchOptions(
        debounce=debounce / 1000, max_delay=max_delay / 1000, settle=settle,
        rescan_interval=rescan_interval or None, poll_interval=poll_interval,
        verify_interval=verify_interval or None, verbose=verbose,
    )
    _check_endpoints(src, dst, creds, opts)
    sup = Supervisor((PairConfig(src, src, dst, opts, wopts, creds),), status_file, once=True)
    raise typer.Exit(serve(sup, debug=_state["debug"]))


@app.command()
@_guard
def daemon(
    config: str = typer.Option(..., "--config", metavar="FILE", help="hsync.toml: the pairs."),
    check: bool = typer.Option(False, "--check", help="Check the config and exit."),
    log_format: str | None = typer.Option(None, "--log-format", help="text or json."),
    log_level: str | None = typer.Option(None, "--log-level", help="Log level."),
) -> None:
    """Keep several pairs in sync, as the config file says; SIGHUP reloads it."""
    from .daemon import Supervisor, load_config, serve, setup_logging
    from .daemon import log as daemon_log

    cfg = load_config(config, debug=_state["debug"])
    if check:
        for p in cfg.pairs:
            print(f"{p.name}: {p.source} -> {p.destination}")
        for line in cfg.warnings:
            _err(f"warning: {line}")
        raise typer.Exit(0)
    _log_setup(setup_logging, log_format or cfg.log_format, log_level or cfg.log_level)
    for line in cfg.warnings:
        daemon_log.warning("%s", line)
    sup = Supervisor(cfg.pairs, cfg.status_file)
    raise typer.Exit(serve(sup, config, debug=_state["debug"]))


@app.command()
@_guard
def status(
    status_file: str = typer.Option(
        ..., "--status-file", metavar="PATH", help="The file a watch or daemon writes."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the status file as it is."),
) -> None:
    """Show what a running watch or daemon is doing. Exit 0 all well, 1 a pair is in
    error or waiting, or the process is not running."""
    try:
        with open(status_file, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise HsyncError(f"{status_file}: cannot read the status file: {e.strerror}") from None
    except ValueError as e:
        raise HsyncError(f"{status_file}: not a status file: {e}") from None
    alive = _pid_alive(doc.get("pid"))
    if json_out:
        print(json.dumps({**doc, "running": alive}, indent=1))
    else:
        print(f"hsync pid {doc.get('pid')} {'running' if alive else 'NOT RUNNING'}, "
              f"started {doc.get('started_at')}, status written {doc.get('written_at')}")
        for p in doc.get("pairs", []):
            c = p.get("counts", {})
            print(f"{escape(str(p.get('name')))}: {p.get('state')}  "
                  f"{escape(str(p.get('source')))} -> {escape(str(p.get('destination')))}")
            last = ("no round yet" if p.get("last_round_at") is None else
                    f"last round {p.get('last_round_at')} ({p.get('last_round_seconds')} s, "
                    f"lag {p.get('last_lag_seconds')} s)")
            print(f"  {last}; rounds {p.get('rounds')}, full comparisons "
                  f"{p.get('full_comparisons')}, quick passes {p.get('quick_passes', 0)}, "
                  f"restarts {p.get('restarts')}")
            print(f"  pending {p.get('pending')}; {c.get('create', 0)} created, "
                  f"{c.get('update', 0)} updated, {c.get('move', 0)} moved, "
                  f"{c.get('delete', 0)} deleted; {_human_bytes(p.get('bytes_copied', 0))} copied; "
                  f"{p.get('problems', 0)} problem(s)")
            if p.get("link"):
                print(f"  link {p['link']} since {p.get('link_since')}")
            for k, why in (p.get("unwatched") or {}).items():
                print(f"  not watched (polled): {escape(k or '.')}: {escape(why)}")
            if p.get("last_error"):
                print(f"  last error: {escape(p['last_error'])}")
    bad = not alive or any(p.get("state") in ("error", "waiting", "reconnecting")
                           for p in doc.get("pairs", []))
    raise typer.Exit(EXIT_DIFFER if bad else EXIT_OK)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_setup(setup: Callable[[str, str], None], fmt: str, level: str) -> None:
    if fmt not in ("text", "json"):
        raise typer.BadParameter("--log-format must be text or json")
    import logging

    if level.upper() not in logging.getLevelNamesMapping():
        raise typer.BadParameter(f"unknown --log-level {level!r}")
    setup(fmt, "debug" if _state["debug"] else level)


def _check_endpoints(src: str, dst: str, credentials: Any = (None, None),
                     opts: Any = None) -> None:
    """The checks of SPEC section 8 before any thread starts: a bad pair is one line
    and exit 2, like ``sync``."""
    from .options import DEFAULT
    from .session import PairSession

    PairSession(src, dst, opts if opts is not None else DEFAULT, history=False,
                credentials=credentials).close()


@app.command(hidden=True)
def agent(
    restrict: str | None = typer.Option(
        None, "--restrict", metavar="ROOT",
        help="Serve only the tree at ROOT (for command= in authorized_keys).",
    ),
) -> None:
    """The far side of a remote tree: started by hsync over ssh, speaks on stdin/stdout."""
    raise typer.Exit(run("agent", locals()))


@app.command()
def verify(
    src: str = typer.Argument(..., metavar="SRC", help="Source tree (path or URL)."),
    dst: str = typer.Argument(..., metavar="DST", help="Destination tree."),
    json_out: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    repair: bool = typer.Option(
        False, "--repair", help="Fix the differences found (a checksum sync)."
    ),
    settle: float = typer.Option(
        1.0, "--settle", min=0.0, metavar="SECONDS",
        help="Wait this long before re-checking a mismatch (changes in flight settle).",
    ),
    exclude: list[str] = ExcludeOpt,
    exclude_from: list[str] = ExcludeFromOpt,
    state: str | None = StateOpt,
    rsh: str | None = RshOpt,
    remote_hsync: str | None = RemoteHsyncOpt,
    compress: bool = CompressOpt,
    owner: bool = OwnerOpt,
    group: bool = GroupOpt,
    xattrs: bool = XattrsOpt,
    acls: bool = AclsOpt,
    numeric_ids: bool = NumericIdsOpt,
) -> None:
    """Compare SRC and DST content and all (xxhash). Exit 0 consistent, 1 differences."""
    raise typer.Exit(run("verify", locals()))


def main() -> None:
    start_process()
    os.environ.setdefault("TYPER_USE_RICH", "0")
    end_process(_run_app)


def _run_app() -> int:
    try:
        rv = app(prog_name="hsync", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except NoArgsIsHelpError as e:
        e.show()
        return EXIT_USAGE
    except ClickException as e:
        # a usage mistake found while parsing: one line naming it, not click's
        # three-line usage block
        ctx = e.ctx if isinstance(e, UsageError) else None
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _err(f"error: {e.format_message()}{hint}")
        return EXIT_USAGE
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


if __name__ == "__main__":
    main()
