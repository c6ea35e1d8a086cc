"""Backup format definitions: the header, limits and member names (no I/O).

Writes format-3 headers exactly as R3 did (BACKUP-FORMAT.md §7.1) and parses
headers of formats 3 and 4 following §9 step 4. Parsing only checks syntax
and required keys; whether the named algorithms and compression program are
implemented is decided by the caller (``crypto.hmac_algorithm``,
``crypto.cipher_key_length``, ``compress.codec_for_filter``), right after
parsing and before any data work.

May import: the standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHUNK_SIZE = 100 * 1024 * 1024
HEADER_MAX = 4096
# Limits of one inner archive, shared by the writer (a backup we make is one we can
# restore) and the reader. Every entry's name is kept until the item ends (duplicates,
# links and parents are checked against them), about 300 bytes each: 200,000 entries
# and 64 MiB of kept names hold any dom0 home we know of (a few thousand files, rarely
# 50,000) and keep a hostile item below ~150 MiB. Callers may lower them, never raise.
MAX_HOME_ENTRIES = 200_000
MAX_NAME_BYTES = 64 << 20       # memory of the names kept for one item (sys.getsizeof)
MAX_DEPTH = 256                 # path components of a member below the item
HMAC_FILE_MAX = 4096
QUBES_XML_MAX = 1024 * 1024
MAX_VERSION = 4

HEADER_NAME = "backup-header"
HMAC_SUFFIX = ".hmac"
QUBES_XML_NAME = "qubes.xml"

_KEYS = ("version", "encrypted", "compressed", "compression-filter",
         "hmac-algorithm", "crypto-algorithm", "backup-id")
_BOOLS = {"1": True, "true": True, "yes": True,
          "0": False, "false": False, "no": False}
_TOKEN = re.compile(r"[A-Za-z0-9-]*")
# B46: a program name (not starting with '-') plus space-separated options.
_FILTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?: +[A-Za-z0-9-]+)*")
_DIGITS = re.compile(r"[0-9]+")
_CHUNK = re.compile(r"(.+)\.([0-9]{3,})")


class HeaderError(ValueError):
    """A backup header that is malformed, incomplete or too new."""


@dataclass(frozen=True)
class Header:
    """Parsed backup header; the defaults are what our format-3 writer uses."""

    version: int = 3
    encrypted: bool = True
    compressed: bool = True
    hmac_algorithm: str = "SHA512"
    crypto_algorithm: str | None = "aes-256-cbc"
    compression_filter: str | None = "gzip"
    backup_id: str | None = None

    def to_bytes(self) -> bytes:
        """Header file contents; version 3 byte-exact to R3 (§7.1), 4 per §8.1."""
        if self.version == 3:
            pairs = [("version", "3"),
                     ("hmac-algorithm", self.hmac_algorithm),
                     ("crypto-algorithm", self.crypto_algorithm),
                     ("encrypted", str(bool(self.encrypted))),
                     ("compressed", str(bool(self.compressed)))]
            if self.compressed:
                pairs.append(("compression-filter", self.compression_filter))
        elif self.version == 4:
            pairs = [("version", "4"),
                     ("encrypted", str(bool(self.encrypted))),
                     ("compressed", str(bool(self.compressed))),
                     ("compression-filter", self.compression_filter),
                     ("crypto-algorithm", self.crypto_algorithm),
                     ("hmac-algorithm", self.hmac_algorithm),
                     ("backup-id", self.backup_id)]
            pairs = [(k, v) for k, v in pairs if v is not None]
        else:
            raise ValueError(f"cannot write a format-{self.version} header")
        for key, value in pairs:
            _check_value(key, value)
        return "".join(f"{k}={v}\n" for k, v in pairs).encode("ascii")


def _check_value(key: str, value: str | None) -> None:
    """Refuse a value that would break the line syntax or is not allowed."""
    pattern = _FILTER if key == "compression-filter" else _TOKEN
    if value is None or not value or not pattern.fullmatch(value):
        raise HeaderError(f"invalid value {value!r} for header key {key!r}")
    if key == "backup-id" and value.startswith("-"):
        raise HeaderError(f"invalid value {value!r} for header key {key!r}")


def _split_lines(text: str) -> tuple[dict[str, str], HeaderError | None]:
    """Known keys and their values; the first syntax error is returned, not
    raised, so a too-new version can be reported in preference to it."""
    found: dict[str, str] = {}
    error: HeaderError | None = None
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or "=" in value:
            error = error or HeaderError(
                f"backup header line {line!r} must contain exactly one '='")
            continue
        pattern = _FILTER if key == "compression-filter" else _TOKEN
        if not _TOKEN.fullmatch(key) or not pattern.fullmatch(value):
            error = error or HeaderError(
                f"invalid characters in backup header key {key!r} "
                f"or its value {value!r}")
            continue
        if key not in _KEYS:
            # Stricter than §9 step 4 (which ignores them): a key we do not know may
            # change how the data must be read, so guessing would not be honest.
            shown = value if len(value) <= 40 else value[:37] + "..."
            error = error or HeaderError(
                f"unknown key {key!r} in backup header (value {shown!r}); this tool does "
                "not know how it changes the format")
            continue
        if key in found:
            error = error or HeaderError(
                f"duplicate key {key!r} in backup header "
                f"(values {found[key]!r} and {value!r})")
            continue
        found[key] = value
    return found, error


def _parse_version(value: str | None) -> int:
    if value is None:
        raise HeaderError(
            "backup header has no 'version' key: this looks like a format-2 "
            "backup (header without version), which this tool cannot "
            "restore; use the emergency restore procedure for format 2")
    if not _DIGITS.fullmatch(value) or int(value) < 1:
        raise HeaderError(f"invalid value {value!r} for header key 'version'")
    version = int(value)
    if version > MAX_VERSION:
        raise HeaderError(
            f"backup format version {version} is newer than supported "
            f"(max {MAX_VERSION})")
    return version


def _parse_bool(key: str, value: str) -> bool:
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise HeaderError(
            f"invalid boolean value {value!r} for header key {key!r}") from None


def _required(found: dict[str, str], key: str) -> str:
    value = found.get(key)
    if value is None:
        raise HeaderError(f"backup header lacks the required key {key!r}")
    _check_value(key, value)
    return value


def parse_header(untrusted: bytes) -> Header:
    """Parse an (already authenticated) header file; raise HeaderError."""
    if len(untrusted) > HEADER_MAX:
        raise HeaderError(
            f"backup header is {len(untrusted)} bytes, more than {HEADER_MAX}")
    try:
        untrusted_text = untrusted.decode("ascii")
    except UnicodeDecodeError:
        raise HeaderError("backup header is not ASCII text") from None
    found, syntax_error = _split_lines(untrusted_text)
    if "version" in found:
        _parse_version(found["version"])  # "too new" beats syntax (B45)
    if syntax_error is not None:
        raise syntax_error
    version = _parse_version(found.get("version"))
    encrypted = _parse_bool("encrypted", _required(found, "encrypted"))
    compressed = _parse_bool("compressed", _required(found, "compressed"))
    hmac_algorithm = _required(found, "hmac-algorithm")
    crypto = found.get("crypto-algorithm")
    if (encrypted and version < 4) or crypto is not None:
        crypto = _required(found, "crypto-algorithm")
    compression_filter = found.get("compression-filter")
    if (compressed and version >= 3) or compression_filter is not None:
        compression_filter = _required(found, "compression-filter")
    backup_id = found.get("backup-id")
    if version >= 4 or backup_id is not None:
        backup_id = _required(found, "backup-id")
    return Header(version=version, encrypted=encrypted, compressed=compressed,
                  hmac_algorithm=hmac_algorithm, crypto_algorithm=crypto,
                  compression_filter=compression_filter, backup_id=backup_id)


def chunk_name(base: str, index: int) -> str:
    """Name of piece *index* of *base*: ``.000`` … ``.999``, ``.1000`` …"""
    if index < 0:
        raise ValueError(f"negative chunk index {index}")
    return f"{base}.{index:03d}"


def split_chunk_name(name: str) -> tuple[str, int] | None:
    """``(base, index)`` for a chunk name, None if *name* is not one.

    The suffix is ``.`` and three or more ASCII digits, as ``chunk_name``
    writes it: ``.0001`` (leading zero beyond three digits) is not a chunk.
    """
    match = _CHUNK.fullmatch(name)
    if match is None:
        return None
    digits = match.group(2)
    if len(digits) > 3 and digits.startswith("0"):
        return None
    return match.group(1), int(digits)


def hmac_name(name: str) -> str:
    """Name of the HMAC member that follows *name* in format 2/3."""
    return name + HMAC_SUFFIX


def is_hmac_name(name: str) -> bool:
    return name.endswith(HMAC_SUFFIX) and len(name) > len(HMAC_SUFFIX)
