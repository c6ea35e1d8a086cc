"""Restore or verify a format-3 backup: authenticate, plan, extract, then register.

Order of work (BACKUP-FORMAT.md §9): header authenticated and parsed;
qubes.xml authenticated, decoded and parsed; a plan (which VMs, names,
templates, netvms) made and checked before anything is written; one pass
over the data members, each chunk authenticated before it is decoded;
data extracted into a staging directory inside the target filesystem;
a VM registered in qubes.xml only after all of its data is in place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from qubes.backup import compress, crypto
from qubes.backup.errors import BackupError
from qubes.backup.extract import InnerExtractor, ItemDecoder
from qubes.backup.format import QUBES_XML_MAX, HeaderError, parse_header
from qubes.backup.reader import OuterReader, authenticate_header, read_hmac
from qubes.backup.plan import PlanOptions


@dataclass(frozen=True)
class HomeOptions:
    """Where dom0's home goes: `<parent>/home-restore-<timestamp>/dom0-home/<user>/`."""

    user: str
    parent: str
    skip: bool = False
    ignore_username_mismatch: bool = False


@dataclass(frozen=True)
class RestoreOptions:
    passphrase: bytes
    plan: PlanOptions = PlanOptions()
    tmpdir: str | None = None
    home: HomeOptions | None = None

    @property
    def verify_only(self) -> bool:
        return self.plan.verify_only


@dataclass
class RestoreResult:
    restored: list[str] = field(default_factory=list)
    failed: dict = field(default_factory=dict)


class BackupSource:
    """An authenticated, parsed backup: header, embedded collection, remaining stream."""

    def __init__(self, stream: BinaryIO, label: str, passphrase: bytes):
        self.reader = OuterReader(stream, label)
        self.passphrase = passphrase
        header_bytes, self.hmac_algorithm = authenticate_header(self.reader, passphrase)
        try:
            self.header = parse_header(header_bytes)
        except HeaderError as exc:
            raise BackupError(f"backup-header: {exc}", "backup-header") from None
        self._check_header()
        self.collection = self._read_collection()

    def _check_header(self) -> None:
        h = self.header
        if h.version != 3:
            raise BackupError(f"backup format version {h.version} is not supported by this "
                              "tool yet (it restores format 3)", "backup-header")
        if h.hmac_algorithm.upper() != self.hmac_algorithm.upper():
            raise BackupError(f"backup-header says hmac-algorithm={h.hmac_algorithm} but was "
                              f"authenticated with {self.hmac_algorithm}", "backup-header")
        try:
            self.codec = compress.codec_for_filter(h.compression_filter) if h.compressed else None
            if h.encrypted:
                crypto.cipher_key_length(h.crypto_algorithm)
        except (ValueError, crypto.UnsupportedAlgorithm) as exc:
            hint = ""
            if h.compression_filter and h.compression_filter.split()[0] in ("zstd", "zstdmt"):
                hint = " (install the Python package 'zstandard' to read zstd backups)"
            raise BackupError(f"backup-header: {exc}{hint}", "backup-header") from None

    def decoder(self, extractor: InnerExtractor) -> ItemDecoder:
        algo = self.header.crypto_algorithm if self.header.encrypted else None
        return ItemDecoder(extractor, self.passphrase, algo, self.codec)

    def _read_collection(self):
        from qubes.store.codec import load_collection

        member = self.reader.next()
        if member is None or member.name != "qubes.xml.000":
            raise BackupError("the backup has no qubes.xml.000 after its header",
                              member.name if member else None)
        untrusted = self.reader.read_small(member, QUBES_XML_MAX + 65536)
        expected = read_hmac(self.reader, member.name)
        mac = crypto.new_hmac(self.hmac_algorithm, self.passphrase)
        mac.update(untrusted)
        if not crypto.digests_equal(mac.hexdigest(), expected):
            raise BackupError("member 'qubes.xml.000': HMAC verification failed "
                              "(corrupted or modified)", member.name)
        files: dict = {}
        extractor = InnerExtractor("qubes.xml", "", None, capture=files,
                                   capture_limit=QUBES_XML_MAX, single=True)
        decoder = self.decoder(extractor)
        try:
            decoder.feed(untrusted)
            decoder.finish()
        except (crypto.DecryptError, compress.CorruptStream) as exc:
            extractor.abort()
            raise BackupError(f"member 'qubes.xml.000': {exc}", member.name) from None
        if "qubes.xml" not in files:
            raise BackupError("member 'qubes.xml.000' holds no qubes.xml", member.name)
        return load_collection(files["qubes.xml"], "/nonexistent", source="qubes.xml in the backup",
                               strict=True)
