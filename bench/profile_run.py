#!/usr/bin/env python3
"""cProfile of one hsync command as a user runs it (the installed package of the running
interpreter): ``python bench/profile_run.py OUT.prof sync SRC DST --state S``. hsync
ends with ``os._exit`` (it skips tearing down a big heap), so the profile is written
there. Read it with ``python -m pstats OUT.prof``."""

from __future__ import annotations

import cProfile
import os
import sys
from typing import NoReturn


def main() -> None:
    out = sys.argv[1]
    sys.argv = ["hsync", *sys.argv[2:]]
    real_exit = os._exit
    profile = cProfile.Profile()

    def exit_after_dump(code: int) -> NoReturn:
        profile.disable()
        profile.dump_stats(out)
        real_exit(code)

    os._exit = exit_after_dump  # type: ignore[assignment]
    profile.enable()
    from hsync.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
