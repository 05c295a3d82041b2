"""The wire: framed messages of msgpack values, bulk frames compressed with zstd.

A frame is a 5-byte header (payload length, big-endian 32 bits; a flags byte: bit 0 set
when the payload is zstd-compressed) and the payload, one msgpack value. A request is
``[id, method, args]``; each answer frame is ``[id, tag, value]`` with tag ``ok`` (the
result, the end of the request), ``err`` (``[kind, message]``, the end), ``item`` (one
part of a streamed result: a chunk of file content, a page of a walk), ``event`` (a
watch's report). Request ids let the client keep many requests in flight from several
threads; the agent answers them in order.

Values are encoded generically (``pack``/``unpack``): names are ``str`` with surrogate
escapes (a name that is not UTF-8 crosses intact), tuples arrive as tuples, the value
classes of the contract (``Node``, ``Op``, ``Problem``, ``Exclude``...) cross by their
fields (``_values``: a field added to one of them needs no change here; the agent
serves without importing attrs), frozensets as
frozensets. Every byte read and written is counted (after compression): the report's
bytes on the wire.
"""

from __future__ import annotations

import io
import struct
import threading

import msgpack

TYPE_CHECKING = False  # not typing's: the agent's start-up is every remote run's
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Sequence
    from typing import IO, Any, BinaryIO

    from ..model import Node, Op
else:  # signal's C half, the same functions: the Python module builds enums at import
    import _signal

PROTOCOL = 7
"""Bumped when the messages change incompatibly; the handshake refuses a mismatch.
3 (the remote speed-up): ``configure_scan``, ``read_deltas`` (replacing ``read_delta``),
``cancel`` of a running batch, the error kinds ``source_changed``/``target_changed``.
4 (the batch window): batches carry the sender's session and a resumed flag, the agent
applies a window of them in order and answers ``acknowledged`` and ``outstanding``.
The open's answer may say ``keeps`` (what metadata the far tree can keep): a client
that reads it does not wait for the negotiation's ``metadata`` answers; one that does
not, or an agent that does not say it, work as before (no message changed).
5 (cheaper values): a value class crosses as a map of its fields with its name under
the key ``VALUE`` (``_default``, ``_hook``), not as an extension holding a packed map (one
nested pack and unpack per node and op: 100,000 ops of a push cost about 0.5 s more to
decode on the far side and 0.7 s more to encode here).
6 (appends): a ``signatures`` item may carry the size and digest of the new file's
beginning; the answer for an old file that is that beginning is its size, not a
signature (the sender then sends "copy the old file, then these bytes"); a
``read_deltas`` item may carry the size and digest of the old file in place of a
signature, answered by such a delta, or by the end ``NOT_APPENDED``. Holes: a content
page item may carry its offset (``[key, data, None, 0, offset]``; a file with holes sends
its data extents only, then an empty piece at its length), ``read`` and ``read_many``
take a ``sparse`` flag (a ``read`` item is then ``[data, offset]``; ``read_many`` leaves
such a file to ``read``).
7 (compact ops): an ``apply`` carries its ops as rows of plain values (``encode_ops``),
not as maps of their fields: 100,000 ops cost the far side 1.1 s to decode as maps."""
MAGIC = "hsync-agent"
NOT_APPENDED = "not only appended"
"""A ``read_deltas`` end for a file asked for as an append (with the digest of the old
file) whose beginning is not that old file: the client asks again with a signature."""

_HEADER = struct.Struct(">IB")
_STOPS = {_signal.SIGINT, _signal.SIGTERM}
COMPRESSED = 1
MIN_COMPRESS = 256
"""Frames shorter than this are sent as they are (a header costs more than it saves)."""
MAX_FRAME = 1 << 30
CHUNK = 1 << 20
"""File content crosses in chunks of this size (a file is never one giant message)."""
INLINE = 64 << 10
"""Files up to this size travel inside their batch's content page."""

_EXT_FROZENSET = 1
_EXT_SET = 2
_EXT_VALUE = 3
"""A value class before protocol 5 (still read: a far journal's answers keep them)."""
_EXT_BIGINT = 4


_ZSTD: list[Any] = []


def _zstd() -> Any:
    """zstandard's compressor and decompressor classes: its C extension module loaded by
    itself where it is there, else the package. The package's ``__init__`` imports
    ``platform`` and ``typing`` (with ``re`` and ``enum``) only to choose that same
    extension on CPython: 35-45 ms of each end's start-up on this machine's CPU,
    against 3-4 ms for the extension alone (bench/HISTORY.md, "The last round trips and
    the agent's start-up")."""
    if _ZSTD:
        return _ZSTD[0]
    import os
    import sys

    module: Any = None
    if os.environ.get("PYTHON_ZSTANDARD_IMPORT_POLICY", "default").strip() == "default":
        try:
            import importlib.machinery as machinery

            name = "zstandard.backend_c"
            spec = machinery.PathFinder.find_spec("zstandard")
            where = spec.submodule_search_locations if spec is not None else None
            top: str = next(iter(where), "") if where else ""
            module = sys.modules.get(name)
            for suffix in machinery.EXTENSION_SUFFIXES if top and module is None else ():
                path = os.path.join(top, "backend_c" + suffix)
                if os.path.exists(path):
                    loader = machinery.ExtensionFileLoader(name, path)
                    found = machinery.ModuleSpec(name, loader, origin=path)
                    module = loader.create_module(found)
                    loader.exec_module(module)
                    sys.modules[name] = module  # the package's own import takes it
                    break
            if module is not None:
                module.ZstdCompressor, module.ZstdDecompressor  # noqa: B018
        except Exception:  # another layout: the package chooses
            module = None
    if module is None:
        import zstandard as module
    _ZSTD.append(module)
    return module


def hsync_version() -> str:
    """This hsync's version (the package's ``__version__``: reading the installed
    distribution's metadata instead costs both ends of every run a tenth of a second)."""
    from .. import __version__

    return __version__


def _class(name: str) -> type | None:
    """The value class that crosses the link under ``name``. ``Exclude`` is looked up
    only when one crosses (its module, the filters, is no part of an agent's start-up:
    a scan without excludes sends None)."""
    if not _CLASSES:
        from ..backend import ApplyOptions, Capabilities, DigestSummary, Keep
        from ..model import Change, Fingerprint, Node, Op, Problem

        _CLASSES.update((c.__name__, c) for c in (
            Node, Op, Problem, Change, Fingerprint, ApplyOptions, Capabilities,
            DigestSummary, Keep))
    cls = _CLASSES.get(name)
    if cls is None and name == "Exclude":
        from ..filters import Exclude

        cls = _CLASSES[name] = Exclude
    return cls


_CLASSES: dict[str, type] = {}
_INIT: dict[type, list[tuple[str, str]]] = {}


def _init_fields(cls: type) -> list[tuple[str, str]]:
    """``(name, alias)`` of the fields ``cls.__init__`` takes: a value class's own
    (``_values``, read without importing attrs), else attrs's."""
    out = _INIT.get(cls)
    if out is None:
        fields = cls.__dict__.get("__value_fields__")
        if fields is None:
            import attrs

            fields = attrs.fields(cls)
        out = [(f.name, f.alias) for f in fields if f.init]
        _INIT[cls] = out
    return out


VALUE = "\0"
"""The key of a value class's name in the map it crosses as: no name a map holds (a
file's, an attribute's, a field's) can have a NUL in it."""
_KNOWN: dict[type, frozenset[str]] = {}
"""A value class's init arguments (``_hook`` drops any other a newer sender adds)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, int):  # beyond 64 bits (an identity with its device)
        return msgpack.ExtType(_EXT_BIGINT, _int_bytes(obj))
    if isinstance(obj, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, pack(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(_EXT_SET, pack(list(obj)))
    name = type(obj).__name__
    if _class(name) is type(obj):  # a map of its fields, its name under VALUE (``_hook``)
        fields: dict[str, Any] = {VALUE: name}
        for f, alias in _init_fields(type(obj)):
            fields[alias] = getattr(obj, f)
        return fields
    raise TypeError(f"cannot send a {type(obj).__name__} over the link")


def _int_bytes(value: int) -> bytes:
    """An int as the bytes it crosses as beyond msgpack's 64 bits (``int.from_bytes``,
    big-endian, signed, reads it back)."""
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _hook(fields: dict[Any, Any]) -> Any:
    """A map read: a value class's (``_default``: its name under ``VALUE``), else the
    map."""
    name = fields.pop(VALUE, None)
    if name is None:
        return fields
    cls = _class(name)
    if cls is None:
        raise ValueError(f"no value class {name!r}")
    known = _KNOWN.get(cls)
    if known is None:
        known = _KNOWN[cls] = frozenset(alias for _, alias in _init_fields(cls))
    if known.issuperset(fields):  # as this version sends them
        return cls(**fields)
    return cls(**{k: v for k, v in fields.items() if k in known})


def _ext(code: int, data: bytes) -> Any:
    if code == _EXT_FROZENSET:
        return frozenset(unpack(data))
    if code == _EXT_SET:
        return set(unpack(data))
    if code == _EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == _EXT_VALUE:
        name, fields = unpack(data)
        return _hook({VALUE: name, **fields})
    return msgpack.ExtType(code, data)


def encode_ops(ops: Sequence[Op]) -> list[Any]:
    """A batch's ops as rows of plain values (``decode_ops``): ``[op, kind, key, to,
    node, old, content, temporary]``, a node as ``[kind, mode, size, mtime_ns, target,
    identity, data]``. msgpack packs and unpacks these in C: as maps of their fields
    (``_default``, ``_hook``) the ops of a push of 100,000 small files took 1.1 s to
    decode on the far side and about as long to encode here. An identity beyond 64 bits
    (an inode with its device) crosses as its bytes (no identity is ``bytes``)."""
    return [(op.op, op.kind, op.key, op.to, _node_row(op.node), _node_row(op.old),
             op.content, op.temporary) for op in ops]


def _node_row(n: Node | None) -> Any:
    if n is None:
        return None
    identity: Any = n.identity
    if type(identity) is int and not -(1 << 63) <= identity < (1 << 64):
        identity = _int_bytes(identity)
    return (n.kind, n.mode, n.size, n.mtime_ns, n.target, identity, n.data)


def decode_ops(rows: Sequence[Any]) -> list[Op]:
    """The ops ``encode_ops`` made rows of."""
    from ..model import Node, Op

    def node(row: Any) -> Node | None:
        if row is None:
            return None
        kind, mode, size, mtime_ns, target, identity, data = row
        if type(identity) is bytes:
            identity = int.from_bytes(identity, "big", signed=True)
        return Node(kind, mode, size, mtime_ns, target, identity, data)

    return [Op(op=op, kind=kind, key=key, to=to, node=node(new), old=node(old),
               content=content, temporary=temporary)
            for op, kind, key, to, new, old, content, temporary in rows]


def pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True,
                         unicode_errors="surrogateescape")


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, use_list=False, raw=False, ext_hook=_ext, object_hook=_hook,
                           unicode_errors="surrogateescape", strict_map_key=False,
                           max_bin_len=MAX_FRAME, max_str_len=MAX_FRAME)


class LinkClosed(EOFError):
    """The other side went away (EOF, a broken pipe)."""


BULK = 256 << 10
"""A frame this long or longer is bulk content (``keep_freed_memory``; compressed only
where samples of it compress, ``Framer._compressible``)."""
SAMPLE = 16 << 10
_KEPT: list[bool] = []


def keep_freed_memory() -> None:
    """Have the C allocator keep memory freed by this process for its next allocations
    (glibc's ``mallopt``: up to 64 MiB free at the top of the heap before it gives it
    back, blocks under 32 MiB from the heap instead of maps of their own). Bulk content
    crosses in buffers of about a megabyte (each chunk read, packed, compressed; read,
    decompressed, unpacked on the other side), each freed as the next one is made; by
    default glibc hands such a buffer back to the kernel when it is freed, and every
    page of the next one faults in anew: a push of 2 GiB cost its sender 517,000 page
    faults and 1.8 s of system time, 6,800 and 0.8 s with this. Called once, at a link's first
    bulk frame (a no-op sync imports no ctypes); nothing where the C library is not
    glibc."""
    _KEPT.append(True)
    import os

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
    except (ValueError, OSError):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD


class Framer:
    """Reads and writes frames on two byte streams; thread-safe writes; counts bytes."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], *, compress: bool) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.compress = compress
        self._wlock = threading.Lock()
        zstd = _zstd()
        self._zc = zstd.ZstdCompressor(level=3)
        self._zd = zstd.ZstdDecompressor()
        self.sent = 0
        self.received = 0

    def send(self, value: Any) -> None:
        payload = pack(value)
        flags = 0
        if self.compress and len(payload) >= MIN_COMPRESS and (
                len(payload) < BULK or self._compressible(payload)):
            packed = self._zc.compress(payload)
            if len(packed) < len(payload):
                payload, flags = packed, COMPRESSED
        if len(payload) > MAX_FRAME:
            raise ValueError("message too large for one frame")
        if len(payload) >= BULK and not _KEPT:
            keep_freed_memory()
        with self._wlock:
            # a frame is written whole or not at all: a Ctrl-C (SIGINT, SIGTERM) in the
            # main thread waits until it is out (a KeyboardInterrupt raised half-way
            # through a frame would leave the other side reading a torn stream), and a
            # write a signal cut short is resumed where it stopped
            main = threading.current_thread() is threading.main_thread()
            mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _STOPS) if main else None
            try:
                self._write(_HEADER.pack(len(payload), flags))
                self._write(payload)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, ValueError) as e:
                raise LinkClosed(str(e)) from None
            finally:
                if mask is not None:
                    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            self.sent += _HEADER.size + len(payload)

    def _compressible(self, payload: bytes) -> bool:
        """Whether a bulk frame is worth compressing: four samples of ``SAMPLE`` bytes
        spread over it, compressed, shrink by more than a twentieth. Content that does
        not (random data, media, archives) is sent as it is without a pass of zstd over
        every byte (a push of 2 GiB of such files spent 7.6% of this end's core in
        zstd, for nothing); a frame of many small files is sampled across its files."""
        n = len(payload)
        view = memoryview(payload)
        raw = took = 0
        for at in (0, n // 4, n // 2, n - SAMPLE):
            piece = view[at:at + SAMPLE]
            raw += len(piece)
            took += len(self._zc.compress(piece))
        return took < raw - raw // 20

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.wfile.write(view)
            if n is None:  # a non-blocking stream that is full: not ours
                raise LinkClosed("the stream would block")
            view = view[n:]

    def recv(self) -> Any:
        """The next value; ``LinkClosed`` at the end of the stream."""
        header = self._read(_HEADER.size)
        length, flags = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise LinkClosed(f"bad frame length {length}")
        if length >= BULK and not _KEPT:
            keep_freed_memory()
        payload = self._read(length)
        self.received += _HEADER.size + length
        if flags & COMPRESSED:
            payload = self._zd.decompress(payload, max_output_size=MAX_FRAME)
        return unpack(payload)

    def _read(self, n: int) -> bytes:
        parts: list[bytes] = []
        while n:
            try:
                chunk = self.rfile.read(n)
            except (ConnectionResetError, ValueError, OSError) as e:
                raise LinkClosed(str(e)) from None
            if not chunk:
                raise LinkClosed("end of stream")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)


MEMFD_MAX = 8 << 20
"""Content up to this size is held in memory; larger goes to an unnamed temporary file."""


class Spool:
    """A file's content as it arrives: in memory up to ``MEMFD_MAX``, then in an
    unnamed temporary file (a big file is never held in memory whole).

    ``near``: a directory on the filesystem the content is on its way to (the
    destination's root, ``Spooling``): the temporary file is made there (``O_TMPFILE``),
    and the apply that publishes it links it in (``SpoolFile``) instead of
    copying it from elsewhere: a big file pushed is written once on the far side, not
    twice. Where that cannot be (no such directory, a filesystem without
    ``O_TMPFILE``), it goes to the system's temporary directory."""

    def __init__(self, near: str | None = None) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.fd: int | None = None
        self.near = near
        self.linkable = False
        """The content is in an unnamed file made in ``near``."""
        self.holes = False
        """Pieces came with their offsets: the file is cut to ``size`` when read."""

    @classmethod
    def whole(cls, data: bytes) -> Spool:
        """A small file's content, arrived whole in one piece."""
        spool = cls()
        spool.parts.append(data)
        spool.size = len(data)
        return spool

    def add(self, data: bytes, at: int | None = None) -> None:
        """The next piece of the content; ``at``: its offset, for a file with holes
        (the pieces of its data extents, then an empty one at its length): such a file
        is spooled in a file whatever its size, its holes left unwritten."""
        if at is not None:

            if self.fd is None:
                self.fd, self.linkable = unnamed_file(self.near)
                for p in self.parts:
                    _write_all(self.fd, p)
                self.parts = []
            self.holes = True
            _write_all(self.fd, data, at)
            self.size = max(self.size, at + len(data))
            return
        if self.fd is None and self.size + len(data) > MEMFD_MAX:
            self.fd, self.linkable = unnamed_file(self.near)
            for p in self.parts:
                _write_all(self.fd, p)
            self.parts = []
        if self.fd is not None:
            _write_all(self.fd, data)
        else:
            self.parts.append(data)
        self.size += len(data)

    def file(self, mtime_ns: int, *, last: bool = True) -> BinaryIO:
        """An open file of the content (``last``: the spool is not read again). Content
        held in memory comes as ``Chunks``: a filesystem's apply writes it straight into
        the file it publishes (``write_into``), not into a memfd first and then from
        there (two copies of every small file a push or a pull sends). Content in an
        unnamed file comes as a ``SpoolFile``, which the last reader may link in."""
        import os

        if self.fd is None:
            return Chunks(self.parts, self.size, mtime_ns)  # type: ignore[return-value]
        if self.holes:
            os.ftruncate(self.fd, self.size)  # a hole at its end
        fd = self.fd if last else os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY)
        if last:
            self.fd = None
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.lseek(fd, 0, os.SEEK_SET)
        return SpoolFile(fd, linkable=last and self.linkable)

    def close(self) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def unnamed_file(near: str | None) -> tuple[int, bool]:
    """A new unnamed file open for reading and writing: made in directory ``near``
    (``O_TMPFILE``, so it can be linked in there later: True), else in the system's
    temporary directory (False)."""
    import os
    import tempfile

    if near is not None and hasattr(os, "O_TMPFILE"):
        try:
            return os.open(near, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), True
        except OSError:
            pass  # gone, not a directory, no O_TMPFILE on that filesystem, no right
    with tempfile.TemporaryFile() as tmp:  # unnamed; the duplicate keeps it
        return os.dup(tmp.fileno()), False


class SpoolFile(io.FileIO):
    """A spooled file's content, read from its unnamed file. ``linkable``: it was made
    near the destination and this is its last reader, so the apply may link the file in
    (``backends.fs.copy.LinksItself``, ``publish_linked``) rather than copy it."""

    def __init__(self, fd: int, *, linkable: bool) -> None:
        super().__init__(fd, "rb", closefd=True)
        self.linkable = linkable


class Chunks(io.RawIOBase):
    """Content held in memory (a ``Spool``'s parts), as a file that writes itself
    (``backends.fs.copy.WritesItself``): ``write_into(fd)`` writes the parts straight
    into ``fd``; read as a file (``fileno``, ``read``), it is put in a memfd first
    (``content_file``), whose mtime is ``mtime_ns``."""

    def __init__(self, parts: list[bytes], size: int, mtime_ns: int) -> None:
        super().__init__()
        self._parts = parts
        self.size = size
        self.mtime_ns = mtime_ns
        self._file: BinaryIO | None = None

    def held(self) -> bytes:
        """The content, whole (``backends.fs.copy.HeldWhole``)."""
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)

    def write_into(self, fd: int) -> int:
        """The parts written to ``fd`` (empty, at offset 0); the bytes written."""
        for part in self._parts:
            _write_all(fd, part)
        return self.size

    def _made(self) -> BinaryIO:
        if self._file is None:
            self._file = content_file(self._parts, self.mtime_ns)
        return self._file

    def fileno(self) -> int:
        return self._made().fileno()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        got: int = self._made().readinto(buffer)  # type: ignore[attr-defined]
        return got

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _write_all(fd: int, data: bytes, at: int | None = None) -> None:
    """All of ``data`` to ``fd``: at its position, or at offset ``at``, in writes of at
    most ``posix.WRITE_PIECE`` (a megabyte written at once costs a virtual machine's
    host a fault per page)."""
    from ..backends.fs.posix import write_all

    write_all(fd, data, at)


def content_file(chunks: list[bytes], mtime_ns: int) -> BinaryIO:
    """An open file holding ``chunks``, positioned at 0, whose mtime is ``mtime_ns``:
    what a backend's apply reads a file's content from (it checks size and mtime as it
    would on the source itself)."""
    import os

    size = sum(len(c) for c in chunks)
    if size <= MEMFD_MAX and hasattr(os, "memfd_create"):
        fd = os.memfd_create("hsync-content", os.MFD_CLOEXEC)
    else:
        fd = unnamed_file(None)[0]
    try:
        for c in chunks:
            _write_all(fd, c)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")
