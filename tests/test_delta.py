"""Delta transfer (hsync.delta): real files, the receiver's and the sender's halves.

The receiver signs its old file, the sender answers with a delta and a trailer, the
receiver patches into a new file and checks the trailer. Every round trip below goes
through the bytes that would cross the link (joined `bytes`), as a remote apply does.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsync import delta

MiB = 1024 * 1024


class Trip:
    """One transfer: what crossed the link, and what the receiver ended with."""

    def __init__(self, sig: bytes, dlt: bytes, sent: delta.Trailer, got: delta.Trailer,
                 out: Path) -> None:
        self.sig, self.delta, self.sent, self.got, self.out = sig, dlt, sent, got, out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def transfer(old: Path, new: Path, out: Path, *, block_len: int = 0) -> Trip:
    """Receiver: signature(old); sender: delta(sig, new); receiver: patch(old) -> out."""
    ofd = os.open(old, os.O_RDONLY)
    nfd = os.open(new, os.O_RDONLY)
    outfd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        sig = b"".join(delta.signature(ofd, block_len=block_len))
        stream = delta.delta([sig], nfd)
        dlt = b"".join(stream)
        got = delta.patch(ofd, [dlt], outfd)
        return Trip(sig, dlt, stream.trailer(), got, out)
    finally:
        for fd in (ofd, nfd, outfd):
            os.close(fd)


def roundtrip(tmp_path: Path, old: bytes, new: bytes, *, block_len: int = 0) -> Trip:
    trip = transfer(_write(tmp_path / "old", old), _write(tmp_path / "new", new),
                    tmp_path / "out", block_len=block_len)
    assert trip.out.read_bytes() == new
    assert trip.got == trip.sent == delta.Trailer(len(new), xxhash.xxh3_128_digest(new))
    return trip


@pytest.fixture
def base() -> bytes:
    return random.Random(1).randbytes(2 * MiB)


EDITS = [
    # description, new content from the old one
    ("append", lambda b: b + b"tail" * 5000),
    ("prepend", lambda b: b"head" * 5000 + b),
    ("insert in the middle", lambda b: b[: len(b) // 2] + b"inserted" * 3000 + b[len(b) // 2 :]),
    ("delete in the middle", lambda b: b[: MiB // 2] + b[MiB:]),
    ("overwrite in place", lambda b: b[:1000] + b"X" * 50_000 + b[51_000:]),
    ("truncation", lambda b: b[: len(b) // 3]),
    ("truncated to one byte", lambda b: b[:1]),
    ("halves swapped", lambda b: b[len(b) // 2 :] + b[: len(b) // 2]),
]


@pytest.mark.parametrize("edit", [e[1] for e in EDITS], ids=[e[0] for e in EDITS])
def test_round_trip_edits_send_little_more_than_the_change(tmp_path: Path, base: bytes,
                                                           edit: object) -> None:
    new = edit(base)  # type: ignore[operator]
    trip = roundtrip(tmp_path, base, new)
    # every edit above changes at most 60 KB: the old content is copied, not sent
    assert len(trip.delta) < 100_000, len(trip.delta)


def test_empty_old_file_sends_the_new_one_as_literal(tmp_path: Path) -> None:
    new = random.Random(2).randbytes(300_000)
    trip = roundtrip(tmp_path, b"", new)
    assert len(trip.sig) < 64
    assert len(new) <= len(trip.delta) < len(new) + 64


def test_empty_new_file(tmp_path: Path, base: bytes) -> None:
    trip = roundtrip(tmp_path, base, b"")
    assert trip.out.stat().st_size == 0
    assert len(trip.delta) < 16


def test_both_empty(tmp_path: Path) -> None:
    trip = roundtrip(tmp_path, b"", b"")
    assert trip.got == delta.Trailer(0, xxhash.xxh3_128_digest(b""))


def test_identical_files_send_no_literal_bytes(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(8 * MiB)
    trip = roundtrip(tmp_path, data, data)
    # one copy command for the whole file: a few bytes, whatever the size
    assert len(trip.delta) < 32, trip.delta


def test_appending_1_mib_to_64_mib_sends_under_2_mib(tmp_path: Path) -> None:
    """The issue's target, scaled: 1 MiB appended costs < 2 MiB on the link in all."""
    rng = random.Random(4)
    old = tmp_path / "old"
    with open(old, "wb") as f:
        for _ in range(64):
            f.write(rng.randbytes(MiB))
    appended = rng.randbytes(MiB)
    new = tmp_path / "new"
    with open(new, "wb") as f, open(old, "rb") as g:
        while piece := g.read(8 * MiB):
            f.write(piece)
        f.write(appended)
    trip = transfer(old, new, tmp_path / "out")
    assert trip.got == trip.sent
    assert xxhash.xxh3_128_digest(trip.out.read_bytes()) == trip.sent.digest
    assert len(trip.sig) + len(trip.delta) < 2 * MiB, (len(trip.sig), len(trip.delta))
    assert len(trip.delta) < MiB + 4096  # the appended bytes and a few commands


def test_signature_and_delta_stream_in_pieces(tmp_path: Path) -> None:
    """Chunks of any size cross the link: the receiver need not join them."""
    rng = random.Random(5)
    old = rng.randbytes(3 * MiB)
    new = old[:MiB] + rng.randbytes(MiB) + old[MiB:]
    ofd = os.open(_write(tmp_path / "old", old), os.O_RDONLY)
    nfd = os.open(_write(tmp_path / "new", new), os.O_RDONLY)
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    sig_chunks = list(delta.signature(ofd))
    sig = b"".join(sig_chunks)
    # the sender is given the signature in 7-byte pieces, the receiver the delta in 1000s
    stream = delta.delta((sig[i : i + 7] for i in range(0, len(sig), 7)), nfd)
    delta_chunks = list(stream)
    assert len(delta_chunks) > 1  # streamed, not one buffer of the whole result
    dlt = b"".join(delta_chunks)
    got = delta.patch(ofd, (dlt[i : i + 1000] for i in range(0, len(dlt), 1000)), outfd)
    for fd in (ofd, nfd, outfd):
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == new
    assert got == stream.trailer()


def test_a_basis_changed_after_its_signature_is_caught_by_the_trailer(tmp_path: Path,
                                                                      base: bytes) -> None:
    """The receiver's old file changes between signature and patch: the result is wrong,
    and the trailer says so (the caller then copies the whole file)."""
    old, new = _write(tmp_path / "old", base), _write(tmp_path / "new", base + b"more")
    ofd, nfd = os.open(old, os.O_RDWR), os.open(new, os.O_RDONLY)
    sig = b"".join(delta.signature(ofd))
    stream = delta.delta([sig], nfd)
    dlt = b"".join(stream)
    os.pwrite(ofd, b"changed meanwhile", 100_000)  # same size, other bytes
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    got = delta.patch(ofd, [dlt], outfd)
    for fd in (ofd, nfd, outfd):
        os.close(fd)
    assert (tmp_path / "out").read_bytes() != base + b"more"
    assert got.size == stream.trailer().size
    assert got != stream.trailer()


def test_a_basis_that_shrank_is_an_error(tmp_path: Path, base: bytes) -> None:
    old, new = _write(tmp_path / "old", base), _write(tmp_path / "new", base + b"more")
    ofd, nfd = os.open(old, os.O_RDWR), os.open(new, os.O_RDONLY)
    sig = b"".join(delta.signature(ofd))
    dlt = b"".join(delta.delta([sig], nfd))
    os.ftruncate(ofd, 1000)
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(delta.DeltaError, match="patch"):
        delta.patch(ofd, [dlt], outfd)
    for fd in (ofd, nfd, outfd):
        os.close(fd)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
    pytest.param(lambda d: b"\0\0\0\0" + d[4:], id="bad magic"),
    pytest.param(lambda d: b"", id="empty"),
])
def test_a_damaged_delta_is_an_error(tmp_path: Path, base: bytes, damage: object,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    old, new = _write(tmp_path / "old", base), _write(tmp_path / "new", base[::-1])
    ofd, nfd = os.open(old, os.O_RDONLY), os.open(new, os.O_RDONLY)
    dlt = b"".join(delta.delta(list(delta.signature(ofd)), nfd))
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(delta.DeltaError):
        delta.patch(ofd, [damage(dlt)], outfd)  # type: ignore[operator]
    for fd in (ofd, nfd, outfd):
        os.close(fd)
    assert capfd.readouterr().err == ""  # librsync's own messages go into the error


def test_a_damaged_signature_is_an_error(tmp_path: Path, base: bytes) -> None:
    nfd = os.open(_write(tmp_path / "new", base), os.O_RDONLY)
    with pytest.raises(delta.DeltaError, match="signature"):
        b"".join(delta.delta([b"not a signature at all"], nfd))
    os.close(nfd)


def test_the_trailer_is_only_known_after_the_delta(tmp_path: Path) -> None:
    fd = os.open(_write(tmp_path / "f", b"x" * 1000), os.O_RDONLY)
    stream = delta.delta(list(delta.signature(fd)), fd)
    with pytest.raises(RuntimeError):
        stream.trailer()
    b"".join(stream)
    assert stream.trailer().size == 1000
    os.close(fd)


def test_threshold() -> None:
    assert not delta.use_delta(delta.DELTA_MIN_SIZE - 1, 10 * MiB)
    assert delta.use_delta(delta.DELTA_MIN_SIZE, 10 * MiB)
    assert delta.use_delta(10 * MiB, 0)


def test_a_large_sparse_file_is_streamed_not_held_in_memory(tmp_path: Path) -> None:
    """512 MiB old and new files (sparse, a few edits) in a child whose peak RSS is
    checked: the module reads in 1 MiB pieces, whatever the file's size."""
    size = 512 * MiB
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    for path in (old, new):
        with open(path, "wb") as f:
            f.truncate(size)
            f.seek(size // 3)
            f.write(b"common" * 1000)
    with open(new, "r+b") as f:
        for off in (4096, size // 2, size - 10):
            f.seek(off)
            f.write(b"edit!")
        f.seek(size)
        f.write(b"appended")
    child = textwrap.dedent(f"""
        import os, resource, xxhash
        from hsync import delta
        ofd, nfd = os.open({str(old)!r}, os.O_RDONLY), os.open({str(new)!r}, os.O_RDONLY)
        outfd = os.open({str(out)!r}, os.O_WRONLY | os.O_CREAT, 0o600)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stream = delta.delta(delta.signature(ofd), nfd)
        nbytes = 0
        def counted():
            global nbytes
            for chunk in stream:
                nbytes += len(chunk)
                yield chunk
        got = delta.patch(ofd, counted(), outfd)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(peak - before, nbytes, got == stream.trailer())
    """)
    res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         check=True)
    grown_kib, nbytes, ok = res.stdout.split()
    assert ok == "True"
    assert int(grown_kib) < 64 * 1024, f"peak RSS grew by {grown_kib} KiB"
    assert int(nbytes) < 200_000  # 4 edited blocks of 23 KiB, and commands
    want = xxhash.xxh3_128()
    with open(new, "rb") as f:
        while piece := f.read(8 * MiB):
            want.update(piece)
    assert out.stat().st_size == size + len(b"appended")
    assert xxhash.xxh3_128_digest(b"") != want.digest()
    with open(out, "rb") as f:
        got = xxhash.xxh3_128()
        while piece := f.read(8 * MiB):
            got.update(piece)
    assert got.digest() == want.digest()


# -------------------------------------------------------------------- property

@st.composite
def old_and_new(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An old string, and a new one made of pieces of it and new bytes (so blocks match),
    or an unrelated one."""
    old = draw(st.binary(max_size=3000))
    if draw(st.booleans()) or not old:
        return old, draw(st.binary(max_size=3000))
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            a = draw(st.integers(0, len(old)))
            b = draw(st.integers(a, len(old)))
            pieces.append(old[a:b])
        else:
            pieces.append(draw(st.binary(max_size=200)))
    return old, b"".join(pieces)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pair=old_and_new(), block_len=st.sampled_from([0, 1, 16, 64]))
def test_property_patch_of_delta_of_signature_is_the_new_file(
        tmp_path: Path, pair: tuple[bytes, bytes], block_len: int) -> None:
    old, new = pair
    work = tmp_path / os.urandom(6).hex()
    work.mkdir()
    roundtrip(work, old, new, block_len=block_len)


def test_patch_reading_the_delta_stream_directly_leaves_the_trailer_ready(
        tmp_path: Path, base: bytes) -> None:
    """Regression: a patch stops at the delta's end command without asking the stream
    for its end; the trailer must be ready then (it raised "not read to its end")."""
    old, new = _write(tmp_path / "old", base), _write(tmp_path / "new", b"x" + base)
    ofd, nfd = os.open(old, os.O_RDONLY), os.open(new, os.O_RDONLY)
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    stream = delta.delta(delta.signature(ofd), nfd)
    got = delta.patch(ofd, stream, outfd)
    for fd in (ofd, nfd, outfd):
        os.close(fd)
    assert got == stream.trailer()
    assert (tmp_path / "out").read_bytes() == b"x" + base


# -------------------------------------------------------------------- appends

def _append_trip(tmp_path: Path, old: bytes, new: bytes, *, known: bool = False,
                 ) -> tuple[bytes, delta.Trailer, delta.Trailer]:
    """Sender: the digest of its file's first len(old) bytes; receiver: its old file's;
    equal, the sender sends ``AppendStream`` and the receiver patches the old file
    (``known``: told the delta's length, as a receiver holding it is, it applies it
    without librsync; else librsync does)."""
    o, n = _write(tmp_path / "old", old), _write(tmp_path / "new", new)
    ofd, nfd = os.open(o, os.O_RDONLY), os.open(n, os.O_RDONLY)
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        assert delta.prefix_digest(nfd, len(old)) == delta.whole_digest(ofd)[1]
        assert delta.whole_digest(ofd)[0] == len(old)
        stream = delta.AppendStream(len(old), nfd)
        dlt = b"".join(stream)
        got = delta.patch(ofd, [dlt[:7], dlt[7:]], outfd, size=len(dlt) if known else None)
        return dlt, stream.trailer(), got
    finally:
        for fd in (ofd, nfd, outfd):
            os.close(fd)


@pytest.mark.parametrize("old_size", [0, 1, 255, 256, 65535, 65536, 300_000])
@pytest.mark.parametrize("tail_size", [0, 1, 255, 256, 65536, MiB + 3])
def test_an_append_crosses_as_copy_the_old_file_then_the_new_bytes(
        tmp_path: Path, old_size: int, tail_size: int) -> None:
    """librsync's own patch applies the append delta at every width of its commands;
    what crosses is the new bytes and a few bytes of commands, and the trailer is the
    whole new file's."""
    old = os.urandom(old_size)
    new = old + os.urandom(tail_size)
    dlt, sent, got = _append_trip(tmp_path, old, new)
    assert (tmp_path / "out").read_bytes() == new
    assert got == sent == delta.Trailer(len(new), xxhash.xxh3_128_digest(new))
    assert len(dlt) <= tail_size + 4 + 1 + 1 + 8 + 1 + 8 + 1


@pytest.mark.parametrize("old_size", [0, 1, 255, 256, 65535, 65536, 300_000])
@pytest.mark.parametrize("tail_size", [0, 1, 256, 65536, MiB + 3])
def test_an_append_delta_of_known_length_is_patched_to_librsyncs_file_and_trailer(
        tmp_path: Path, old_size: int, tail_size: int) -> None:
    """The receiver that holds the delta knows its length: "copy the old file, then these
    bytes" is applied by copying the old part in the kernel, with the same file and the
    same trailer as librsync's patch."""
    old = os.urandom(old_size)
    new = old + os.urandom(tail_size)
    _, sent, got = _append_trip(tmp_path, old, new, known=True)
    assert (tmp_path / "out").read_bytes() == new
    assert got == sent == delta.Trailer(len(new), xxhash.xxh3_128_digest(new))


def _commands(old: int, tail: bytes, more: bytes = b"") -> bytes:
    """A delta: copy bytes 0..old of the old file, then ``tail``, then ``more`` commands,
    then the end."""
    return (struct.pack(">I", 0x72730236) + bytes([0x45 + 4 * 0 + 3]) + b"\0"
            + old.to_bytes(8, "big") + bytes([0x41 + 3]) + len(tail).to_bytes(8, "big")
            + tail + more + b"\0")


def _patch_bytes(tmp_path: Path, basis: bytes, dlt: bytes) -> tuple[bytes, delta.Trailer]:
    ofd = os.open(_write(tmp_path / "basis", basis), os.O_RDONLY)
    outfd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        got = delta.patch(ofd, [dlt], outfd, size=len(dlt))
        return (tmp_path / "out").read_bytes(), got
    finally:
        os.close(ofd)
        os.close(outfd)


def test_a_delta_that_begins_as_an_append_and_goes_on_is_patched_whole(
        tmp_path: Path) -> None:
    """A delta whose first commands are an append's but which has more (a copy from
    the middle of the old file after the literal) is librsync's to apply: its length
    tells it from an append."""
    basis = os.urandom(5000)
    more = bytes([0x45 + 4 * 1 + 1]) + (1000).to_bytes(2, "big") + (300).to_bytes(2, "big")
    out, got = _patch_bytes(tmp_path, basis, _commands(2000, b"tail", more))
    assert out == basis[:2000] + b"tail" + basis[1000:1300]
    assert got == delta.Trailer(len(out), xxhash.xxh3_128_digest(out))


def test_an_append_delta_against_an_old_file_shorter_than_its_copy_fails(
        tmp_path: Path) -> None:
    with pytest.raises(delta.DeltaError, match="shorter"):
        _patch_bytes(tmp_path, b"x" * 100, _commands(200, b"tail"))


def test_an_append_delta_without_its_end_command_fails(tmp_path: Path) -> None:
    dlt = _commands(100, b"tail")[:-1] + b"\1"
    with pytest.raises(delta.DeltaError, match="end command"):
        _patch_bytes(tmp_path, b"x" * 100, dlt)


def test_prefix_digest_of_a_file_shorter_than_asked_is_none(tmp_path: Path) -> None:
    fd = os.open(_write(tmp_path / "f", b"abc"), os.O_RDONLY)
    try:
        assert delta.prefix_digest(fd, 4) is None
        assert delta.prefix_digest(fd, 3) == xxhash.xxh3_128_digest(b"abc")
        assert delta.prefix_digest(fd, 0) == xxhash.xxh3_128_digest(b"")
    finally:
        os.close(fd)


def test_an_append_stream_whose_old_part_changed_fails_the_receivers_check(
        tmp_path: Path, base: bytes) -> None:
    """The sender's file changed in its old part after the digests were compared: the
    trailer covers what it holds now, so the patched file does not verify."""
    o = _write(tmp_path / "old", base)
    n = _write(tmp_path / "new", b"X" + base[1:] + b"tail")
    ofd, nfd = os.open(o, os.O_RDONLY), os.open(n, os.O_RDONLY)
    outfd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = delta.AppendStream(len(base), nfd)
        got = delta.patch(ofd, [b"".join(stream)], outfd)
        assert got != stream.trailer()
    finally:
        for fd in (ofd, nfd, outfd):
            os.close(fd)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(old=st.binary(max_size=3000), tail=st.binary(max_size=3000))
def test_property_an_append_patched_is_the_new_file(
        tmp_path: Path, old: bytes, tail: bytes) -> None:
    work = tmp_path / os.urandom(6).hex()
    work.mkdir()
    for known in (False, True):  # librsync's patch, and the kernel's copy
        _, sent, got = _append_trip(work, old, old + tail, known=known)
        assert (work / "out").read_bytes() == old + tail
        assert got == sent
