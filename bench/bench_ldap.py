#!/usr/bin/env python3
"""LDAP benchmark: hsync against ``ldapadd -c`` on a throwaway slapd (loopback).

Directory: N inetOrgPerson entries (default 10,000) under nested OUs
(``ou=oJ,ou=gI,BASE``: 2 groups x 5 OUs x N/10 people). Scenarios:

  a  initial sync into an empty destination suffix: ``hsync sync`` vs ``ldapadd -c`` of
     the same entries (an LDIF with the destination's base), interleaved per round, each
     on a fresh slapd; ratio hsync/ldapadd per round, median over rounds (target <= 1.3);
  b  incremental: 10 changes on the source (5 modifies, 3 adds, 2 deletes), then
     ``hsync sync`` (target: well under a second);
  c  a subtree move of one OU of N/10 entries on the source, then ``hsync sync``: the ops
     it sends (target: one modrdn) and whether the destination kept the entryUUIDs.

With ``--size`` (the size set: 100,000 entries unless ``--entries`` says otherwise, so
10 OUs of 10,000), each round instead runs, interleaved, on fresh servers:

  A  initial load: ``hsync sync`` into the empty suffix vs ``ldapadd -c`` (paged results:
     the source's search spans N/2000 pages); target <= 1.3;
  N  no-op re-sync right after it (``hsync sync`` again), against a baseline that only
     reads both trees (``ldapsearch`` of the source and of the destination, in turn);
  M  a subtree move of one OU of N/10 entries (one ``modrdn`` on the source), then
     ``hsync sync``: time, the ops it sent (target: one modrdn), entryUUIDs kept;

each with its peak RSS (GNU ``time``'s maximum resident set size of the measured
process; ``/usr/bin/time`` from the ``time`` package).

Every command is timed as a whole process (wall clock), like a user would run it.
Needs slapd, ldap-utils and the LDAP plugin (``bash tests/run.sh`` installs them).
    .venv/bin/python bench/bench_ldap.py [--entries 10000] [--rounds 5]
    .venv/bin/python bench/bench_ldap.py --size [--rounds 3] [--hsync /tmp/venv/bin/hsync]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ldap_fixtures import (
    DST_ADMIN,
    DST_BASE,
    PASSWORD,
    SLAPADD,
    SRC_BASE,
    Slapd,
    uuids,
)

HSYNC: str | None = None
"""``--hsync``: the executable measured (a regular install: see bench/README.md)."""


def hsync_bin() -> str:
    if HSYNC:
        return HSYNC
    here = Path(sys.executable).parent / "hsync"
    return str(here) if here.exists() else "hsync"


def people_ldif(base: str, n: int, *, with_base: bool = False) -> str:
    out = []
    if with_base:
        rdn = base.split(",")[0].split("=")[1]
        out.append(f"dn: {base}\nobjectClass: dcObject\nobjectClass: organization\n"
                   f"dc: {rdn}\no: {rdn}\n")
    per = max(1, n // 10)
    k = 0
    for g in range(2):
        out.append(f"dn: ou=g{g},{base}\nobjectClass: organizationalUnit\nou: g{g}\n")
        for o in range(5):
            ou = f"ou=o{o},ou=g{g},{base}"
            out.append(f"dn: {ou}\nobjectClass: organizationalUnit\nou: o{o}\n")
            for _ in range(per):
                out.append(
                    f"dn: uid=user{k},{ou}\nobjectClass: inetOrgPerson\nuid: user{k}\n"
                    f"cn: User Number {k}\nsn: Number{k}\ngivenName: User\n"
                    f"mail: user{k}@example.com\ntelephoneNumber: +1 555 {k:06d}\n"
                    f"employeeNumber: {k}\ndescription: benchmark person {k}\n"
                )
                k += 1
    return "\n".join(out)


def fresh_server(work: Path, source_ldif: Path) -> Slapd:
    """A new slapd whose source suffix holds the directory (slapadd, offline) and whose
    destination suffix holds only its base entry."""
    server = Slapd(Path(tempfile.mkdtemp(dir=work)))
    subprocess.run([SLAPADD, "-q", "-f", str(server.conf), "-b", SRC_BASE, "-l",
                    str(source_ldif)], check=True, capture_output=True)
    server.start()
    return server


def timed(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {p.stderr[-2000:]}")
    return dt, p.stdout


TIME = shutil.which("time", path="/usr/bin:/bin")


CPU: dict[str, float] = {}
"""The CPU time (user + system, seconds) of the last process ``measured`` ran, by the
``key`` it was given."""


def measured(
    cmd: list[str], env: dict[str, str], stdin: str | None = None, *, key: str = ""
) -> tuple[float, int, str]:
    """``timed``, plus the peak RSS (KiB) of the process, from GNU time (0 without it):
    the measured process is time's child, not the benchmark's, whose own high-water
    mark would be inherited through the fork. Its CPU time goes to ``CPU[key]``."""
    if TIME is None:
        dt, out = timed(cmd, env, stdin)
        return dt, 0, out
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
        dt, out = timed([TIME, "-f", "%U %S %M", "-o", f.name, *cmd], env, stdin)
        text = f.read().strip().splitlines()
    fields = text[-1].split() if text else []
    if len(fields) != 3:
        return dt, 0, out
    CPU[key] = float(fields[0]) + float(fields[1])
    return dt, int(fields[2]), out


def size_set(args: argparse.Namespace) -> None:
    """The size scenario set (A, N, M): see the module's docstring."""
    n = args.entries
    work = Path(tempfile.mkdtemp(prefix="hsync-bench-ldap-size-"))
    source_ldif = work / "source.ldif"
    source_ldif.write_text(people_ldif(SRC_BASE, n))
    dst_ldif = people_ldif(DST_BASE, n)
    pwfile = work / "pw"
    pwfile.write_text(PASSWORD)
    pwfile.chmod(0o600)
    rows: list[dict[str, float]] = []
    moves: list[dict[str, object]] = []
    for r in range(args.rounds):
        row: dict[str, float] = {}
        order = ["ldapadd", "hsync"] if r % 2 == 0 else ["hsync", "ldapadd"]
        for tool in order:
            server = fresh_server(work, source_ldif)
            env = {**os.environ, **server.env(), "XDG_STATE_HOME": str(work / f"state{r}")}
            try:
                if tool == "ldapadd":
                    row["ldapadd"], row["ldapadd_rss"], _ = measured(
                        ["ldapadd", "-x", "-c", "-H", server.url, "-D", DST_ADMIN, "-y",
                         str(pwfile)], env, dst_ldif, key="ldapadd")
                    row["ldapadd_cpu"] = CPU.get("ldapadd", 0.0)
                    continue
                sync = [hsync_bin(), "sync", "--json", "--no-progress",
                        server.endpoint(SRC_BASE), server.endpoint(DST_BASE)]
                row["hsync"], row["hsync_rss"], out = measured(sync, env, key="hsync")
                row["hsync_cpu"] = CPU.get("hsync", 0.0)
                created = json.loads(out)["counts"]["create"]
                if created < n:
                    raise SystemExit(f"initial sync created {created} of {n} entries")
                # N: nothing changed; the baseline reads both trees once
                read = 0.0
                for base, who in ((SRC_BASE, f"cn=admin,{SRC_BASE}"), (DST_BASE, DST_ADMIN)):
                    dt, _ = timed(["ldapsearch", "-x", "-LLL", "-H", server.url, "-D", who,
                                   "-y", str(pwfile), "-b", base, "-E", "pr=2000/noprompt",
                                   "(objectClass=*)", "*", "entryUUID"], env)
                    read += dt
                row["search"] = read
                row["noop"], row["noop_rss"], out = measured(sync, env)
                if sum(json.loads(out)["counts"].values()):
                    raise SystemExit(f"the no-op re-sync changed something: {out[:500]}")
                # M: one OU of `per` entries moved to the other group
                before = uuids(server, DST_BASE)
                conn = _admin(server)
                conn.rename_s(f"ou=o0,ou=g0,{SRC_BASE}", "ou=o0moved", f"ou=g1,{SRC_BASE}", 1)
                conn.unbind_s()
                row["move"], row["move_rss"], out = measured(sync, env)
                after = uuids(server, DST_BASE)
                moved = [k for k in before if k.endswith("ou=o0,ou=g0")]
                kept = sum(
                    1 for k in moved
                    if after.get(k.replace("ou=o0,ou=g0", "ou=o0moved,ou=g1")) == before[k]
                )
                moves.append({"entries": len(moved), "ops": json.loads(out)["counts"],
                              "uuids_kept": kept})
            finally:
                server.stop()
                shutil.rmtree(server.root, ignore_errors=True)
        rows.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()),
              file=sys.stderr)

    def med(k: str) -> float:
        return statistics.median(row[k] for row in rows)

    def mib(k: str) -> str:
        return f"{med(k) / 1024:.0f} MiB" if med(k) else "?"

    ratios = [row["hsync"] / row["ldapadd"] for row in rows]
    noop = [row["noop"] / row["search"] for row in rows]
    ops = moves[-1]["ops"] if moves else {}
    nops = sum(ops.values()) if isinstance(ops, dict) else "?"
    pages = -(-(n + 13) // 2000)  # the people, 12 OUs and the base, 2,000 a page
    print(f"\n{n:,} inetOrgPerson entries ({pages} pages of 2,000), {args.rounds} "
          "interleaved rounds (whole-process wall clock, fresh slapd per run, dbnosync)\n")
    print("| scenario | hsync | peak RSS | baseline | median ratio | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| A initial load into an empty suffix | {med('hsync'):.2f} s | {mib('hsync_rss')} | "
          f"ldapadd -c {med('ldapadd'):.2f} s ({mib('ldapadd_rss')}) | "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | <= 1.3 |")
    print(f"\nA: CPU time (user + system) of the measured process, medians: hsync "
          f"{med('hsync_cpu'):.1f} s, ldapadd -c {med('ldapadd_cpu'):.1f} s\n")
    print(f"| N no-op re-sync | {med('noop'):.2f} s | {mib('noop_rss')} | ldapsearch of both "
          f"trees {med('search'):.2f} s | {statistics.median(noop):.2f} "
          f"({min(noop):.2f}-{max(noop):.2f}) | |")
    kept = [m["uuids_kept"] for m in moves]
    print(f"| M move of an OU of {moves[0]['entries'] if moves else '?'} entries | "
          f"{med('move'):.2f} s | {mib('move_rss')} | | {nops} op(s) {ops}, entryUUIDs kept "
          f"{min(kept) if kept else '?'}/{moves[0]['entries'] if moves else '?'} | one modrdn |")
    if args.out:
        Path(args.out).write_text(json.dumps({"rounds": rows, "moves": moves}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=0,
                    help="entries in the directory (default 10,000; 100,000 with --size)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", action="store_true",
                    help="the size set: initial load, no-op re-sync, move of N/10 entries")
    ap.add_argument("--out", default="", help="also write the figures as JSON here")
    ap.add_argument("--hsync", default=None,
                    help="hsync executable (default: the venv's, else PATH)")
    args = ap.parse_args()
    global HSYNC
    HSYNC = args.hsync
    if args.size:
        args.entries = args.entries or 100_000
        size_set(args)
        return
    args.entries = args.entries or 10_000

    work = Path(tempfile.mkdtemp(prefix="hsync-bench-ldap-"))
    src_body = people_ldif(SRC_BASE, args.entries)
    source_ldif = work / "source.ldif"
    source_ldif.write_text(src_body)
    dst_ldif = people_ldif(DST_BASE, args.entries)
    pwfile = work / "pw"
    pwfile.write_text(PASSWORD)
    pwfile.chmod(0o600)
    per = max(1, args.entries // 10)

    initial: list[dict[str, float]] = []
    incremental: list[float] = []
    live: list[float] = []
    move: dict[str, object] = {}
    for r in range(args.rounds):
        row: dict[str, float] = {}
        order = ["ldapadd", "hsync"] if r % 2 == 0 else ["hsync", "ldapadd"]
        for tool in order:
            server = fresh_server(work, source_ldif)
            env = {**os.environ, **server.env(), "XDG_STATE_HOME": str(work / f"state{r}")}
            try:
                if tool == "ldapadd":
                    row[tool], _ = timed(["ldapadd", "-x", "-c", "-H", server.url, "-D",
                                          DST_ADMIN, "-y", str(pwfile)], env, dst_ldif)
                    continue
                row[tool], _ = timed([hsync_bin(), "sync", server.endpoint(SRC_BASE),
                                      server.endpoint(DST_BASE)], env)
                # b: ten changes on the source, then an incremental sync
                conn = _admin(server)
                for i in range(5):
                    conn.modify_s(_person(i * 7, per), [(2, "description", [b"changed"])])
                for i in range(3):
                    conn.add_s(f"uid=new{i},ou=o1,ou=g1,{SRC_BASE}", [
                        ("objectClass", [b"inetOrgPerson"]), ("uid", [f"new{i}".encode()]),
                        ("cn", [b"New"]), ("sn", [b"Person"])])
                for i in range(2):
                    conn.delete_s(_person(per * 3 + i, per))
                dt, _ = timed([hsync_bin(), "sync", server.endpoint(SRC_BASE),
                               server.endpoint(DST_BASE)], env)
                incremental.append(dt)
                live.append(_live_round(server, env, work / f"status{r}.json", per))
                if r == 0:
                    # c: one OU of `per` entries moved to the other group
                    before = uuids(server, DST_BASE)
                    conn.rename_s(f"ou=o0,ou=g0,{SRC_BASE}", "ou=o0moved",
                                  f"ou=g1,{SRC_BASE}", 1)
                    dt, out = timed([hsync_bin(), "sync", "--json", server.endpoint(SRC_BASE),
                                     server.endpoint(DST_BASE)], env)
                    report = json.loads(out)
                    after = uuids(server, DST_BASE)
                    moved = [k for k in before if k.endswith("ou=o0,ou=g0")]
                    kept = sum(
                        1 for k in moved
                        if after.get(k.replace("ou=o0,ou=g0", "ou=o0moved,ou=g1")) == before[k]
                    )
                    move = {"entries": len(moved), "seconds": dt, "ops": report["counts"],
                            "uuids_kept": kept}
                conn.unbind_s()
            finally:
                server.stop()
        initial.append(row)
        print(f"round {r + 1}: ldapadd {row['ldapadd']:.2f} s, hsync {row['hsync']:.2f} s, "
              f"incremental {incremental[-1]:.3f} s", file=sys.stderr)

    ratios = [row["hsync"] / row["ldapadd"] for row in initial]
    print(f"\n{args.entries:,} inetOrgPerson entries, {args.rounds} rounds "
          "(whole-process wall clock, fresh slapd per run, dbnosync)\n")
    print("| scenario | hsync | baseline | median ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| a initial sync into an empty suffix | "
          f"{statistics.median(r['hsync'] for r in initial):.2f} s | ldapadd -c "
          f"{statistics.median(r['ldapadd'] for r in initial):.2f} s | "
          f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}) "
          "| <= 1.3 |")
    print(f"| b incremental after 10 changes (`hsync sync`) | "
          f"{statistics.median(incremental):.3f} s | | | well under 1 s |")
    print(f"| b' the same 10 changes under `hsync watch` (last change to applied) | "
          f"{statistics.median(live):.3f} s | | | well under 1 s |")
    ops = move.get("ops", {})
    nops = sum(ops.values()) if isinstance(ops, dict) else "?"
    print(f"| c move of an OU of {move.get('entries')} entries | {move.get('seconds', 0):.3f} s,"
          f" {nops} op(s) {ops}, entryUUIDs kept {move.get('uuids_kept')}/"
          f"{move.get('entries')} | | | one modrdn |")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"initial": initial, "ratios": ratios, "incremental": incremental, "live": live,
             "move": move},
            indent=2))


def _live_round(server: Slapd, env: dict[str, str], status: Path, per: int) -> float:
    """Seconds from the last of 10 changes on the source to the moment a running
    ``hsync watch`` (syncrepl-fed, no debounce) has applied all 10."""
    proc = subprocess.Popen(
        [hsync_bin(), "watch", "--debounce", "0", "--status-file", str(status),
         server.endpoint(SRC_BASE), server.endpoint(DST_BASE)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def done() -> int:
        try:
            counts = json.loads(status.read_text())["pairs"][0]["counts"]
        except (OSError, ValueError, KeyError, IndexError):
            return -1
        return sum(counts.values())

    try:
        deadline = time.monotonic() + 120
        while done() < 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        base = done()
        conn = _admin(server)
        for i in range(5):
            conn.modify_s(_person(i * 7 + 1, per), [(2, "description", [b"live"])])
        for i in range(3):
            conn.add_s(f"uid=live{i},ou=o2,ou=g1,{SRC_BASE}", [
                ("objectClass", [b"inetOrgPerson"]), ("uid", [f"live{i}".encode()]),
                ("cn", [b"Live"]), ("sn", [b"Person"])])
        for i in range(2):
            conn.delete_s(_person(per * 4 + i, per))
        t0 = time.monotonic()
        while done() < base + 10 and time.monotonic() - t0 < 60:
            time.sleep(0.002)
        conn.unbind_s()
        return time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)


def _admin(server: Slapd) -> object:
    import ldap

    conn = ldap.initialize(server.url, bytes_mode=False)
    conn.simple_bind_s(f"cn=admin,{SRC_BASE}", PASSWORD)
    return conn


def _person(k: int, per: int) -> str:
    g, o = divmod(k // per, 5)
    return f"uid=user{k},ou=o{o},ou=g{g},{SRC_BASE}"


if __name__ == "__main__":
    main()
