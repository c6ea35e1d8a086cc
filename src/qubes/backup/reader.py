"""Read the outer stream: members in order, each authenticated before it is parsed.

The outer stream is untrusted: names, types and sizes are checked before
any byte is used, and every data member's HMAC is checked before it is
decrypted (BACKUP-FORMAT.md §9, §10).
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from qubes.backup import crypto
from qubes.backup.errors import BackupError, WrongPassphraseError
from qubes.backup.format import HEADER_MAX, HEADER_NAME, HMAC_FILE_MAX, hmac_name
from qubes.backup.space import NoSpaceError, SpaceGuard
from qubes.backup.tarreader import (TarFormatError, TarMember, TarReader, TarSparseRefusedError,
                                    TarTruncatedError)
from qubes.util.atomicfile import describe_os_error
from qubes.util.text import printable

_COMPONENT = re.compile(r"[A-Za-z0-9._+-]+")
PIECE = 1 << 20
MAX_CHUNK = 1 << 30  # the writers cut 100 MiB; anything far larger is refused, not spooled
HMAC_ORDER = tuple(crypto.HMAC_ALGORITHMS)  # SHA512 first: the default


def check_member_name(untrusted_name: str) -> str:
    parts = untrusted_name.split("/")
    if untrusted_name.startswith("/") or not all(
            _COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts):
        raise BackupError(f"archive member '{printable(untrusted_name)}' has an unsafe name",
                          untrusted_name)
    return untrusted_name


MAX_GAP = 1 << 20  # between two outer members there are at most ~10 KiB of padding


@dataclass
class Member:
    name: str
    size: int
    entry: TarMember


class OuterReader:
    """Yields the outer members of a backup stream in order.

    Why not tarfile: its stream mode reads 10 KiB at a time and joins them,
    which cost a fifth of a large restore; TarReader hands out 1 MiB pieces.
    The outer archive is a concatenation of small archives (zero blocks
    between them), so zeros are read past, but at most MAX_GAP bytes of them:
    /dev/zero must not be read for ever. Members are plain files, so a sparse
    member is refused before its map (possibly millions of regions) is read.
    """

    def __init__(self, source: BinaryIO, label: str):
        self.label = label
        self.source = source
        self.current: str | None = None
        self._tar = TarReader(source.read, ignore_zeros=True, max_gap=MAX_GAP, sparse=False)

    @property
    def offset(self) -> int:
        """Bytes of the backup read so far."""
        return self._tar.offset

    def next(self) -> Member | None:
        try:
            entry = self._tar.next()
        except (TarTruncatedError, OSError) as exc:
            raise self._truncated(exc) from None
        except TarSparseRefusedError as exc:
            name = printable(exc.name)
            raise BackupError(f"archive member '{name}' is a sparse file, not a plain "
                              "regular file", name) from None
        except TarFormatError as exc:
            where = f"tar header at byte {self._tar.header_offset}"
            if self.current is None:
                raise BackupError(f"{self.label} is not a Qubes backup (not a tar stream: "
                                  f"{exc}; {where})") from None
            raise BackupError(f"{self.label} is not a Qubes backup or is damaged after member "
                              f"'{self.current}': {exc} ({where})") from None
        if entry is None:
            return None
        name = check_member_name(entry.name)
        if not entry.isreg() or entry.sparse is not None:
            raise BackupError(f"archive member '{name}' is not a regular file", name)
        self.current = name
        return Member(name, entry.size, entry)

    def _truncated(self, exc) -> BackupError:
        after = f" after member '{self.current}'" if self.current else ""
        return BackupError(f"{self.label} is damaged or truncated{after}: {exc}", self.current)

    def read_small(self, member: Member, limit: int) -> bytes:
        if member.size > limit:
            raise BackupError(f"archive member '{member.name}' is {member.size} bytes; "
                              f"at most {limit} are allowed", member.name)
        return b"".join(self.pieces(member))

    def pieces(self, member: Member):
        """The member's data in pieces; a short read is a truncated backup."""
        try:
            for _offset, piece in self._tar.pieces(member.entry):
                yield piece
        except (TarFormatError, OSError) as exc:
            raise self._truncated(exc) from None

    def expect(self, name: str, limit: int) -> bytes:
        member = self.next()
        if member is None:
            raise BackupError(f"{self.label} ends before member '{name}'", name)
        if member.name != name:
            raise BackupError(f"expected member '{name}', found '{member.name}'", member.name)
        return self.read_small(member, limit)


def read_hmac(reader: OuterReader, data_name: str) -> str:
    """The next member must be `<data_name>.hmac`; returns its hex digest."""
    name = hmac_name(data_name)
    raw = reader.expect(name, HMAC_FILE_MAX)
    try:
        return crypto.parse_hmac_file(raw)
    except crypto.MalformedHmac as exc:
        raise BackupError(f"member '{name}' is malformed: {exc}", name) from None


def authenticate_header(reader: OuterReader, passphrase: bytes) -> tuple[bytes, str]:
    """Read backup-header and its HMAC; returns (header bytes, algorithm) or raises."""
    first = reader.next()
    if first is None:
        raise BackupError(f"{reader.label} is empty")
    if first.name != HEADER_NAME:
        raise BackupError(f"{reader.label} has no backup header (first member '{first.name}'); "
                          "a header-less format-2 backup cannot be restored by this tool, "
                          "use the emergency procedure", first.name)
    untrusted_header = reader.read_small(first, HEADER_MAX)
    expected = read_hmac(reader, HEADER_NAME)
    for algorithm in _algorithm_order(untrusted_header):
        mac = crypto.new_hmac(algorithm, passphrase)
        mac.update(untrusted_header)
        if crypto.digests_equal(mac.hexdigest(), expected):
            return untrusted_header, algorithm
    raise WrongPassphraseError()


def _algorithm_order(untrusted_header: bytes) -> list[str]:
    """Try the algorithm the header names first (an unauthenticated hint only)."""
    order = list(HMAC_ORDER)
    match = re.search(rb"^hmac-algorithm=([A-Za-z0-9-]+)$", untrusted_header, re.M)
    if match:
        try:
            hint = match.group(1).decode("ascii")
            crypto.hmac_algorithm(hint)
            order.insert(0, hint)
        except (ValueError, UnicodeDecodeError):
            pass
    return order


class VerifiedChunk:
    """A chunk spooled to a temporary file and authenticated against its .hmac.

    With a `space` guard the spool claims its bytes first; when the guard
    refuses, the data is dropped (`no_space` says why) and the chunk is still
    authenticated, so only its item fails and the pass goes on (B13).
    """

    def __init__(self, reader: OuterReader, member: Member, algorithm: str, key: bytes,
                 tmpdir: str | None, keep: bool, space: SpaceGuard | None = None):
        self.name = member.name
        self.size = member.size
        self.no_space: NoSpaceError | None = None
        if member.size > MAX_CHUNK:
            raise BackupError(f"archive member '{member.name}' is {member.size} bytes; chunks "
                              f"of more than {MAX_CHUNK} bytes are refused", member.name)
        mac = crypto.new_hmac(algorithm, key)
        self.file = None
        try:
            if keep:
                self.file = tempfile.TemporaryFile(dir=tmpdir, prefix="qubes-restore-")
            left = member.size
            for piece in reader.pieces(member):
                mac.update(piece)
                if self.file is not None:
                    self._spool(piece, space, left)
                left -= len(piece)
            expected = read_hmac(reader, member.name)
        except OSError as exc:
            self.close()
            where = tmpdir or tempfile.gettempdir()
            try:
                st = os.statvfs(where)
                free = f", {st.f_bavail * st.f_frsize} bytes available"
            except OSError:
                free = ""
            raise BackupError(f"not enough space in {where}: chunk '{member.name}' needs "
                              f"{member.size} bytes{free} ({describe_os_error(exc)}; choose "
                              "another place with --tmpdir)" if exc.errno in (28, 122) else
                              f"cannot keep chunk '{member.name}' ({member.size} bytes) in "
                              f"{where}: {describe_os_error(exc)}", member.name) from None
        except BaseException:
            self.close()
            raise
        self.authentic = crypto.digests_equal(mac.hexdigest(), expected)

    def _spool(self, piece: bytes, space: SpaceGuard | None, left: int) -> None:
        if space is not None:
            try:
                space.claim(len(piece), f"chunk '{self.name}'", left)
            except NoSpaceError as exc:
                self.no_space = exc
                self.close()
                return
        self.file.write(piece)

    def data(self):
        self.file.seek(0)
        while True:
            piece = self.file.read(PIECE)
            if not piece:
                return
            yield piece

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
