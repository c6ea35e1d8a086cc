"""A streaming tar writer that GNU tar and Python ``tarfile`` can read.

Why our own: ``tarfile`` cannot write sparse members, and VM images are
mostly holes. Files with holes become PAX format 1.0 sparse members
(``GNU.sparse.major=1``, ``minor=0``; the data starts with the decimal sparse
map), everything else plain ustar members, with pax extended headers for long
or non-ASCII names, long link targets, sizes of 8 GiB and more, and
out-of-range times (BACKUP-FORMAT.md §2, §3.2).

Ownership: every member has uid/gid 0 and empty user/group names. Numeric ids
of the backed-up machine mean nothing where the backup is restored, and the
restore side sets ownership itself.

Also holds the helpers for the *outer* backup stream: each outer member is its
own small pax archive, like the output of ``tar -cO --posix`` appended to
the stream (§2.1).

May import: the standard library and `qubes.util`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
import time
from typing import Callable

from qubes.util.sparse import data_regions

BLOCK = 512
RECORD = 10240  # GNU tar's default record size (20 blocks)
READ_SIZE = 1024 * 1024
BATCH = 256 * 1024  # small writes gathered up to this much
OUTER_HEADER_SIZE = 3 * BLOCK  # pax header block + pax data + ustar block

_OCTAL11_MAX = 8 ** 11 - 1  # largest value of a 12-byte octal field
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")
_REGTYPE, _LNKTYPE, _SYMTYPE, _DIRTYPE, _PAXTYPE = b"0", b"1", b"2", b"5", b"x"


class FileShrankError(OSError):
    """A file got shorter while it was being archived.

    Why an error: the member header already promised the old size, and
    padding with zeros would silently store data that never existed.
    """

    def __init__(self, path: str, expected: int, got: int):
        super().__init__(
            errno.EIO,
            f"file shrank while being archived (expected {expected} bytes, "
            f"could read only {got})",
            path)


def _check_arcname(arcname: str) -> str:
    """Refuse names that would extract outside the target directory."""
    if not isinstance(arcname, str) or not arcname:
        raise ValueError(f"invalid member name {arcname!r}")
    if arcname.startswith("/"):
        raise ValueError(f"member name must be relative: {arcname!r}")
    if "\0" in arcname or ".." in arcname.split("/"):
        raise ValueError(f"invalid member name {arcname!r}")
    return arcname


def _encode(name: str) -> tuple[bytes, bool]:
    """UTF-8 bytes of *name*, and whether they are not valid UTF-8.

    Why: names from os.listdir may hold undecodable bytes as surrogates; pax
    then needs ``hdrcharset=BINARY`` to store them unchanged.
    """
    try:
        return name.encode("utf-8"), False
    except UnicodeEncodeError:
        return os.fsencode(name), True


def _fit(raw: bytes, width: int = 100) -> tuple[bytes, bool]:
    """An ASCII field value for *raw*, and whether the full value needs pax."""
    if len(raw) <= width and not _UNPRINTABLE.search(raw):
        return raw, False
    safe = bytes(b if 0x20 <= b < 0x7f else 0x5f for b in raw)  # '_'
    return safe[:width], True


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % BLOCK)


_USTAR_TAIL = b"".join([b"ustar\x0000", b"\0" * 64, _octal(0, 8), _octal(0, 8), b"\0" * 167])
_IDS = _octal(0, 8) * 2                   # uid, gid
# The checksum is the sum of all header bytes with its own field read as spaces;
# the fixed parts' share is summed once here (homes hold thousands of members).
_FIXED_SUM = sum(_USTAR_TAIL) + sum(b" " * 8)


def _ustar_block(name: bytes, typeflag: bytes, mode: int, size: int,
                 mtime: int, linkname: bytes = b"") -> bytes:
    head = b"".join([name.ljust(100, b"\0"), _octal(mode & 0o7777, 8), _IDS,
                     _octal(size, 12), _octal(mtime, 12)])
    link = typeflag + linkname.ljust(100, b"\0")
    checksum = b"%06o\0 " % (_FIXED_SUM + sum(head) + sum(link))
    return b"".join([head, checksum, link, _USTAR_TAIL])


def _pax_record(key: str, value: bytes) -> bytes:
    """One ``"<len> <key>=<value>\\n"`` record; <len> counts itself."""
    payload = b" " + key.encode("ascii") + b"=" + value + b"\n"
    length = len(payload) + 1
    while len(str(length)) + len(payload) != length:
        length = len(str(length)) + len(payload)
    return str(length).encode("ascii") + payload


def _pax_header(name: str, records: dict[str, bytes], mtime: int) -> bytes:
    data = b"".join(_pax_record(k, v) for k, v in records.items())
    # GNU tar 1.34 convention: <dir>/PaxHeaders/<base>; readers ignore it.
    head, tail = posixpath.split(name.rstrip("/"))
    pax_name, _ = _fit(_encode(f"{head or '.'}/PaxHeaders/{tail}")[0])
    mtime = mtime if 0 <= mtime <= _OCTAL11_MAX else 0
    block = _ustar_block(pax_name, _PAXTYPE, 0o644, len(data), mtime)
    return block + data + _pad(len(data))


def _member_header(name: str, typeflag: bytes, mode: int, size: int,
                   mtime: int, linkname: str = "",
                   records: dict[str, bytes] | None = None,
                   name_in_pax: bool = True) -> bytes:
    """Header block(s) of one member, preceded by a pax header when needed."""
    if (not records and not linkname and len(name) <= 100 and name.isascii()
            and name.isprintable() and size <= _OCTAL11_MAX and 0 <= mtime <= _OCTAL11_MAX):
        return _ustar_block(name.encode("ascii"), typeflag, mode, size, mtime)  # the usual
    records = dict(records or {})
    raw_name, binary = _encode(name)
    name_field, long_name = _fit(raw_name)
    if long_name and name_in_pax:
        records["path"] = raw_name
    link_field = b""
    if linkname:
        raw_link, link_binary = _encode(linkname)
        link_field, long_link = _fit(raw_link)
        if long_link:
            records["linkpath"] = raw_link
        binary = binary or link_binary
    if size > _OCTAL11_MAX:
        records["size"] = str(size).encode("ascii")
        size = 0
    if not 0 <= mtime <= _OCTAL11_MAX:
        records.setdefault("mtime", str(mtime).encode("ascii"))
        mtime = 0
    if binary:
        records = {"hdrcharset": b"BINARY", **records}
    out = _pax_header(name, records, mtime) if records else b""
    return out + _ustar_block(name_field, typeflag, mode, size, mtime,
                              link_field)


def _sparse_map(regions: list[tuple[int, int]], size: int) -> bytes:
    """The PAX 1.0 sparse map text, NUL-padded to whole blocks."""
    entries = list(regions)
    if not entries or sum(entries[-1]) < size:
        entries.append((size, 0))  # file ends in a hole: lets tar set size
    text = "%d\n" % len(entries) + "".join(
        "%d\n%d\n" % entry for entry in entries)
    raw = text.encode("ascii")
    return raw + _pad(len(raw))


class TarWriter:
    """Write a tar stream by calling *write* with successive byte strings.

    *mtime_default* (seconds) is used for directories, symlinks and hard
    links created without an explicit mtime; it defaults to now.
    """

    def __init__(self, write: Callable[[bytes], object],
                 mtime_default: int | None = None):
        self._write_fn = write
        self._offset = 0
        self._closed = False
        self._batch: list[bytes] = []
        self._batched = 0
        if mtime_default is None:
            mtime_default = time.time()
        self._mtime_default = int(mtime_default)

    @property
    def offset(self) -> int:
        """Bytes written so far."""
        return self._offset

    def _write(self, data: bytes) -> None:
        """Small pieces are gathered: a home's thousands of small files cost one call per
        BATCH bytes downstream instead of one each."""
        if self._closed:
            raise ValueError("TarWriter is closed")
        self._offset += len(data)
        if len(data) < BATCH:
            self._batch.append(data)
            self._batched += len(data)
            if self._batched < BATCH:
                return
            data = b""
        self._flush()
        if data:
            self._write_fn(data)

    def _flush(self) -> None:
        if self._batch:
            joined = b"".join(self._batch)
            self._batch.clear()
            self._batched = 0
            self._write_fn(joined)

    def _mtime(self, mtime: int | None) -> int:
        return self._mtime_default if mtime is None else int(mtime)

    def add_file(self, path: str, arcname: str) -> int:
        """Add the regular file *path* as *arcname*; return data bytes read.

        Files with holes become sparse members. Metadata comes from fstat of
        the opened file, so a symlinked *path* is stored as its target.
        """
        arcname = _check_arcname(arcname)
        if arcname.endswith("/"):
            raise ValueError(f"file member name ends with '/': {arcname!r}")
        # O_NONBLOCK: opening a FIFO by mistake must not hang the backup.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            size = st.st_size
            mode = stat.S_IMODE(st.st_mode)
            mtime = st.st_mtime_ns // 1_000_000_000
            # A file with every block allocated has no holes: skip the lseek probes.
            full = st.st_blocks * 512 >= size
            regions = [(0, size)] if full and size else data_regions(fd, size)
            if size == 0 or regions == [(0, size)]:
                header = _member_header(arcname, _REGTYPE, mode, size, mtime)
                if size <= READ_SIZE:  # one write per small file: homes hold thousands
                    data = os.pread(fd, size, 0)
                    if len(data) < size:
                        raise FileShrankError(path, size, len(data))
                    self._write(header + data + _pad(size))
                    return size
                self._write(header)
                done = self._copy(fd, path, regions)
                self._write(_pad(size))
                return done
            return self._add_sparse(fd, path, arcname, size, regions,
                                    mode, mtime)
        finally:
            os.close(fd)

    def _add_sparse(self, fd: int, path: str, arcname: str, size: int,
                    regions: list[tuple[int, int]], mode: int,
                    mtime: int) -> int:
        sparse_map = _sparse_map(regions, size)
        member_size = len(sparse_map) + sum(length for _, length in regions)
        raw_name, binary = _encode(arcname)
        records = {
            "GNU.sparse.major": b"1",
            "GNU.sparse.minor": b"0",
            "GNU.sparse.name": raw_name,
            "GNU.sparse.realsize": str(size).encode("ascii"),
        }
        if binary:
            records = {"hdrcharset": b"BINARY", **records}
        head, tail = posixpath.split(arcname)
        physical = posixpath.join(head, "GNUSparseFile.0", tail)
        # The real name travels in GNU.sparse.name; a `path` record would
        # compete with it, so the physical name is only truncated.
        self._write(_member_header(physical, _REGTYPE, mode, member_size,
                                   mtime, records=records, name_in_pax=False))
        self._write(sparse_map)
        done = self._copy(fd, path, regions)
        self._write(_pad(member_size))
        return done

    def _copy(self, fd: int, path: str,
              regions: list[tuple[int, int]]) -> int:
        """Stream *regions* of *fd* in READ_SIZE pieces; never short."""
        expected = sum(length for _, length in regions)
        done = 0
        for offset, length in regions:
            end = offset + length
            while offset < end:
                piece = os.pread(fd, min(READ_SIZE, end - offset), offset)
                if not piece:
                    raise FileShrankError(path, expected, done)
                self._write(piece)
                offset += len(piece)
                done += len(piece)
        return done

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o644,
                  mtime: int | None = None) -> None:
        """A regular member from memory (the backup's own qubes.xml)."""
        arcname = _check_arcname(arcname)
        self._write(_member_header(arcname, _REGTYPE, mode, len(data), self._mtime(mtime)))
        self._write(data)
        self._write(_pad(len(data)))

    def add_dir(self, arcname: str, mode: int = 0o755,
                mtime: int | None = None) -> None:
        arcname = _check_arcname(arcname.rstrip("/") or arcname) + "/"
        self._write(_member_header(arcname, _DIRTYPE, mode, 0,
                                   self._mtime(mtime)))

    def add_symlink(self, arcname: str, target: str,
                    mtime: int | None = None) -> None:
        """Add a symlink; *target* is stored verbatim, never rewritten."""
        arcname = _check_arcname(arcname)
        if not isinstance(target, str) or not target or "\0" in target:
            raise ValueError(f"invalid symlink target {target!r}")
        self._write(_member_header(arcname, _SYMTYPE, 0o777, 0,
                                   self._mtime(mtime), linkname=target))

    def add_hardlink(self, arcname: str, target_arcname: str) -> None:
        """Add a hard link to the earlier member *target_arcname*."""
        arcname = _check_arcname(arcname)
        target_arcname = _check_arcname(target_arcname)
        self._write(_member_header(arcname, _LNKTYPE, 0o644, 0,
                                   self._mtime(None),
                                   linkname=target_arcname))

    def close(self) -> None:
        """End the archive: two zero blocks, then pad to a whole record."""
        end = 2 * BLOCK
        self._write(b"\0" * (end + (-(self._offset + end) % RECORD)))
        self._flush()
        self._closed = True


def outer_member_header(name: str, size: int, mtime: int) -> bytes:
    """Header of a one-member outer archive for a regular file (mode 0644).

    Always OUTER_HEADER_SIZE bytes: a pax header with mtime/atime/ctime (as
    ``tar --posix`` writes) and the ustar block. Follow it with *size* data
    bytes and ``outer_member_trailer(size)``.
    """
    name = _check_arcname(name)
    stamp = str(int(mtime)).encode("ascii")
    records = {"mtime": stamp, "atime": stamp, "ctime": stamp}
    header = _member_header(name, _REGTYPE, 0o644, size, int(mtime),
                            records=records)
    if len(header) != OUTER_HEADER_SIZE:
        raise ValueError(f"outer member name too long: {name!r}")
    return header


def outer_member_trailer(size: int) -> bytes:
    """Data padding, two zero blocks and record padding after *size* bytes."""
    tail = -size % BLOCK + 2 * BLOCK
    used = OUTER_HEADER_SIZE + size + tail
    return b"\0" * (tail + (-used % RECORD))
