#!/usr/bin/env python3
"""Delta transfer: signature size, delta size and CPU time per phase, per technique.

    python bench/bench_delta.py [--rounds 3] [--size-mib 1024] [--workdir DIR]
                                [--methods librsync,cdc] [--scenarios append,scattered,rewrite]

Imports `hsync.delta` directly (run it with the python of a REGULAR install of hsync:
`python3 -m venv /tmp/venv-bd && /tmp/venv-bd/bin/pip install . fastcdc`), no CLI.
The receiver and the sender run in this one process, one after the other, with the
files in the page cache; "bytes on the link" is signature + delta (+ the 24-byte
trailer hsync adds), before the transport's compression. Each phase's CPU time is the
process's user+system time (`time.process_time`); wall time is printed too.

Methods:
- `librsync`: `hsync.delta` (the rsync algorithm in librsync 2.x through ctypes,
  block = sqrt(size), smallest safe strong sum, XXH3-128 whole-file check).
- `cdc`: content-defined chunks (fastcdc's compiled core over an mmap, average 64 KiB,
  min 16 KiB, max 256 KiB) named by XXH3-128: the signature is (digest, length) per
  chunk of the old file, the delta is copy (offset, length) for a chunk the old file
  has and literal bytes otherwise, serialised as 1-byte tag + fixed-width integers.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MiB = 1024 * 1024


# ---------------------------------------------------------------------------- methods

class Method:
    name = ""

    def signature(self, old: Path) -> bytes:
        raise NotImplementedError

    def delta(self, sig: bytes, new: Path, out: Path) -> int:
        """Write the delta to `out`; return the bytes that would cross the link."""
        raise NotImplementedError

    def patch(self, old: Path, delta: Path, out: Path) -> None:
        raise NotImplementedError


class Librsync(Method):
    name = "librsync"

    def __init__(self) -> None:
        from hsync import delta

        self.d = delta
        self.trailer: object = None

    def signature(self, old: Path) -> bytes:
        fd = os.open(old, os.O_RDONLY)
        try:
            return b"".join(self.d.signature(fd))
        finally:
            os.close(fd)

    def delta(self, sig: bytes, new: Path, out: Path) -> int:
        fd = os.open(new, os.O_RDONLY)
        n = 0
        try:
            with open(out, "wb") as f:
                stream = self.d.delta([sig], fd)
                for chunk in stream:
                    f.write(chunk)
                    n += len(chunk)
        finally:
            os.close(fd)
        self.trailer = stream.trailer()
        return n + 24  # size (8) + digest (16) after the chunks

    def patch(self, old: Path, delta: Path, out: Path) -> None:
        bfd = os.open(old, os.O_RDONLY)
        ofd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with open(delta, "rb") as f:
                got = self.d.patch(bfd, iter(lambda: f.read(MiB), b""), ofd)
        finally:
            os.close(bfd)
            os.close(ofd)
        if got != self.trailer:
            raise SystemExit("librsync: the patched file does not match the trailer")


class Cdc(Method):
    name = "cdc"
    AVG, MIN, MAX = 64 * 1024, 16 * 1024, 256 * 1024

    def __init__(self) -> None:
        import xxhash
        from fastcdc import fastcdc_cy  # the compiled core (fails without it)

        self.chunker = fastcdc_cy.fastcdc_cy
        self.h = xxhash.xxh3_128_digest

    def _chunks(self, path: Path) -> Iterator[tuple[int, int, bytes]]:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    for c in self.chunker(view, self.MIN, self.AVG, self.MAX):
                        yield c.offset, c.length, self.h(view[c.offset:c.offset + c.length])
                finally:
                    view.release()

    def signature(self, old: Path) -> bytes:
        return b"".join(d + struct.pack("<I", n) for _, n, d in self._chunks(old))

    def delta(self, sig: bytes, new: Path, out: Path) -> int:
        where: dict[bytes, tuple[int, int]] = {}
        offset = 0
        for i in range(0, len(sig), 20):
            digest, (length,) = sig[i:i + 16], struct.unpack("<I", sig[i + 16:i + 20])
            where.setdefault(digest, (offset, length))
            offset += length
        n = 0
        with open(new, "rb") as src, open(out, "wb") as f:
            for off, length, digest in self._chunks(new):
                hit = where.get(digest)
                if hit is not None and hit[1] == length:
                    rec = b"C" + struct.pack("<QI", hit[0], length)
                else:
                    src.seek(off)
                    rec = b"L" + struct.pack("<I", length) + src.read(length)
                f.write(rec)
                n += len(rec)
        return n + 24

    def patch(self, old: Path, delta: Path, out: Path) -> None:
        with open(old, "rb") as base, open(delta, "rb") as d, open(out, "wb") as o:
            while tag := d.read(1):
                if tag == b"C":
                    off, length = struct.unpack("<QI", d.read(12))
                    o.write(os.pread(base.fileno(), length, off))
                else:
                    (length,) = struct.unpack("<I", d.read(4))
                    o.write(d.read(length))


METHODS: dict[str, Callable[[], Method]] = {"librsync": Librsync, "cdc": Cdc}


# -------------------------------------------------------------------------- scenarios

def _random_file(path: Path, size: int, rng: random.Random) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def make_scenarios(work: Path, size: int, seed: int) -> dict[str, tuple[Path, Path]]:
    """Old and new file per scenario; cached by size and seed."""
    rng = random.Random(seed)
    tag = f"{size // MiB}m-s{seed}"
    old = work / f"old-{tag}"
    append, scattered = work / f"append-{tag}", work / f"scattered-{tag}"
    rold, rnew = work / f"rewrite-old-{tag}", work / f"rewrite-new-{tag}"
    if not all(p.exists() for p in (old, append, scattered, rold, rnew)):
        print(f"generating files in {work} ...", file=sys.stderr)
        _random_file(old, size, rng)
        shutil.copyfile(old, append)
        with open(append, "ab") as f:
            f.write(rng.randbytes(MiB))
        shutil.copyfile(old, scattered)
        with open(scattered, "r+b") as f:
            for _ in range(10):
                f.seek(rng.randrange(0, size - 4096))
                f.write(rng.randbytes(4096))
        small = min(size, 100 * MiB)
        _random_file(rold, small, rng)
        _random_file(rnew, small, rng)
    return {"append": (old, append), "scattered": (old, scattered), "rewrite": (rold, rnew)}


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 * MiB), fb.read(16 * MiB)
            if x != y:
                return False
            if not x:
                return True


def run_once(method: Method, old: Path, new: Path, work: Path) -> dict[str, float]:
    dpath, opath = work / f"delta.{method.name}", work / f"out.{method.name}"
    res: dict[str, float] = {}
    c0, w0 = time.process_time(), time.perf_counter()
    sig = method.signature(old)
    c1, w1 = time.process_time(), time.perf_counter()
    res["delta_bytes"] = method.delta(sig, new, dpath)
    c2, w2 = time.process_time(), time.perf_counter()
    method.patch(old, dpath, opath)
    c3, w3 = time.process_time(), time.perf_counter()
    if not _same(opath, new):
        raise SystemExit(f"{method.name}: the patched file differs from the new one")
    res.update(sig_bytes=len(sig), sig_cpu=c1 - c0, delta_cpu=c2 - c1, patch_cpu=c3 - c2,
               sig_wall=w1 - w0, delta_wall=w2 - w1, patch_wall=w3 - w2)
    dpath.unlink()
    opath.unlink()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024, help="old file of the first two")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hsync-bench-delta"))
    ap.add_argument("--methods", default="librsync,cdc")
    ap.add_argument("--scenarios", default="append,scattered,rewrite")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import hsync

    print(f"hsync from {Path(hsync.__file__).parent}", file=sys.stderr)
    methods = [METHODS[m]() for m in args.methods.split(",")]
    files = make_scenarios(args.workdir, args.size_mib * MiB, args.seed)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        order = methods if rnd % 2 == 0 else methods[::-1]  # interleaved, alternating
        for scen in args.scenarios.split(","):
            old, new = files[scen]
            for m in order:
                r = run_once(m, old, new, args.workdir)
                results.setdefault((scen, m.name), []).append(r)
                print(f"round {rnd + 1} {scen:9} {m.name:8} "
                      f"sig {r['sig_bytes']:>10,} delta {r['delta_bytes']:>11,} "
                      f"cpu {r['sig_cpu']:.2f}/{r['delta_cpu']:.2f}/{r['patch_cpu']:.2f}s",
                      file=sys.stderr, flush=True)
    print(f"\nmedians of {args.rounds} rounds; CPU seconds (wall in brackets)\n")
    print("| scenario | method | signature | delta | on the link "
          "| signature s | delta s | patch s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (scen, name), rs in results.items():
        def med(k: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(r[k] for r in rs)

        sig, dl = med("sig_bytes"), med("delta_bytes")
        print(f"| {scen} | {name} | {sig / 1024:,.0f} KiB | {dl / 1024:,.0f} KiB | "
              f"{(sig + dl) / MiB:,.2f} MiB | "
              + " | ".join(f"{med(p + '_cpu'):.2f} ({med(p + '_wall'):.2f})"
                           for p in ("sig", "delta", "patch")) + " |")


if __name__ == "__main__":
    main()
