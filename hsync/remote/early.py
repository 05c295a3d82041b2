"""Start the ssh of a remote run first, before anything else is imported.

A remote run's fixed cost is the ssh login and the far side's start-up (its Python,
its imports), then this side's own start-up (the command line's parser, the pipeline's
modules). They do not depend on each other: ``hsync.__main__`` calls ``start`` with the
command line before it imports the parser, so the login and the agent's start-up run
while this process imports the rest. ``transport.Link`` then adopts the process it
would have started (``take``: the same argv, exactly) and sends the handshake.

The command line is read here without its parser, so only what is certain is used: a
command of ``sync``, ``diff``, ``watch``, ``verify``; every option one this module
knows (``VALUE_OPTIONS`` take a value, ``FLAG_OPTIONS`` none: an option it does not
know, and nothing is started); exactly two locations, of which those that are surely
remote (``ssh://``, or ``[user@]host:path`` whose host part has a ``.``, an ``@`` or
brackets, so it cannot be a plugin's URL scheme, or ``localhost``). Anything else is
left to the parser and the ordinary start of the link. A process that is not adopted
(a usage error found later) ends with this one: its stdin closes and the agent ends at
the end of its input. ``HSYNC_NO_EARLY_SSH=1`` turns this off.
"""

from __future__ import annotations

import os
import shlex
import subprocess

COMMANDS = frozenset({"sync", "diff", "watch", "verify"})
VALUE_OPTIONS = frozenset({
    "--batch-ops", "--ca-file", "--debounce", "--dst-bind-dn", "--dst-password-file", "--exclude",
    "--exclude-attr", "--exclude-from", "--filter", "--include", "--log-file",
    "--log-format", "--log-level", "--max-delay", "--max-delete", "--poll-interval",
    "--remote-hsync", "--rescan-interval", "--rsh", "--schema", "--settle",
    "--src-bind-dn", "--src-password-file", "--state", "--status-file",
    "--verify-interval", "--window", "-e",
})  # fmt: skip
FLAG_OPTIONS = frozenset({
    "--acls", "--allow-empty-source", "--checksum", "--compress", "--copy-unstable",
    "--delete", "--delete-excluded", "--dry-run", "--fsync", "--group", "--hard-links",
    "--itemize-changes", "--json", "--no-acls", "--no-compress", "--no-delete",
    "--no-group", "--no-owner", "--no-progress", "--no-sparse", "--no-specials",
    "--no-xattrs", "--numeric-ids", "--one-file-system", "--owner", "--progress",
    "--repair", "--sparse", "--specials", "--starttls", "--stats", "--tree",
    "--verbose", "--wait-lock", "--xattrs", "-A", "-D", "-H", "-S", "-X", "-c", "-g",
    "-i", "-n", "-o", "-v", "-x", "-z", "--debug",
})  # fmt: skip

_started: dict[tuple[str, ...], list[subprocess.Popen[bytes]]] = {}


def remote_command(rsh: str, host: str, user: str | None, port: int | None,
                   remote_hsync: str | None) -> list[str]:
    """The local argv that runs the agent on ``host``: the ssh command (``rsh`` split as
    a shell would), its options for this host, then the remote command, each word of it
    quoted for the remote shell (``ValueError`` for an ``rsh`` that does not split).

    The location's port and user go right after ``ssh`` itself, before the options of
    ``rsh``: ssh takes the first ``-p`` and ``-l`` it is given, so ``ssh://host:2202/x``
    with ``-e "ssh -p 2201"`` (or ``$HSYNC_RSH``) reaches port 2202, the one the
    location names, not another machine behind the same host. A command that is not
    ``ssh`` (a wrapper such as ``sshpass -f FILE ssh``) gets them at its end."""
    argv = shlex.split(rsh)
    mine: list[str] = []
    if port:
        mine += ["-p", str(port)]
    if user:
        mine += ["-l", user]
    at = 1 if argv and os.path.basename(argv[0]) == "ssh" else len(argv)
    argv[at:at] = mine
    remote = [remote_hsync or "hsync", "agent"]
    return [*argv, host, " ".join(shlex.quote(w) for w in remote)]


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """The ssh process of a link (its own session: a Ctrl-C reaches this process, which
    ends the link in order, not ssh)."""
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, start_new_session=True)


def take(argv: list[str]) -> subprocess.Popen[bytes] | None:
    """The process started early for exactly ``argv``, if one was and still runs."""
    procs = _started.get(tuple(argv))
    while procs:
        proc = procs.pop(0)
        if proc.poll() is None:
            return proc
    return None


def _surely_remote(location: str) -> bool:
    if location.startswith("ssh://"):
        return True
    head, sep, _ = location.partition(":")
    if not sep or not head or "/" in head or location.startswith("./"):
        return False
    return head == "localhost" or any(c in head for c in ".@[")


def _parse(args: list[str]) -> tuple[list[str], dict[str, str], bool] | None:
    """The locations, the value options and the compression of a command line; None
    when any of it is not certain."""
    positional: list[str] = []
    values: dict[str, str] = {}
    compress = True
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name in VALUE_OPTIONS:
            if not eq:
                if i >= len(args):
                    return None
                value = args[i]
                i += 1
            values[{"-e": "--rsh"}.get(name, name)] = value
        elif arg in FLAG_OPTIONS:
            if arg in ("-z", "--compress"):
                compress = True
            elif arg == "--no-compress":
                compress = False
        else:
            return None
    return positional, values, compress


def start(argv: list[str]) -> None:
    """Start the ssh of every surely-remote location of the command line ``argv``
    (without the program name), for ``transport.Link`` to adopt."""
    if not argv or argv[0] not in COMMANDS or os.environ.get("HSYNC_NO_EARLY_SSH"):
        return
    parsed = _parse(argv[1:])
    if parsed is None:
        return
    positional, values, _ = parsed
    if len(positional) != 2 or "--help" in argv:
        return
    from . import Reach  # the same defaults as the session's
    from .url import parse

    reach = Reach(rsh=values.get("--rsh"), remote_hsync=values.get("--remote-hsync"))
    for location in positional:
        if not _surely_remote(location):
            continue
        try:
            url = parse(location)
            cmd = remote_command(reach.command(), url.host, url.user, url.port,
                                 reach.remote_hsync)
            proc = spawn(cmd)
        except Exception:  # the ordinary start says what is wrong
            continue
        _started.setdefault(tuple(cmd), []).append(proc)
