"""The LDAP example, step by step (run by demo.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent.parent / "tests"))
from ldap_fixtures import DST_BASE, SRC_BASE, Slapd, admin  # noqa: E402

hsync = str(Path(sys.executable).parent / "hsync")


def run(*args: str, **extra: str) -> int:
    print("$ hsync", " ".join(args), flush=True)
    return subprocess.run([hsync, *args], env={**env, **extra}).returncode


work = Path(tempfile.mkdtemp(prefix="hsync-ldap-demo-"))
server = Slapd(work / "slapd")
server.start()
env = {**os.environ, "XDG_STATE_HOME": str(work / "state")}
for line in (here / "hsync-ldap.env").read_text().splitlines():
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        env[k] = v.strip('"')
src, dst = server.endpoint(SRC_BASE), server.endpoint(DST_BASE)
try:
    print(f"slapd on {server.url}: source {SRC_BASE}, destination {DST_BASE}\n")
    # 1. seed the source from the LDIF file (an ldif: endpoint as a source; here the
    #    source suffix is the destination, so it is written with the source's admin)
    run("sync", f"ldif:{here / 'directory.ldif'}", src,
        HSYNC_DST_BIND_DN=env["HSYNC_SRC_BIND_DN"],
        HSYNC_DST_BIND_PASSWORD=env["HSYNC_SRC_BIND_PASSWORD"])
    # 2. the plan into the empty destination suffix, then the sync
    run("diff", "--tree", src, dst)
    run("sync", src, dst)
    # 3. another client moves an OU and renames a person on the source
    conn = admin(server, SRC_BASE)
    conn.rename_s(f"ou=Volunteers,ou=People,{SRC_BASE}", "ou=Helpers", f"ou=Groups,{SRC_BASE}", 1)
    conn.rename_s(f"uid=ada,ou=People,{SRC_BASE}", "uid=ada.l", None, 1)
    conn.unbind_s()
    print("\nmoved ou=Volunteers under ou=Groups (as ou=Helpers), renamed uid=ada\n")
    run("diff", src, dst)  # one modrdn per change, with the history of the last sync
    run("sync", src, dst)
    # 4. in sync; export the destination to LDIF (a backup)
    rc = run("diff", src, dst)
    out = work / "backup.ldif"
    run("sync", dst, f"ldif:{out}")
    lines = out.read_text().splitlines()
    print(f"\nbackup of the destination ({len(lines)} lines), first entries:")
    print("\n".join(lines[:16]))
    sys.exit(rc)
finally:
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
