"""Delta transfer of a changed file: the rsync algorithm through librsync.

Used by the remote endpoint (``hsync/remote/backend.py``, ``agent.py``; see
docs/ARCHITECTURE.md "Delta transfer"). When a file exists on both sides, differs,
and the destination's old copy is at least `DELTA_MIN_SIZE` bytes (`use_delta`):

1. the **receiver** (the destination backend, which holds the old file at the key)
   opens the old file and sends `signature(old_fd)`, a stream of bytes chunks;
2. the **sender** (the source backend, which holds the new file) answers with
   `stream = delta(signature_chunks, new_fd)`: it yields bytes chunks (the delta), and
   once exhausted `stream.trailer()` is the `Trailer(size, digest)` of the new content
   it read; send the chunks, then the trailer;
3. the receiver opens a temporary file beside the final name (the rule of every
   apply: never a half-written file under a final name), runs
   `patch(old_fd, chunks, tmp_fd)`, and compares the `Trailer` it returns with the
   sender's (`Trailer.__eq__`). Equal: fsync and rename over the final name, then set
   metadata as for any copy. Different (the old file changed after its signature, a
   block-sum collision) or `DeltaError`: delete the temporary file and fall back to a
   whole-file copy of that key. Never rename a result that was not verified.

A file that only grew needs no signature (`AppendStream`, `prefix_digest`,
`whole_digest`): when the digest of the new file's first old-size bytes equals the old
file's, the delta is "copy the old file, then these bytes", written here in librsync's
format, and the patch (librsync's) applies it as any delta.

Below `DELTA_MIN_SIZE` the signature round trip costs more than the file: send it whole
(compressed by the transport). All values are `bytes` and `int`: msgpack-friendly.

Contract.
- `signature(fd)` reads the file through `fd` from offset 0 with `pread` (the fd's
  position is untouched), in `CHUNK` pieces; memory is bounded by the chunk size.
- `delta(sig, fd)` holds the signature in memory (about 12 bytes per block of
  `sqrt(old size)` bytes: 384 KiB for 1 GiB) and streams the new file.
- `patch(basis_fd, chunks, out_fd)` reads the basis with `pread`, writes the result
  sequentially to `out_fd` (which the caller opened, empty, at offset 0) and returns the
  `Trailer` of what it wrote. It neither fsyncs nor renames: the caller does.
- The digest is XXH3-128 of the whole new content (as rsync 3.2's whole-file checksum):
  it catches a stale basis and a collision of the truncated block sums. It is not a
  defence against an adversary, who would need write access to the source, and so could
  write the destination anyway.
- The wire format of the signature and of the delta is librsync's (rdiff's): stable
  across librsync 2.x, versioned by its magic numbers. librsync is a C library loaded
  with ctypes (Debian's `librsync2`); without it `available()` is false and every call
  raises `DeltaUnavailable`: the caller sends whole files. ctypes releases the GIL
  around each librsync call, so several files can be signed or diffed in threads.

Why librsync (figures and commands in bench/README.md, `bench_delta.py`): for 1 MiB
appended to 1 GiB it sends 1.38 MiB in all (signature 384 KiB), for 10 scattered 4 KiB
edits 0.69 MiB; it is maintained, packaged by Debian, and its formats are rdiff's.
Content-defined chunking (fastcdc + xxhash) was 2-3x cheaper in CPU but sent twice as
much for the scattered edits; pure-Python rsync (pyrsync2) runs at well under 10 MB/s.
The cost to know: a file rewritten entirely costs the sender's delta about 25-30 ms of
CPU per MiB (every byte offset is searched) for no saving.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import itertools
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import attrs
import xxhash

__all__ = [
    "CHUNK",
    "DELTA_MIN_SIZE",
    "AppendStream",
    "DeltaError",
    "DeltaStream",
    "DeltaUnavailable",
    "Patched",
    "Trailer",
    "available",
    "delta",
    "patch",
    "prefix_digest",
    "signature",
    "use_delta",
    "whole_digest",
]

#: Below this size of the receiver's old file a delta is not tried. A signature round
#: trip costs a network round trip plus a pass over both files; 256 KiB crosses a
#: 100 Mbit/s link in about 20 ms and is compressed by the transport anyway.
DELTA_MIN_SIZE = 256 * 1024

#: Size of the pieces read from files and fed to librsync.
CHUNK = 1024 * 1024

_OUT = 256 * 1024  # librsync output buffer per call

# librsync.h (2.x)
_RS_DONE = 0
_RS_BLOCKED = 1
_RS_IO_ERROR = 100
_RS_INPUT_ENDED = 103
_RS_RK_BLAKE2_SIG_MAGIC = 0x72730147
_RS_LOG_ERR = 3
_MIN_STRONG_LEN = ctypes.c_size_t(-1).value  # rs_sig_args: "the smallest safe length"


class DeltaError(Exception):
    """A signature or delta that librsync rejects, or a basis that cannot be read."""


class DeltaUnavailable(DeltaError):
    """librsync (Debian's `librsync2`) is not installed: send whole files."""


@attrs.frozen
class Trailer:
    """Size and XXH3-128 digest of a file's new content, sent after the delta."""

    size: int
    digest: bytes


class _Buffers(ctypes.Structure):
    _fields_ = (
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_size_t),
        ("eof_in", ctypes.c_int),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_size_t),
    )


_COPY_CB = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.c_void_p),
)
_TRACE_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p)

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


class _LastMessage(threading.local):
    text = ""


_last_message = _LastMessage()


@_TRACE_CB
def _trace(level: int, message: bytes | None) -> None:
    # librsync reports the cause of an error through its trace hook, before returning
    # the error code: keep the last message for the exception (nothing on stderr).
    _last_message.text = (message or b"").decode("utf-8", "replace").strip()


def _load() -> ctypes.CDLL:
    global _lib, _lib_error
    with _lib_lock:
        if _lib is not None:
            return _lib
        if _lib_error is None:
            try:
                try:  # the soname first: find_library runs ldconfig (a process)
                    lib = ctypes.CDLL("librsync.so.2")
                except OSError:
                    lib = ctypes.CDLL(ctypes.util.find_library("rsync") or "librsync.so")
                _lib = _bind(lib)
                return _lib
            except (OSError, AttributeError) as exc:
                _lib_error = f"librsync is not available ({exc}); install librsync2"
        raise DeltaUnavailable(_lib_error)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    protos: dict[str, tuple[Any, tuple[Any, ...]]] = {
        "rs_sig_args": (ctypes.c_int, (ctypes.c_int64, ctypes.POINTER(ctypes.c_int),
                                       ctypes.POINTER(sz), ctypes.POINTER(sz))),
        "rs_sig_begin": (vp, (sz, sz, ctypes.c_int)),
        "rs_loadsig_begin": (vp, (ctypes.POINTER(vp),)),
        "rs_build_hash_table": (ctypes.c_int, (vp,)),
        "rs_delta_begin": (vp, (vp,)),
        "rs_patch_begin": (vp, (_COPY_CB, vp)),
        "rs_job_iter": (ctypes.c_int, (vp, ctypes.POINTER(_Buffers))),
        "rs_job_free": (ctypes.c_int, (vp,)),
        "rs_free_sumset": (None, (vp,)),
        "rs_strerror": (ctypes.c_char_p, (ctypes.c_int,)),
        "rs_trace_to": (None, (_TRACE_CB,)),
        "rs_trace_set_level": (None, (ctypes.c_int,)),
    }
    for name, (restype, argtypes) in protos.items():
        fn = lib[name]  # a new function object each time: keep the typed one
        fn.restype = restype
        fn.argtypes = argtypes
        setattr(lib, name, fn)
    lib.rs_trace_to(_trace)
    lib.rs_trace_set_level(_RS_LOG_ERR)
    return lib


def available() -> bool:
    """True when librsync can be loaded (else callers send whole files)."""
    try:
        _load()
    except DeltaUnavailable:
        return False
    return True


def use_delta(old_size: int, new_size: int) -> bool:
    """Whether a delta is worth its round trip: the old file is big enough to save on.

    `new_size` is accepted so the policy can grow (an all-new file much larger than the
    old one still saves the old part, so it does not count today).
    """
    del new_size
    return old_size >= DELTA_MIN_SIZE and available()


def _fail(lib: ctypes.CDLL, what: str, result: int) -> DeltaError:
    cause = _last_message.text or (lib.rs_strerror(result) or b"").decode()
    _last_message.text = ""
    return DeltaError(f"{what}: {cause}")


def _read_chunks(fd: int, on_chunk: _Hasher | None = None) -> Iterator[bytes]:
    offset = 0
    while True:
        data = os.pread(fd, CHUNK, offset)
        if not data:
            if on_chunk is not None:
                on_chunk.ended = True
            return
        offset += len(data)
        if on_chunk is not None:
            on_chunk.update(data)
        yield data


def _drive(
    lib: ctypes.CDLL, job: int | None, what: str, chunks: Iterable[bytes]
) -> Iterator[memoryview]:
    """Run a librsync job to its end: feed it `chunks`, yield what it writes. Frees it.

    What it yields is a view of its output buffer, valid only until the next item is
    asked for (`_copies` makes bytes of them).
    """
    if not job:
        raise DeltaError(f"{what}: librsync could not start the job")
    bufs = _Buffers()
    out = ctypes.create_string_buffer(_OUT)
    out_view = memoryview(out).cast("B")
    source = iter(chunks)
    data, pos, eof = b"", 0, False
    try:
        while True:
            if pos >= len(data) and not eof:
                piece = next(source, None)
                if piece is None:
                    eof, data = True, b""
                else:
                    data = bytes(piece)
                pos = 0
                if data == b"" and not eof:
                    continue
            # a c_char_p over bytes points into the bytes object itself: no copy
            base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
            bufs.next_in = base + pos if data else None
            bufs.avail_in = len(data) - pos
            bufs.eof_in = int(eof)
            bufs.next_out = ctypes.addressof(out)
            bufs.avail_out = _OUT
            result = lib.rs_job_iter(job, ctypes.byref(bufs))
            consumed = len(data) - pos - bufs.avail_in
            pos += consumed
            produced = _OUT - bufs.avail_out
            if produced:
                yield out_view[:produced]
            if result == _RS_DONE:
                return
            if result != _RS_BLOCKED:
                raise _fail(lib, what, result)
            if eof and not consumed and not produced:
                raise DeltaError(f"{what}: librsync made no progress at the end of input")
    finally:
        lib.rs_job_free(job)


def _copies(views: Iterator[memoryview]) -> Iterator[bytes]:
    for view in views:
        yield bytes(view)


class _Hasher:
    __slots__ = ("ended", "hash", "size")

    def __init__(self) -> None:
        self.hash = xxhash.xxh3_128()
        self.size = 0
        self.ended = False  # the file was read to its end

    def update(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        self.size += len(data)

    def trailer(self) -> Trailer:
        return Trailer(self.size, self.hash.digest())


def signature(fd: int, *, block_len: int = 0, strong_len: int = 0) -> Iterator[bytes]:
    """The signature of the file open at `fd` (the receiver's old file), in chunks.

    `block_len` 0 is librsync's choice (sqrt of the size, a multiple of 128, at least
    256); `strong_len` 0 the smallest strong sum librsync deems safe for that size
    (the whole-file digest covers the rest).
    """
    lib = _load()
    magic = ctypes.c_int(_RS_RK_BLAKE2_SIG_MAGIC)
    blen = ctypes.c_size_t(block_len)
    slen = ctypes.c_size_t(strong_len or _MIN_STRONG_LEN)
    size = os.fstat(fd).st_size
    result = lib.rs_sig_args(size, ctypes.byref(magic), ctypes.byref(blen), ctypes.byref(slen))
    if result != _RS_DONE:
        raise _fail(lib, "signature", result)
    return _copies(_sig_job(lib, fd, blen.value, slen.value, magic.value))


def _sig_job(lib: ctypes.CDLL, fd: int, blen: int, slen: int, magic: int) -> Iterator[memoryview]:
    # the job starts with the iteration, so one never iterated is never allocated
    yield from _drive(lib, lib.rs_sig_begin(blen, slen, magic), "signature", _read_chunks(fd))


class DeltaStream:
    """Iterate for the delta's bytes chunks; then `trailer()` describes the new file."""

    def __init__(self, sig: Iterable[bytes], fd: int) -> None:
        self._sig = sig
        self._fd = fd
        self._hasher = _Hasher()

    def __iter__(self) -> Iterator[bytes]:
        lib = _load()
        sumset = ctypes.c_void_p()
        for _ in _drive(lib, lib.rs_loadsig_begin(ctypes.byref(sumset)), "signature", self._sig):
            pass  # loading a signature writes nothing
        try:
            result = lib.rs_build_hash_table(sumset)
            if result != _RS_DONE:
                raise _fail(lib, "signature", result)
            job = lib.rs_delta_begin(sumset)
            yield from _copies(_drive(lib, job, "delta", _read_chunks(self._fd, self._hasher)))
        finally:
            lib.rs_free_sumset(sumset)

    def trailer(self) -> Trailer:
        """Size and digest of the new content; once the delta's last chunk was yielded.

        (A patch that reads the stream directly stops at the delta's end command,
        without asking for the end of the iteration: the trailer is ready by then.)
        """
        if not self._hasher.ended:
            raise RuntimeError("the delta has not been read to its end")
        return self._hasher.trailer()


_RS_DELTA_MAGIC = 0x72730236
_RS_OP_LITERAL_N1 = 0x41  # then N2, N4, N8: the length in 1, 2, 4 or 8 bytes
_RS_OP_COPY_N1_N1 = 0x45  # then by offset width, then length width: N1_N2 ... N8_N8
_WIDTHS = (1, 2, 4, 8)


def _width(n: int) -> int:
    """The index in ``_WIDTHS`` of the fewest big-endian bytes that hold ``n``."""
    return next(i for i, w in enumerate(_WIDTHS) if n < 1 << (8 * w))


def prefix_digest(fd: int, size: int) -> bytes | None:
    """XXH3-128 of the first ``size`` bytes of the file open at ``fd`` (None when it
    holds fewer): compared with the digest of a whole old file, it tells an append."""
    h = _Hasher()
    return h.hash.digest() if _hash_head(fd, size, h) else None


def _hash_head(fd: int, size: int, hasher: _Hasher) -> bool:
    """The first ``size`` bytes of the file open at ``fd`` fed to ``hasher``; False
    when it holds fewer."""
    offset = 0
    while offset < size:
        data = os.pread(fd, min(CHUNK, size - offset), offset)
        if not data:
            return False
        hasher.update(data)
        offset += len(data)
    return True


def whole_digest(fd: int) -> tuple[int, bytes]:
    """The size and XXH3-128 of the whole file open at ``fd``."""
    h = _Hasher()
    for _ in _read_chunks(fd, h):
        pass
    return h.size, h.hash.digest()


class AppendStream:
    """The delta of a file that grew by appends only: "copy the old file, whole", then
    the bytes past its old end, in librsync's delta format (any patch applies it). Made
    without a signature: the sender saw that the first ``old_size`` bytes of its file
    have the digest of the receiver's whole old file (``prefix_digest``,
    ``whole_digest``): two passes of XXH3 (several GB/s) instead of a signature (BLAKE2
    and a rolling sum over the old file there, about 400 MB/s here) and a delta (the
    same over the new file here). The trailer's digest covers the whole new file as it
    is read now, so a file changed in between fails the receiver's check and is sent
    whole, as a delta that does not verify is."""

    def __init__(self, old_size: int, fd: int) -> None:
        self._old = old_size
        self._fd = fd
        self._hasher = _Hasher()

    def __iter__(self) -> Iterator[bytes]:
        old, fd = self._old, self._fd
        size = os.fstat(fd).st_size
        if size < old:
            raise DeltaError("the file is now shorter than the old one")
        where, length = _width(0), _width(old)
        tail = size - old
        head = struct.pack(">I", _RS_DELTA_MAGIC)
        if old:
            head += bytes([_RS_OP_COPY_N1_N1 + 4 * where + length])
            head += (0).to_bytes(_WIDTHS[where], "big") + old.to_bytes(_WIDTHS[length], "big")
        if tail:
            w = _width(tail)
            head += bytes([_RS_OP_LITERAL_N1 + w]) + tail.to_bytes(_WIDTHS[w], "big")
        yield head
        offset = 0
        while offset < size:  # the old part only hashed; the bytes the command says
            data = os.pread(fd, min(CHUNK, size - offset), offset)
            if not data:
                raise DeltaError("the file shrank while it was read")
            self._hasher.update(data)
            if offset + len(data) > old:
                yield data[max(0, old - offset):]
            offset += len(data)
        self._hasher.ended = True
        yield b"\0"  # the end command

    def trailer(self) -> Trailer:
        """Size and digest of the new content as read (after the iteration)."""
        if not self._hasher.ended:
            raise RuntimeError("the delta has not been read to its end")
        return self._hasher.trailer()


def delta(sig: Iterable[bytes], fd: int) -> DeltaStream:
    """The delta that turns the signed old file into the file open at `fd` (the new one)."""
    _load()
    return DeltaStream(sig, fd)


def patch(basis_fd: int, chunks: Iterable[bytes], out_fd: int, *,
          size: int | None = None) -> Trailer:
    """Write the old file at `basis_fd` patched by the delta `chunks` to `out_fd`
    (empty, at offset 0); `size`: the delta's length, where it is known.

    Returns the `Trailer` of what was written, for the caller to compare with the
    sender's. Raises `DeltaError` on a corrupt delta or an unreadable basis (the basis
    shrank under a copy): the output is then garbage and must be discarded.

    A delta of `size` bytes that is "copy the old file, then these bytes" (what
    `AppendStream` writes) is applied without librsync (`_patch_append`): the old part
    copied by the kernel.
    """
    if size is None:
        return _patch_rs(basis_fd, chunks, out_fd)
    source = iter(chunks)
    head = b""
    for piece in source:  # enough of the delta to tell its form
        head += piece
        if len(head) >= _APPEND_HEAD:
            break
    form = _append_form(head)
    rest = itertools.chain((head,), source)
    if form is not None and size == form[2] + form[1] + 1:
        return _patch_append(basis_fd, form, rest, out_fd)
    return _patch_rs(basis_fd, rest, out_fd)


_APPEND_HEAD = 4 + (1 + 8 + 8) + (1 + 8)
"""The longest beginning of a delta ``AppendStream`` writes, before its literal bytes."""


def _append_form(head: bytes) -> tuple[int, int, int] | None:
    """``(old, tail, start)`` where ``head``, the beginning of a delta, is what
    ``AppendStream`` writes: the magic, "copy bytes 0..old of the old file" (absent when
    old is 0), "tail literal bytes" (absent when tail is 0), whose bytes begin at offset
    ``start``; else None (any other delta: librsync patches it)."""
    if len(head) < 4 or struct.unpack_from(">I", head)[0] != _RS_DELTA_MAGIC:
        return None
    pos, old, tail = 4, 0, 0
    if pos < len(head) and _RS_OP_COPY_N1_N1 <= head[pos] < _RS_OP_COPY_N1_N1 + 16:
        code = head[pos] - _RS_OP_COPY_N1_N1
        where, length = _WIDTHS[code // 4], _WIDTHS[code % 4]
        end = pos + 1 + where + length
        if len(head) < end or int.from_bytes(head[pos + 1:pos + 1 + where], "big"):
            return None  # a copy from elsewhere than the old file's start
        old = int.from_bytes(head[pos + 1 + where:end], "big")
        pos = end
    if pos < len(head) and _RS_OP_LITERAL_N1 <= head[pos] < _RS_OP_LITERAL_N1 + 4:
        width = _WIDTHS[head[pos] - _RS_OP_LITERAL_N1]
        if len(head) < pos + 1 + width:
            return None
        tail = int.from_bytes(head[pos + 1:pos + 1 + width], "big")
        pos += 1 + width
    return old, tail, pos


def _patch_append(basis_fd: int, form: tuple[int, int, int], delta: Iterable[bytes],
                  out_fd: int) -> Trailer:
    """An append delta applied: the old file's first ``old`` bytes copied by the kernel
    (``copy_file_range``: no pass through this process, and a shared extent where the
    filesystem can clone one), hashed from the page cache, then the literal bytes
    written. For a 1 GiB file the old part costs about half of what librsync's
    patch costs here (the old file read into its buffer, copied out to a bytes object,
    hashed and written). An old file that changed while it was copied (its size,
    mtime or ctime) is a ``DeltaError``, as a librsync patch of a shrunk basis is."""
    from .backends.fs.posix import copy_range, write_all

    old, tail, start = form
    before = os.fstat(basis_fd)
    if before.st_size < old:
        raise DeltaError("patch: the old file is shorter than the delta copies")
    copy_range(basis_fd, out_fd, 0, old)
    hasher = _Hasher()
    if not _hash_head(basis_fd, old, hasher):
        raise DeltaError("patch: the old file shrank while it was copied")
    after = os.fstat(basis_fd)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            before.st_size, before.st_mtime_ns, before.st_ctime_ns):
        raise DeltaError("patch: the old file changed while it was copied")
    os.lseek(out_fd, old, os.SEEK_SET)
    skip, left = start, tail + 1  # the command bytes, then the literal and the end
    for piece in delta:
        view = memoryview(piece)[skip:]
        skip = max(0, skip - len(piece))
        if not view:
            continue
        if len(view) > left:
            raise DeltaError("patch: the delta goes on past its end command")
        left -= len(view)
        literal = view[:len(view) - 1] if left == 0 else view  # the end command stays out
        if left == 0 and view[len(view) - 1:] != b"\0":
            raise DeltaError("patch: the delta does not end with its end command")
        hasher.update(literal)
        write_all(out_fd, literal)
    if left:
        raise DeltaError("patch: the delta ended before its literal bytes did")
    return hasher.trailer()


def _patch_rs(basis_fd: int, chunks: Iterable[bytes], out_fd: int) -> Trailer:
    """``patch`` by librsync: any delta."""
    lib = _load()
    failure: list[BaseException] = []

    def copy(_opaque: int | None, pos: int, length: Any, buf: Any) -> int:
        # read straight into librsync's buffer (it is the output buffer, usually)
        target = (ctypes.c_char * length[0]).from_address(buf[0])
        try:
            got = os.preadv(basis_fd, [memoryview(target).cast("B")], pos)
        except BaseException as exc:  # an exception must not cross the C frames
            failure.append(exc)
            return _RS_IO_ERROR
        if not got:
            return _RS_INPUT_ENDED
        length[0] = got
        return _RS_DONE

    from .backends.fs.posix import write_all

    callback = _COPY_CB(copy)  # referenced until the job ends
    hasher = _Hasher()
    try:
        job = lib.rs_patch_begin(callback, None)
        for piece in _drive(lib, job, "patch", chunks):
            hasher.update(piece)
            write_all(out_fd, piece)
    except DeltaError as exc:
        if failure:
            raise DeltaError(f"patch: reading the basis: {failure[0]}") from failure[0]
        raise exc
    return hasher.trailer()


class Patched(io.RawIOBase):
    """A file's new content made by patching: its delta (``delta``, a file) applied to
    the receiver's old file (``basis()`` opens it), checked against the sender's
    ``trailer``; the receiver's ``read`` returns it for the apply to publish.

    ``write_into`` writes it once, straight into the temporary file the apply renames
    (``backends.fs.copy.WritesItself``): a big file patched is written once, not to an
    unnamed temporary file first and then copied. Read as a file (``fileno``, ``read``)
    it is patched into an unnamed temporary file first. A result that does not verify
    (the old file changed after its signature, a collision, a corrupt delta) raises
    ``errors.SourceChanged``, after ``on_fail()``: the apply retries the file, and the
    receiver reads it whole then."""

    def __init__(self, delta: BinaryIO, basis: Callable[[], BinaryIO], trailer: Trailer,
                 mtime_ns: int, on_fail: Callable[[], None] | None = None,
                 delta_size: int | None = None) -> None:
        super().__init__()
        self._delta: BinaryIO | None = delta
        self._delta_size = delta_size
        """The delta's length, where the receiver knows it (``patch``'s ``size``)."""
        self._basis = basis
        self.trailer = trailer
        self.size = trailer.size
        self.mtime_ns = mtime_ns
        self._on_fail = on_fail
        self._file: BinaryIO | None = None

    def write_into(self, fd: int) -> int:
        """Patch into ``fd`` (empty, at offset 0); the bytes written, verified."""
        from .errors import NodeError, SourceChanged

        d, self._delta = self._delta, None
        if d is None:
            raise SourceChanged("its delta was already applied")
        try:
            with d, self._basis() as basis:
                got = patch(basis.fileno(), iter(lambda: d.read(CHUNK), b""), fd,
                            size=self._delta_size)
            if got != self.trailer:
                raise DeltaError("the patched file differs from the source's")
        except (OSError, NodeError, DeltaError) as e:
            if self._on_fail is not None:
                self._on_fail()
            raise SourceChanged(f"its delta did not apply ({e}); sent whole next") from e
        return got.size

    def _made(self) -> BinaryIO:
        if self._file is None:
            import tempfile

            with tempfile.TemporaryFile() as tmp:
                fd = os.dup(tmp.fileno())
            try:
                self.write_into(fd)
                os.utime(fd, ns=(self.mtime_ns, self.mtime_ns))
                os.lseek(fd, 0, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            self._file = os.fdopen(fd, "rb")
        return self._file

    def fileno(self) -> int:
        return self._made().fileno()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._made().readinto(b)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._delta is not None:
            self._delta.close()
            self._delta = None
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
