"""Write a format-3 backup: header, qubes.xml, then every item, streamed.

Per item: our tar writer -> compressor -> OpenSSL-compatible encryption ->
chunks with HMAC files. No temporary copy of VM data beyond one chunk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from qubes.backup import compress, crypto
from qubes.backup.format import CHUNK_SIZE, Header, hmac_name
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


class _ItemPipeline:
    """tar bytes -> compress -> encrypt -> chunks."""

    def __init__(self, sink: ChunkSink, options: BackupOptions, on_input):
        self.sink = sink
        self.on_input = on_input
        self.compressor = None
        if options.compressed:
            codec = compress.codec_for_filter(options.compression_filter)
            self.compressor = codec.compressor(options.compression_level)
        self.encryptor = crypto.Encryptor(options.passphrase, options.crypto_algorithm) \
            if options.encrypted else None

    def write(self, data: bytes) -> None:
        self.on_input(len(data))
        if self.compressor is not None:
            data = self.compressor.compress(data)
        if self.encryptor is not None and data:
            data = self.encryptor.update(data)
        if data:
            self.sink.write(data)

    def close(self) -> None:
        tail = self.compressor.flush() if self.compressor is not None else b""
        if self.encryptor is not None:
            tail = self.encryptor.update(tail) + self.encryptor.finalize()
        if tail:
            self.sink.write(tail)
        self.sink.close()


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
                  add) -> None:
    """One inner archive through the pipeline; `add(tar)` puts the members in."""
    sink = ChunkSink(writer, item.name, hmac_algorithm=options.hmac_algorithm,
                     key=options.passphrase, chunk_size=options.chunk_size,
                     tmpdir=options.tmpdir)
    pipeline = _ItemPipeline(sink, options, on_input)
    tar = TarWriter(pipeline.write)
    try:
        add(tar)
        tar.close()
        pipeline.close()
    except OSError as exc:  # output errors arrive as BackupOutputError: this is a read
        raise QubesError(f"VM '{item.vm}': cannot read {exc.filename or item.source}: "
                         f"{describe_os_error(exc)}") from None
    finally:
        sink.abort()


def _add_item(item: Item):
    def add(tar: TarWriter) -> None:
        if os.path.isdir(item.source):
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
    done = 0

    def on_input(n: int) -> None:
        nonlocal done
        done += n
        reporter.progress(min(done, total), total)

    xml_item = Item("", "qubes.xml", "", "qubes.xml")
    _write_stream(writer, xml_item, options, lambda n: None,
                  lambda tar: tar.add_bytes("qubes.xml", qubes_xml))
    for item in plan.items:
        _write_stream(writer, item, options, on_input, _add_item(item))
    out.flush()
    reporter.progress(total, total)
    return writer.written
