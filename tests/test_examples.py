"""The README's first quick-start command works: the demo plans and runs a sync of the
bundled examples and ends in sync (regression: the first-sync rule kept the example
destination's own files and the demo failed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_and_ends_in_sync() -> None:
    out = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "demo: OK" in out.stdout
