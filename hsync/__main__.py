"""The ``hsync`` command (and ``python -m hsync``).

``hsync --version`` is answered here, and the command lines of the hot commands
(``sync``, ``diff``, ``verify``, ``agent``) are parsed by ``hsync.fastcli`` when it
understands them whole: typer, the command line's framework, costs more to import
than the interpreter's own start-up. ``hsync agent`` (the far side of a remote tree,
started by every remote run: its start-up is on the critical path of each one) is
served before that, and a remote run starts its ssh before anything else is imported
(``hsync.remote.early``). Everything else goes to ``hsync.cli`` (typer).
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from . import __version__

        sys.stdout.write(f"hsync {__version__}\n")
        return
    if argv[:1] == ["agent"]:  # started over ssh by every remote run: no typer
        from .remote.agent import main as agent_main

        code = agent_main(argv[1:])
        if code is not None:
            sys.exit(code)
    # what commands.start_process sets, before the imports: they allocate tens of
    # thousands of objects and free almost none, and the default thresholds collected
    # them 4 times (1-4 ms of a small sync, a full collection among them)
    import gc

    gc.set_threshold(100_000, 50, 100)
    if argv[:1] and argv[0] in ("sync", "diff", "watch", "verify") and any(
        ":" in a for a in argv[1:]
    ):  # the ssh login and the far side's start-up overlap this side's imports
        from .remote.early import start

        start(argv)
    from .fastcli import parse

    parsed = parse(argv)
    if parsed is None:
        from .cli import main as cli_main

        cli_main()
        return
    from . import commands

    command, params, debug = parsed
    commands._state["debug"] = debug
    commands.start_process()
    commands.end_process(lambda: commands.run(command, params))


if __name__ == "__main__":
    main()
