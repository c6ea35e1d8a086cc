"""In-process cryptography of backup format 3 (BACKUP-FORMAT.md §7.2, §7.3).

Encryption is the OpenSSL ``enc`` file format (``Salted__`` + salt, key and IV
from EVP_BytesToKey with MD5 and one iteration, CBC with PKCS#7 padding), so
that ``openssl enc -d -md MD5`` keeps working as the emergency procedure. HMAC
files are what ``openssl dgst -<H> -hmac <P>`` prints. Nothing here starts a
process: the passphrase never appears on a command line.

Exceptions are plain ``Exception``/``ValueError`` subclasses; callers map them
to user-facing errors.

May import: the standard library and ``cryptography``.
"""

from __future__ import annotations

from qubes.backup.format import HMAC_FILE_MAX

import hashlib
import hmac
import os
import re

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SALT_MAGIC = b"Salted__"
SALT_SIZE = 8
HEADER_SIZE = len(SALT_MAGIC) + SALT_SIZE  # 16
BLOCK_SIZE = 16

#: ``crypto-algorithm`` header values we implement -> key length in bytes.
CIPHERS = {
    "aes-256-cbc": 32,
    "aes-192-cbc": 24,
    "aes-128-cbc": 16,
}

#: ``hmac-algorithm`` header values (``openssl dgst -<name>``) -> hashlib name.
HMAC_ALGORITHMS = {
    "SHA512": "sha512",
    "SHA384": "sha384",
    "SHA256": "sha256",
    "SHA224": "sha224",
    "SHA1": "sha1",
    "MD5": "md5",
}

# OpenSSL 3 spells the SHA-2 family "SHA2-512" etc.; `openssl dgst -sha2-512`
# works there, so a header written by such a tool is still meaningful.
_HMAC_ALIASES = {
    "SHA2-512": "SHA512",
    "SHA2-384": "SHA384",
    "SHA2-256": "SHA256",
    "SHA2-224": "SHA224",
}

# `<label>= <hex>`: label as printed by any OpenSSL version, e.g. `(stdin)`,
# `SHA2-512(stdin)`, `HMAC-SHA512(stdin)`; printable ASCII without space or '='.
_HMAC_LINE = re.compile(r"[!-<>-~]*= ((?:[0-9a-f]{2})+)\n?")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class DecryptError(Exception):
    """The encrypted stream cannot be decrypted (wrong key or damaged data)."""


class UnsupportedAlgorithm(ValueError):
    """An algorithm name from a header or option that we do not implement."""


class MalformedHmac(ValueError):
    """An HMAC file that is not one ``<label>= <hex>`` line."""


def evp_bytes_to_key_md5(password: bytes, salt: bytes, n: int) -> bytes:
    """Return *n* bytes of OpenSSL EVP_BytesToKey(MD5, count=1) output.

    Why MD5 and one iteration: that is what `openssl enc` used when format 3
    was defined; any other KDF breaks every existing reader.
    """
    out = b""
    digest = b""
    while len(out) < n:
        digest = hashlib.md5(digest + password + salt).digest()
        out += digest
    return out[:n]


def cipher_key_length(algorithm: str) -> int:
    """Key length for a ``crypto-algorithm`` name; raise UnsupportedAlgorithm."""
    try:
        return CIPHERS[algorithm.lower()]
    except (KeyError, AttributeError):
        allowed = ", ".join(sorted(CIPHERS))
        raise UnsupportedAlgorithm(
            f"unsupported crypto-algorithm {algorithm!r} (supported: {allowed})"
        ) from None


def _aes_cbc(password: bytes, algorithm: str, salt: bytes) -> Cipher:
    key_len = cipher_key_length(algorithm)
    key_iv = evp_bytes_to_key_md5(password, salt, key_len + BLOCK_SIZE)
    return Cipher(algorithms.AES(key_iv[:key_len]), modes.CBC(key_iv[key_len:]))


class Encryptor:
    """Streaming `openssl enc -e -<algorithm> -md MD5` over bytes pieces."""

    def __init__(self, password: bytes, algorithm: str = "aes-256-cbc",
                 salt: bytes | None = None):
        if salt is None:
            salt = os.urandom(SALT_SIZE)
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes, not {len(salt)}")
        self._ctx = _aes_cbc(password, algorithm, salt).encryptor()
        self._prefix = SALT_MAGIC + salt
        self._length = 0
        self._finalized = False

    def update(self, data: bytes) -> bytes:
        if self._finalized:
            raise ValueError("Encryptor already finalized")
        self._length += len(data)
        out = self._prefix + self._ctx.update(data)
        self._prefix = b""
        return out

    def finalize(self) -> bytes:
        """Emit the PKCS#7-padded last block (always 1..16 bytes of padding)."""
        if self._finalized:
            raise ValueError("Encryptor already finalized")
        self._finalized = True
        pad = BLOCK_SIZE - self._length % BLOCK_SIZE
        out = self._prefix + self._ctx.update(bytes([pad]) * pad)
        self._prefix = b""
        return out + self._ctx.finalize()


class Decryptor:
    """Streaming `openssl enc -d -<algorithm> -md MD5` over bytes pieces.

    Input may arrive in pieces of any size; the 16-byte header is buffered
    until complete. Plaintext is released as it is decrypted, except the last
    block, which is held back until ``finalize`` checks its padding.
    """

    def __init__(self, password: bytes, algorithm: str = "aes-256-cbc"):
        cipher_key_length(algorithm)  # refuse unknown names before any data
        self._password = password
        self._algorithm = algorithm
        self._header = b""
        self._ctx = None
        self._unpadder = padding.PKCS7(BLOCK_SIZE * 8).unpadder()

    def update(self, data: bytes) -> bytes:
        if self._ctx is None:
            self._header += data
            magic = self._header[:len(SALT_MAGIC)]
            if not SALT_MAGIC.startswith(magic):
                raise DecryptError(
                    "encrypted data does not start with 'Salted__' "
                    "(not an OpenSSL enc stream, or damaged)")
            if len(self._header) < HEADER_SIZE:
                return b""
            salt = self._header[len(SALT_MAGIC):HEADER_SIZE]
            data = self._header[HEADER_SIZE:]
            self._header = b""
            self._ctx = _aes_cbc(self._password, self._algorithm, salt).decryptor()
        return self._unpadder.update(self._ctx.update(data))

    def finalize(self) -> bytes:
        if self._ctx is None:
            raise DecryptError(
                "encrypted data is shorter than the 16-byte OpenSSL header")
        try:
            last = self._ctx.finalize()
        except ValueError:
            raise DecryptError(
                "encrypted data length is not a multiple of the block size "
                "(truncated or damaged data)") from None
        try:
            return self._unpadder.update(last) + self._unpadder.finalize()
        except ValueError:
            raise DecryptError(
                "bad padding after decryption: wrong passphrase or key, "
                "or damaged data") from None


def hmac_algorithm(name: str) -> str:
    """Map a header ``hmac-algorithm`` value to a hashlib name.

    Why case-insensitive: OpenSSL accepts `-sha512` and `-SHA512` alike, and
    R2/R3 headers carry whatever spelling the user typed.
    """
    key = name.upper() if isinstance(name, str) else ""
    key = _HMAC_ALIASES.get(key, key)
    try:
        return HMAC_ALGORITHMS[key]
    except KeyError:
        allowed = ", ".join(HMAC_ALGORITHMS)
        raise UnsupportedAlgorithm(
            f"unsupported hmac-algorithm {name!r} (supported: {allowed})"
        ) from None


def new_hmac(algorithm: str, key: bytes) -> hmac.HMAC:
    """HMAC object for a header algorithm name; *key* is the UTF-8 passphrase."""
    return hmac.new(key, digestmod=hmac_algorithm(algorithm))


def format_hmac_file(hexdigest: str) -> bytes:
    """Bytes of an HMAC file as OpenSSL 1.0 printed it: ``(stdin)= <hex>\\n``."""
    if not isinstance(hexdigest, str) or not _HEX.fullmatch(hexdigest):
        raise ValueError(f"not a hex digest: {hexdigest!r}")
    return b"(stdin)= " + hexdigest.lower().encode("ascii") + b"\n"


def parse_hmac_file(untrusted: bytes) -> str:
    """Return the lowercase hex digest from the contents of an HMAC file.

    Accepts exactly one ``<label>= <hex>`` line with an optional final LF
    (OpenSSL 1.0 ``(stdin)= …``, OpenSSL 3 ``SHA2-512(stdin)= …``).
    """
    if len(untrusted) > HMAC_FILE_MAX:
        raise MalformedHmac(
            f"HMAC file is {len(untrusted)} bytes, more than {HMAC_FILE_MAX}")
    try:
        untrusted_text = untrusted.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedHmac("HMAC file is not ASCII") from None
    match = _HMAC_LINE.fullmatch(untrusted_text)
    if match is None:
        shown = untrusted_text[:80]
        raise MalformedHmac(
            f"HMAC file is not one '<label>= <lowercase hex>' line: {shown!r}")
    return match.group(1)


def digests_equal(a: str, b: str) -> bool:
    """Compare two hex digests in constant time (case-sensitive)."""
    try:
        return hmac.compare_digest(a, b)
    except TypeError:  # non-ASCII str or mixed types: never equal
        return False
