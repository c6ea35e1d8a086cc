"""Write a format-3 backup: header, qubes.xml, then every item, streamed.

Per item: our tar writer -> compressor -> OpenSSL-compatible encryption ->
chunks with HMAC files. No temporary copy of VM data beyond one chunk.
Compression runs on every core: the stream is cut into 4 MiB blocks, each
compressed as an independent member (gzip -d, bzip2 -d and xz -d read the
concatenation as one stream); encryption, HMAC and output stay in order.
"""
from __future__ import annotations

import os
import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from qubes.backup import compress, crypto
from qubes.backup.format import CHUNK_SIZE, Header, hmac_name
from qubes.backup.hometree import HomeTree
from qubes.backup.outer import ChunkSink, OuterWriter
from qubes.backup.report import Reporter
from qubes.backup.selection import BackupPlan, Item
from qubes.backup.tarwriter import TarWriter
from qubes.errors import QubesError
from qubes.util.atomicfile import describe_os_error


@dataclass(frozen=True)
class BackupOptions:
    passphrase: bytes
    encrypted: bool = True
    compressed: bool = True
    compression_filter: str = "gzip"
    compression_level: int | None = None
    hmac_algorithm: str = "SHA512"
    crypto_algorithm: str = "aes-256-cbc"
    chunk_size: int = CHUNK_SIZE
    tmpdir: str | None = None

    def header(self) -> Header:
        return Header(version=3, encrypted=self.encrypted, compressed=self.compressed,
                      hmac_algorithm=self.hmac_algorithm,
                      crypto_algorithm=self.crypto_algorithm,
                      compression_filter=self.compression_filter if self.compressed else None)


BLOCK = 4 << 20     # input per compressed member
IN_FLIGHT = 4       # members being compressed at once: bounded memory
PROGRESS_STEP = 1 << 20


class _ItemPipeline:
    """tar bytes -> compress (blocks in parallel threads) -> encrypt -> chunks, in order."""

    def __init__(self, sink: ChunkSink, options: BackupOptions, on_input, pool):
        self.sink = sink
        self.on_input = on_input
        self.pool = pool
        self.level = options.compression_level
        self.codec = compress.codec_for_filter(options.compression_filter) \
            if options.compressed else None
        self.encryptor = crypto.Encryptor(options.passphrase, options.crypto_algorithm) \
            if options.encrypted else None
        self.block = bytearray()
        self.pending: deque = deque()
        self.members = 0

    def write(self, data: bytes) -> None:
        self.on_input(len(data))
        if self.codec is None:
            self._out(data)
            return
        self.block += data
        while len(self.block) >= BLOCK:
            self._submit(bytes(self.block[:BLOCK]))
            del self.block[:BLOCK]

    def _submit(self, block: bytes) -> None:
        self.pending.append(self.pool.submit(self.codec.compress_block, block, self.level))
        self.members += 1
        while len(self.pending) > IN_FLIGHT:
            self._out(self.pending.popleft().result())

    def _out(self, data: bytes) -> None:
        if self.encryptor is not None and data:
            data = self.encryptor.update(data)
        if data:
            self.sink.write(data)

    def close(self) -> None:
        if self.codec is not None and (self.block or not self.members):
            self._submit(bytes(self.block))
            self.block.clear()
        while self.pending:
            self._out(self.pending.popleft().result())
        if self.encryptor is not None:
            self.sink.write(self.encryptor.finalize())
        self.sink.close()

    def abort(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pending.clear()


def _add_tree(tar: TarWriter, root: str, arcroot: str) -> None:
    """A directory item: entries in sorted order, links followed (R3 --dereference)."""
    tar.add_dir(arcroot + "/", mode=os.stat(root).st_mode & 0o7777)
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        arcname = f"{arcroot}/{entry.name}"
        if entry.is_dir():
            _add_tree(tar, entry.path, arcname)
        elif entry.is_file():
            tar.add_file(entry.path, arcname)
        # dangling links and special files carry no VM data: left out


def _write_stream(writer: OuterWriter, item: Item, options: BackupOptions, on_input,
                  add, pool) -> None:
    """One inner archive through the pipeline; `add(tar)` puts the members in."""
    sink = ChunkSink(writer, item.name, hmac_algorithm=options.hmac_algorithm,
                     key=options.passphrase, chunk_size=options.chunk_size,
                     tmpdir=options.tmpdir)
    pipeline = _ItemPipeline(sink, options, on_input, pool)
    tar = TarWriter(pipeline.write)
    try:
        add(tar)
        tar.close()
        pipeline.close()
    except OSError as exc:  # output errors arrive as BackupOutputError: this is a read
        raise QubesError(f"VM '{item.vm}': cannot read {exc.filename or item.source}: "
                         f"{describe_os_error(exc)}") from None
    finally:
        pipeline.abort()
        sink.abort()


def _add_home(tar: TarWriter, home: HomeTree, arcroot: str) -> None:
    """dom0 home: links stay links with their targets verbatim (B37, B38)."""
    inodes: dict[tuple[int, int], str] = {}
    tar.add_dir(arcroot + "/", mode=home.mode)
    for entry in home.entries:
        st, arcname = entry.st, f"{arcroot}/{entry.rel}"
        if entry.target is not None:
            tar.add_symlink(arcname, entry.target, mtime=int(st.st_mtime))
        elif stat.S_ISDIR(st.st_mode):
            tar.add_dir(arcname + "/", mode=st.st_mode & 0o7777, mtime=int(st.st_mtime))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in inodes:
                tar.add_hardlink(arcname, inodes[key])
            else:
                inodes[key] = arcname
                tar.add_file(entry.path, arcname)
        # sockets, fifos and devices carry no data worth restoring


def _add_item(item: Item, home: HomeTree | None):
    def add(tar: TarWriter) -> None:
        if item.links:
            _add_home(tar, home, item.name)
        elif os.path.isdir(item.source):
            _add_tree(tar, item.source, item.name.rstrip("/"))
        else:
            tar.add_file(item.source, item.name)
    return add


def write_backup(out: BinaryIO, plan: BackupPlan, qubes_xml: bytes, options: BackupOptions,
                 reporter: Reporter) -> int:
    """Write the whole backup to `out`; returns the number of bytes written."""
    header = options.header().to_bytes()
    writer = OuterWriter(out)
    mac = crypto.new_hmac(options.hmac_algorithm, options.passphrase)
    mac.update(header)
    writer.add_bytes("backup-header", header)
    writer.add_bytes(hmac_name("backup-header"), crypto.format_hmac_file(mac.hexdigest()))

    total = plan.total_size
    done = shown = 0

    def on_input(n: int) -> None:
        nonlocal done, shown
        done += n
        if done - shown >= PROGRESS_STEP:  # a home calls this for each of its files
            shown = done
            reporter.progress(min(done, total), total)

    xml_item = Item("", "qubes.xml", "", "qubes.xml")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                            thread_name_prefix="compress") as pool:
        _write_stream(writer, xml_item, options, lambda n: None,
                      lambda tar: tar.add_bytes("qubes.xml", qubes_xml), pool)
        for item in plan.items:
            _write_stream(writer, item, options, on_input, _add_item(item, plan.home), pool)
    out.flush()
    reporter.progress(total, total)
    return writer.written
