"""The ``hsync`` command (and ``python -m hsync``).

``hsync --version`` is answered here, and the command lines of the hot commands
(``sync``, ``diff``, ``verify``, ``agent``) are parsed by ``hsync.fastcli`` when it
understands them whole: typer, the command line's framework, costs more to import
than the interpreter's own start-up. Everything else goes to ``hsync.cli`` (typer).
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv == ["--version"]:
        from . import __version__

        sys.stdout.write(f"hsync {__version__}\n")
        return
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
