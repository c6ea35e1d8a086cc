"""The outer stream of formats 2-4: one small tar archive per member, concatenated.

`ChunkSink` cuts an item's (compressed, encrypted) stream into chunks,
spooling each to a temporary file while its HMAC is computed, then appends
`<name>.NNN` and `<name>.NNN.hmac` to the output. Temporary space: one chunk.
"""
from __future__ import annotations

import tempfile
import time
from typing import BinaryIO

from qubes.backup import crypto
from qubes.backup.format import chunk_name, hmac_name
from qubes.backup.errors import BackupOutputError
from qubes.backup.tarwriter import outer_member_header, outer_member_trailer
from qubes.util.atomicfile import describe_os_error

COPY_PIECE = 1 << 20


class OuterWriter:
    """Appends members to the backup output and counts the bytes written."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.written = 0
        self.mtime = int(time.time())

    def _write(self, data: bytes) -> None:
        try:
            self.out.write(data)
        except OSError as exc:
            raise BackupOutputError(f"cannot write the backup: {describe_os_error(exc)}") from None
        self.written += len(data)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._write(outer_member_header(name, len(data), self.mtime))
        self._write(data)
        self._write(outer_member_trailer(len(data)))

    def add_file(self, name: str, f: BinaryIO, size: int) -> None:
        self._write(outer_member_header(name, size, self.mtime))
        f.seek(0)
        left = size
        while left:
            piece = f.read(min(COPY_PIECE, left))
            if not piece:
                raise OSError(f"temporary chunk file for {name} is shorter than expected")
            self._write(piece)
            left -= len(piece)
        self._write(outer_member_trailer(size))


class ChunkSink:
    """Receives one item's final stream; emits chunks with their HMAC files."""

    def __init__(self, writer: OuterWriter, base_name: str, *, hmac_algorithm: str,
                 key: bytes, chunk_size: int, tmpdir: str | None):
        self.writer = writer
        self.base_name = base_name
        self.hmac_algorithm = hmac_algorithm
        self.key = key
        self.chunk_size = chunk_size
        self.tmpdir = tmpdir
        self.index = 0
        self.chunks: list[str] = []
        self._file = None
        self._mac = None
        self._fill = 0

    def _open(self) -> None:
        self._file = tempfile.TemporaryFile(dir=self.tmpdir, prefix="qubes-backup-chunk-")
        self._mac = crypto.new_hmac(self.hmac_algorithm, self.key)
        self._fill = 0

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        except OSError as exc:
            self.abort()
            where = self.tmpdir or tempfile.gettempdir()
            raise BackupOutputError(f"cannot write a temporary chunk in {where}: "
                                    f"{describe_os_error(exc)} (choose another place with "
                                    "--tmpdir)") from None

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._file is None:
                self._open()
            room = self.chunk_size - self._fill
            piece = view[:room]
            self._file.write(piece)
            self._mac.update(piece)
            self._fill += len(piece)
            view = view[len(piece):]
            if self._fill == self.chunk_size:
                self._emit()

    def _emit(self) -> None:
        name = chunk_name(self.base_name, self.index)
        self._file.flush()
        self.writer.add_file(name, self._file, self._fill)
        self.writer.add_bytes(hmac_name(name), crypto.format_hmac_file(self._mac.hexdigest()))
        self._file.close()
        self._file = None
        self._fill = 0
        self.chunks.append(name)
        self.index += 1

    def close(self) -> None:
        """Emit the last, partial chunk (no empty tail chunk: CASES.md B21a)."""
        if self._fill or not self.chunks:
            if self._file is None:
                self._open()
            self._emit()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
