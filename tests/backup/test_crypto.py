"""qubes.backup.crypto against the real openssl CLI (BACKUP-FORMAT.md §7.2-7.3)."""

import hashlib
import os
import subprocess

import pytest

from qubes.backup import crypto
from qubes.backup.crypto import (
    DecryptError, Decryptor, Encryptor, MalformedHmac, UnsupportedAlgorithm)

PASSWORD = "pässwörd 123"  # non-ASCII: the key is the UTF-8 bytes
PW = PASSWORD.encode("utf-8")
SALT = bytes.fromhex("0011223344556677")


def openssl(*args: str, data: bytes = b"") -> bytes:
    return subprocess.run(["openssl", *args], input=data, check=True,
                          capture_output=True).stdout


def openssl_enc(data: bytes, algorithm: str = "aes-256-cbc",
                salt: bytes | None = SALT) -> bytes:
    """`openssl enc -e`; with an explicit salt, as a full OpenSSL stream.

    OpenSSL 3 omits the ``Salted__`` header when ``-S`` is given (1.x wrote
    it), so it is prepended here to compare whole streams.
    """
    args = ["enc", "-e", "-" + algorithm, "-md", "MD5", "-pass",
            "pass:" + PASSWORD]
    if salt is None:
        return openssl(*args, data=data)
    out = openssl(*args, "-S", salt.hex(), data=data)
    if not out.startswith(b"Salted__"):
        out = b"Salted__" + salt + out
    return out


def encrypt(data: bytes, algorithm: str = "aes-256-cbc",
            pieces: int = 1) -> bytes:
    enc = Encryptor(PW, algorithm, salt=SALT)
    step = max(1, len(data) // pieces)
    out = b"".join(enc.update(data[i:i + step])
                   for i in range(0, len(data), step))
    return out + enc.finalize()


def decrypt(ciphertext: bytes, step: int, password: bytes = PW,
            algorithm: str = "aes-256-cbc") -> bytes:
    dec = Decryptor(password, algorithm)
    out = b"".join(dec.update(ciphertext[i:i + step])
                   for i in range(0, len(ciphertext), step))
    return out + dec.finalize()


@pytest.mark.parametrize("algorithm", sorted(crypto.CIPHERS))
def test_evp_bytes_to_key_matches_openssl(algorithm):
    out = openssl("enc", "-" + algorithm, "-md", "MD5", "-P", "-S",
                  SALT.hex(), "-pass", "pass:" + PASSWORD).decode()
    fields = {key.strip(): value.strip() for key, _, value in
              (line.partition("=") for line in out.splitlines())}
    key_len = crypto.CIPHERS[algorithm]
    derived = crypto.evp_bytes_to_key_md5(PW, SALT, key_len + 16)
    assert derived[:key_len].hex().upper() == fields["key"]
    assert derived[key_len:].hex().upper() == fields["iv"]


def test_evp_bytes_to_key_spec_formula():
    d1 = hashlib.md5(PW + SALT).digest()
    d2 = hashlib.md5(d1 + PW + SALT).digest()
    d3 = hashlib.md5(d2 + PW + SALT).digest()
    assert crypto.evp_bytes_to_key_md5(PW, SALT, 48) == d1 + d2 + d3
    assert crypto.evp_bytes_to_key_md5(PW, SALT, 20) == (d1 + d2)[:20]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 100_003])
def test_encryptor_equals_openssl_byte_for_byte(size):
    data = os.urandom(size)
    expected = openssl_enc(data)
    assert encrypt(data) == expected
    assert encrypt(data, pieces=7) == expected
    assert len(expected) == 16 + size + (16 - size % 16)


@pytest.mark.parametrize("algorithm", ["aes-128-cbc", "aes-192-cbc"])
def test_encryptor_other_ciphers_equal_openssl(algorithm):
    data = os.urandom(1000)
    assert encrypt(data, algorithm) == openssl_enc(data, algorithm)


def test_encryptor_output_starts_with_salt_header():
    enc = Encryptor(PW, salt=SALT)
    assert enc.update(b"x") == b"Salted__" + SALT
    random_salt = Encryptor(PW).update(b"")
    assert random_salt[:8] == b"Salted__" and len(random_salt) == 16
    assert Encryptor(PW).update(b"")[8:] != random_salt[8:]


def test_openssl_decrypts_our_output():
    data = os.urandom(50_000)
    enc = Encryptor(PW)
    ciphertext = enc.update(data) + enc.finalize()
    plain = openssl("enc", "-d", "-aes-256-cbc", "-md", "MD5", "-pass",
                    "pass:" + PASSWORD, data=ciphertext)
    assert plain == data


@pytest.mark.parametrize("step", [1, 3, 16, 17, 1000, 1 << 20])
def test_decryptor_reads_openssl_output_in_any_pieces(step):
    data = os.urandom(5000)
    ciphertext = openssl_enc(data, salt=None)  # openssl picks the salt
    assert decrypt(ciphertext, step) == data


@pytest.mark.parametrize("size", [0, 15, 16, 32])
def test_decryptor_block_boundaries(size):
    data = b"a" * size
    assert decrypt(openssl_enc(data), 1) == data


def test_decryptor_other_cipher():
    data = os.urandom(777)
    assert decrypt(openssl_enc(data, "aes-128-cbc"), 5,
                   algorithm="aes-128-cbc") == data


def test_wrong_password_is_bad_padding():
    ciphertext = encrypt(b"some plaintext that is long enough" * 3)
    with pytest.raises(DecryptError, match="wrong passphrase"):
        decrypt(ciphertext, 7, password=b"not the password")


def test_damaged_last_block_is_bad_padding():
    ciphertext = bytearray(encrypt(b"x" * 100))
    ciphertext[-20] ^= 0xFF  # second to last block: garbles the padding
    ciphertext[-1] ^= 0x55
    with pytest.raises(DecryptError, match="damaged data"):
        decrypt(bytes(ciphertext), 1000)


def test_missing_salted_header():
    with pytest.raises(DecryptError, match="Salted__"):
        decrypt(b"NotSalt_" + bytes(40), 1)
    dec = Decryptor(PW)
    with pytest.raises(DecryptError, match="Salted__"):
        dec.update(b"Salx")  # refused as soon as the magic cannot match


@pytest.mark.parametrize("stream", [b"", b"Salted__", b"Salted__1234567"])
def test_stream_shorter_than_header(stream):
    dec = Decryptor(PW)
    assert dec.update(stream) == b""
    with pytest.raises(DecryptError, match="shorter"):
        dec.finalize()


def test_truncated_ciphertext():
    ciphertext = encrypt(os.urandom(100))
    with pytest.raises(DecryptError, match="truncated"):
        decrypt(ciphertext[:-5], 10)
    with pytest.raises(DecryptError):
        decrypt(ciphertext[:16], 10)  # header only, no block


def test_unknown_cipher():
    with pytest.raises(UnsupportedAlgorithm, match="des-ede3"):
        Encryptor(PW, "des-ede3-cbc")
    with pytest.raises(UnsupportedAlgorithm):
        Decryptor(PW, "aes-256-gcm")
    assert crypto.cipher_key_length("AES-256-CBC") == 32


def test_encryptor_rejects_bad_salt():
    with pytest.raises(ValueError):
        Encryptor(PW, salt=b"short")


# --- HMAC -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(crypto.HMAC_ALGORITHMS))
def test_hmac_matches_openssl_dgst(name):
    data = os.urandom(3000)
    printed = openssl("dgst", "-" + name.lower(), "-hmac", PASSWORD,
                      data=data)
    mac = crypto.new_hmac(name, PW)
    mac.update(data)
    assert crypto.parse_hmac_file(printed) == mac.hexdigest()
    ours = crypto.format_hmac_file(mac.hexdigest())
    assert ours == b"(stdin)= " + mac.hexdigest().encode() + b"\n"
    assert crypto.parse_hmac_file(ours) == mac.hexdigest()


def test_openssl3_hmac_file_size_for_sha512():
    printed = openssl("dgst", "-sha512", "-hmac", PASSWORD, data=b"x")
    assert len(printed) == 146 and printed.startswith(b"SHA2-512(stdin)= ")


@pytest.mark.parametrize("name,expected", [
    ("SHA512", "sha512"), ("sha512", "sha512"), ("Sha256", "sha256"),
    ("SHA1", "sha1"), ("md5", "md5"), ("SHA2-512", "sha512"),
    ("sha2-224", "sha224"), ("SHA384", "sha384")])
def test_hmac_algorithm_names(name, expected):
    assert crypto.hmac_algorithm(name) == expected


@pytest.mark.parametrize("name", ["", "scrypt", "sha3-512", "whirlpool",
                                  "SHA512 ", "sha-512"])
def test_hmac_algorithm_unsupported(name):
    with pytest.raises(UnsupportedAlgorithm) as info:
        crypto.hmac_algorithm(name)
    assert isinstance(info.value, ValueError)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("text", [
    b"(stdin)= 00ff\n", b"(stdin)= 00ff", b"SHA2-512(stdin)= 00ff\n",
    b"HMAC-SHA512(stdin)= 00ff\n", b"= 00ff\n"])
def test_parse_hmac_file_accepts(text):
    assert crypto.parse_hmac_file(text) == "00ff"


@pytest.mark.parametrize("text", [
    b"", b"\n", b"(stdin)= \n", b"(stdin)=00ff\n", b"(stdin)=  00ff\n",
    b"(stdin)= 00FF\n", b"(stdin)= 0ff\n", b"(stdin)= 00ff\n\n",
    b"(stdin)= 00ff\r\n", b"(stdin)= 00ff\n(stdin)= 00ff\n",
    b"(std in)= 00ff\n", b"(stdin)= 00ff extra\n", b"(stdin)= 00gg\n",
    "(stdïn)= 00ff\n".encode(), b"(stdin)= " + b"0" * 4096 + b"\n"])
def test_parse_hmac_file_rejects(text):
    with pytest.raises(MalformedHmac):
        crypto.parse_hmac_file(text)


def test_format_hmac_file_lowercases_and_validates():
    assert crypto.format_hmac_file("00FF") == b"(stdin)= 00ff\n"
    for bad in ["", "0", "zz", "00 ff", "00\n"]:
        with pytest.raises(ValueError):
            crypto.format_hmac_file(bad)


def test_digests_equal():
    assert crypto.digests_equal("00ff", "00ff")
    assert not crypto.digests_equal("00ff", "00FF")
    assert not crypto.digests_equal("00ff", "00ff00")
    assert not crypto.digests_equal("00ff", "0ä")
