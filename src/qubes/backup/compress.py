"""In-process compression codecs, keyed by the header ``compression-filter``.

Format 3 names a compression *program* in its header (BACKUP-FORMAT.md §7.1,
§9 step 4); upstream readers execute it. We never run it: the program name
only selects one of the codecs below, implemented with the standard library
(gzip = zlib, bzip2 = bz2, xz/lzma = lzma; zstd only when a zstd module is
available). Options after the program name (``gzip -3``) do not matter for
decompression and are ignored.

Decompressors accept a concatenation of complete members, as ``gzip -d``
does for ``cat a.gz b.gz``, because a parallel writer may emit independently
compressed members.

May import: the standard library (and optionally ``zstandard``).
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

#: Largest piece ``Decompressor.iter_decompress`` yields by default.
PIECE_SIZE = 1024 * 1024

_WORD = re.compile(r"[A-Za-z0-9-]+")  # a program name or one option


class UnknownFilter(ValueError):
    """A ``compression-filter`` value that names no codec we implement."""


class CorruptStream(ValueError):
    """Compressed data that is damaged, truncated or followed by garbage."""


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Member(Protocol):
    """One compressed member being decoded (adapts zlib vs bz2/lzma APIs)."""

    eof: bool
    unused_data: bytes
    again: bytes | None  # input for the next pull, None: wants new input

    def pull(self, data: bytes, limit: int) -> bytes:
        """Feed *data*; return at most *limit* bytes of output."""


class _MemberBase:
    """What every adapter shares: the wrapped decompressor's end and leftover input."""

    def __init__(self, decompressor):
        self._d = decompressor
        self.again: bytes | None = None

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


class _ZlibMember(_MemberBase):
    def __init__(self, wbits: int):
        super().__init__(zlib.decompressobj(wbits=wbits))

    def pull(self, data: bytes, limit: int) -> bytes:
        out = self._d.decompress(data, limit)
        tail = self._d.unconsumed_tail
        # Output exactly at the limit may leave output pending inside zlib.
        pending = bool(tail) or len(out) >= limit
        self.again = tail if pending and not self._d.eof else None
        return out


class _BufferedMember(_MemberBase):
    """bz2 / lzma / stdlib zstd decompressors share this interface."""

    def __init__(self, factory: Callable[[], object]):
        super().__init__(factory())

    def pull(self, data: bytes, limit: int) -> bytes:
        out = self._d.decompress(data, limit)
        done = self._d.eof or self._d.needs_input
        self.again = None if done else b""
        return out


_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    zlib.error, lzma.LZMAError, OSError, EOFError, ValueError)


class Decompressor:
    """Decode a stream of one or more concatenated members of one codec."""

    def __init__(self, name: str, new_member: Callable[[], _Member]):
        self._name = name
        self._new_member = new_member
        self._member: _Member | None = None
        self._members_done = 0

    def iter_decompress(self, data: bytes,
                        limit: int = PIECE_SIZE) -> Iterator[bytes]:
        """Yield the output for *data* in pieces of at most *limit* bytes.

        Why: a small compressed input can expand enormously (holes of a VM
        image); bounded pieces keep memory bounded.
        """
        while True:
            if self._member is None:
                if not data:
                    return
                self._member = self._new_member()
            try:
                out = self._member.pull(data, limit)
            except _DECODE_ERRORS as exc:
                raise CorruptStream(
                    f"{self._name}: damaged compressed data ({exc})") from None
            if out:
                yield out
            if self._member.eof:
                data = self._member.unused_data
                self._member = None
                self._members_done += 1
                continue
            if self._member.again is None:
                return
            data = self._member.again

    def decompress(self, data: bytes) -> bytes:
        return b"".join(self.iter_decompress(data))

    def finish(self) -> bytes:
        """Check that the stream ended at the end of a complete member."""
        if self._member is not None:
            raise CorruptStream(
                f"{self._name}: compressed data is truncated "
                "(no end of stream)")
        if self._members_done == 0:
            raise CorruptStream(f"{self._name}: compressed data is empty")
        return b""


@dataclass(frozen=True)
class Codec:
    """One compression format; ``programs`` are the filter names choosing it."""

    name: str
    programs: tuple[str, ...]
    default_level: int
    levels: range
    _make_compressor: Callable[[int], Compressor] = field(repr=False)
    _make_member: Callable[[], _Member] = field(repr=False)

    def compressor(self, level: int | None = None) -> Compressor:
        if level is None:
            level = self.default_level
        if level not in self.levels:
            raise ValueError(
                f"{self.name}: compression level {level} outside "
                f"{self.levels.start}..{self.levels.stop - 1}")
        return self._make_compressor(level)

    def decompressor(self) -> Decompressor:
        return Decompressor(self.name, self._make_member)

    def compress_block(self, data: bytes, level: int | None = None) -> bytes:
        """One complete, independent member: blocks compress in parallel threads
        (the codecs release the GIL) and their concatenation is one valid stream."""
        c = self.compressor(level)
        return c.compress(data) + c.flush()


def _xz_member(fmt: int) -> Callable[[], _Member]:
    return lambda: _BufferedMember(lambda: lzma.LZMADecompressor(format=fmt))


def _builtin_codecs() -> list[Codec]:
    return [
        Codec("gzip", ("gzip", "pigz"), 6, range(0, 10),
              lambda lvl: zlib.compressobj(lvl, zlib.DEFLATED, 31),
              lambda: _ZlibMember(31)),
        # bzip2 the program defaults to -9 (900k blocks); match it.
        Codec("bzip2", ("bzip2", "pbzip2", "lbzip2"), 9, range(1, 10),
              bz2.BZ2Compressor,
              lambda: _BufferedMember(bz2.BZ2Decompressor)),
        Codec("xz", ("xz", "pixz"), 6, range(0, 10),
              lambda lvl: lzma.LZMACompressor(format=lzma.FORMAT_XZ,
                                              preset=lvl),
              _xz_member(lzma.FORMAT_XZ)),
        # `lzma` the program writes the legacy .lzma ("alone") format.
        Codec("lzma", ("lzma",), 6, range(0, 10),
              lambda lvl: lzma.LZMACompressor(format=lzma.FORMAT_ALONE,
                                              preset=lvl),
              _xz_member(lzma.FORMAT_ALONE)),
    ]


class _ZstandardMember(_MemberBase):
    """Adapter for the third-party ``zstandard`` module (one frame each)."""

    def __init__(self, module):
        super().__init__(module.ZstdDecompressor().decompressobj())

    def pull(self, data: bytes, limit: int) -> bytes:
        # No output limit in this API; one call consumes all of *data*.
        self.again = None
        return self._d.decompress(data)


def _zstd_codec() -> Codec | None:
    """zstd from the standard library (3.14+) or ``zstandard``, if present."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        zstd = None
    if zstd is not None:
        return Codec(
            "zstd", ("zstd", "zstdmt"), 3, range(1, 20),
            lambda lvl: zstd.ZstdCompressor(level=lvl),
            lambda: _BufferedMember(zstd.ZstdDecompressor))
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError:
        return None
    if not hasattr(zstandard.ZstdDecompressor().decompressobj(), "eof"):
        return None  # too old to detect the end of a frame
    return Codec(
        "zstd", ("zstd", "zstdmt"), 3, range(1, 20),
        lambda lvl: zstandard.ZstdCompressor(level=lvl).compressobj(),
        lambda: _ZstandardMember(zstandard))


def _registry() -> dict[str, Codec]:
    codecs = _builtin_codecs()
    zstd = _zstd_codec()
    if zstd is not None:
        codecs.append(zstd)
    return {codec.name: codec for codec in codecs}


#: Available codecs by canonical name.
CODECS: dict[str, Codec] = _registry()

#: Accepted filter program names -> codec.
PROGRAMS: dict[str, Codec] = {
    program: codec for codec in CODECS.values() for program in codec.programs}


def codec_for_filter(untrusted_filter: str) -> Codec:
    """Return the codec chosen by a ``compression-filter`` value.

    The value is a program name, optionally followed by options (``gzip
    -3``). Paths are refused: the name selects a codec, nothing is executed.
    """
    allowed = ", ".join(sorted(PROGRAMS))
    words = [w for w in str(untrusted_filter).split(" ") if w] or [""]
    program, options = words[0], words[1:]
    if (not _WORD.fullmatch(program) or program.startswith("-")
            or not all(_WORD.fullmatch(opt) for opt in options)
            or program not in PROGRAMS):
        raise UnknownFilter(
            f"unsupported compression filter {untrusted_filter!r} "
            f"(allowed programs: {allowed})")
    return PROGRAMS[program]
