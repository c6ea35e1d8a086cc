"""qubes.backup.format: header bytes and parsing, chunk names (§7.1, §9)."""

import pytest

from qubes.backup import format as fmt
from qubes.backup.format import Header, HeaderError, parse_header

R3_HEADER = (b"version=3\n"
             b"hmac-algorithm=SHA512\n"
             b"crypto-algorithm=aes-256-cbc\n"
             b"encrypted=True\n"
             b"compressed=True\n"
             b"compression-filter=gzip\n")

R4_HEADER = (b"version=4\n"
             b"encrypted=True\n"
             b"compressed=True\n"
             b"compression-filter=gzip\n"
             b"hmac-algorithm=scrypt\n"
             b"backup-id=20161020T123455-1234\n")


def test_constants():
    assert fmt.CHUNK_SIZE == 104857600
    assert fmt.HEADER_MAX == fmt.HMAC_FILE_MAX == 4096
    assert fmt.QUBES_XML_MAX == 1048576
    assert fmt.MAX_VERSION == 4


def test_default_header_bytes_exact():
    data = Header().to_bytes()
    assert data == R3_HEADER
    assert len(data) == 116


def test_v3_header_without_compression_or_encryption():
    header = Header(encrypted=False, compressed=False,
                    hmac_algorithm="SHA256")
    assert header.to_bytes() == (b"version=3\nhmac-algorithm=SHA256\n"
                                 b"crypto-algorithm=aes-256-cbc\n"
                                 b"encrypted=False\ncompressed=False\n")


def test_v4_header_bytes():
    header = Header(version=4, hmac_algorithm="scrypt", crypto_algorithm=None,
                    backup_id="20161020T123455-1234")
    assert header.to_bytes() == R4_HEADER


@pytest.mark.parametrize("changes", [
    {"compression_filter": "gzip\nversion=9"}, {"hmac_algorithm": "SHA 512"},
    {"compression_filter": None}, {"crypto_algorithm": ""}, {"version": 2},
    {"version": 4, "backup_id": "-x", "hmac_algorithm": "scrypt"}])
def test_to_bytes_refuses_bad_values(changes):
    with pytest.raises(ValueError):
        Header(**changes).to_bytes()


def test_round_trip():
    for header in (Header(), Header(compression_filter="xz -9"),
                   Header(encrypted=False, compressed=False,
                          compression_filter=None),
                   Header(version=4, hmac_algorithm="scrypt",
                          crypto_algorithm=None, backup_id="id-1")):
        assert parse_header(header.to_bytes()) == header


def test_parse_r3_header():
    assert parse_header(R3_HEADER) == Header()


def test_parse_r4_header():
    header = parse_header(R4_HEADER)
    assert header.version == 4 and header.backup_id == "20161020T123455-1234"
    assert header.hmac_algorithm == "scrypt"
    assert header.crypto_algorithm is None


def test_parse_b46_filter_with_options():
    header = parse_header(R3_HEADER.replace(b"=gzip\n", b"=gzip -3\n"))
    assert header.compression_filter == "gzip -3"
    header = parse_header(R3_HEADER.replace(b"=gzip\n", b"=xz --best -T0\n"))
    assert header.compression_filter == "xz --best -T0"


@pytest.mark.parametrize("value", [b"1", b"true", b"TRUE", b"Yes"])
def test_parse_true(value):
    text = R3_HEADER.replace(b"encrypted=True", b"encrypted=" + value)
    assert parse_header(text).encrypted is True


@pytest.mark.parametrize("value", [b"0", b"false", b"False", b"NO"])
def test_parse_false(value):
    text = R3_HEADER.replace(b"compressed=True", b"compressed=" + value)
    header = parse_header(text)
    assert header.compressed is False
    assert header.compression_filter == "gzip"  # kept when present


def test_unencrypted_needs_no_crypto_algorithm():
    text = (b"version=3\nhmac-algorithm=SHA1\nencrypted=False\n"
            b"compressed=False\n")
    header = parse_header(text)
    assert (header.encrypted, header.compressed) == (False, False)
    assert header.crypto_algorithm is None
    assert header.compression_filter is None


def test_empty_lines_ignored_unknown_keys_refused():
    assert parse_header(b"\n" + R3_HEADER + b"\n") == Header()
    with pytest.raises(HeaderError, match="unknown key 'future-key'.*'abc'"):
        parse_header(R3_HEADER + b"future-key=abc\n")


def test_no_trailing_newline():
    assert parse_header(R3_HEADER.rstrip(b"\n")) == Header()


@pytest.mark.parametrize("text,words", [
    (b"version=3\nencrypted=maybe\n", ["encrypted", "maybe"]),
    (R3_HEADER + b"encrypted=False\n", ["duplicate", "encrypted"]),
    (R3_HEADER + b"version=3\n", ["duplicate", "version"]),
    (R3_HEADER + b"a=b=c\n", ["exactly one", "a=b=c"]),
    (R3_HEADER + b"novalue\n", ["exactly one", "novalue"]),
    (R3_HEADER + b"key=va lue\n", ["key", "va lue"]),
    (R3_HEADER + b"hmac-algorithm=SHA 512\n", ["hmac-algorithm"]),
    (R3_HEADER.replace(b"=gzip\n", b"=/usr/bin/gzip\n"),
     ["compression-filter", "/usr/bin/gzip"]),
    (R3_HEADER.replace(b"=gzip\n", b"=-d\n"), ["compression-filter", "-d"]),
    (R3_HEADER.replace(b"=gzip\n", b"=gzip;rm\n"), ["gzip;rm"]),
    (R3_HEADER.replace(b"=gzip\n", b"=gzip \n"), ["compression-filter"]),
    (R3_HEADER.replace(b"=gzip\n", b"=\n"), ["compression-filter"]),
    (R3_HEADER.replace(b"version=3", b"version=three"), ["version", "three"]),
    (R3_HEADER.replace(b"version=3", b"version=0"), ["version", "'0'"]),
    (R3_HEADER.replace(b"True\n", b"True\r\n"), ["True\\r"]),
])
def test_parse_errors_name_key_and_value(text, words):
    with pytest.raises(HeaderError) as info:
        parse_header(text)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("missing", [b"encrypted", b"compressed",
                                     b"hmac-algorithm", b"crypto-algorithm",
                                     b"compression-filter"])
def test_required_keys_v3(missing):
    lines = [line for line in R3_HEADER.split(b"\n")
             if not line.startswith(missing + b"=")]
    with pytest.raises(HeaderError, match=missing.decode()):
        parse_header(b"\n".join(lines))


def test_required_backup_id_v4():
    text = R4_HEADER.replace(b"backup-id=20161020T123455-1234\n", b"")
    with pytest.raises(HeaderError, match="backup-id"):
        parse_header(text)
    with pytest.raises(HeaderError, match="backup-id"):
        parse_header(R4_HEADER.replace(b"=20161020", b"=-20161020"))


def test_compression_filter_not_required_before_v3():
    header = parse_header(b"version=2\nhmac-algorithm=SHA1\nencrypted=False\n"
                          b"compressed=True\n")
    assert header.version == 2 and header.compression_filter is None


def test_too_new_version():
    with pytest.raises(HeaderError, match=r"backup format version 5 is newer "
                       r"than supported \(max 4\)"):
        parse_header(b"version=5\nnew-key=x\n")


def test_too_new_version_wins_over_syntax_errors():
    with pytest.raises(HeaderError, match="version 7 is newer"):
        parse_header(b"new syntax: anything\nversion=7\nx=a=b\n")


def test_missing_version_is_format_2():
    text = R3_HEADER.replace(b"version=3\n", b"")
    with pytest.raises(HeaderError) as info:
        parse_header(text)
    message = str(info.value)
    assert "format-2" in message and "emergency" in message


def test_size_limit():
    parse_header(R3_HEADER + b"\n" * (4096 - len(R3_HEADER)))
    with pytest.raises(HeaderError, match="4096"):
        parse_header(R3_HEADER + b"x=" + b"a" * 4096 + b"\n")


def test_not_ascii():
    with pytest.raises(HeaderError, match="ASCII"):
        parse_header(R3_HEADER + "x=ä\n".encode())


@pytest.mark.parametrize("index,name", [
    (0, "vm5/private.img.000"), (7, "vm5/private.img.007"),
    (999, "vm5/private.img.999"), (1000, "vm5/private.img.1000"),
    (12345, "vm5/private.img.12345")])
def test_chunk_names(index, name):
    assert fmt.chunk_name("vm5/private.img", index) == name
    assert fmt.split_chunk_name(name) == ("vm5/private.img", index)


def test_chunk_name_negative():
    with pytest.raises(ValueError):
        fmt.chunk_name("x", -1)


@pytest.mark.parametrize("name,expected", [
    ("vm9/..000", ("vm9/.", 0)), ("qubes.xml.000", ("qubes.xml", 0)),
    ("dom0-home/user.012", ("dom0-home/user", 12)),
    ("a.000.001", ("a.000", 1)),
    ("x.0001", None), ("x.00", None), ("x.1", None), ("x.000.hmac", None),
    ("x.000.enc", None), (".000", None), ("x000", None), ("x.00a", None),
    ("x.\u0661\u0662\u0663", None), ("backup-header", None)])
def test_split_chunk_name(name, expected):
    assert fmt.split_chunk_name(name) == expected


def test_hmac_names():
    assert fmt.hmac_name("qubes.xml.000") == "qubes.xml.000.hmac"
    assert fmt.is_hmac_name("qubes.xml.000.hmac")
    assert fmt.is_hmac_name("backup-header.hmac")
    assert not fmt.is_hmac_name("qubes.xml.000")
    assert not fmt.is_hmac_name(".hmac")
    assert not fmt.is_hmac_name("x.hmac.000")
