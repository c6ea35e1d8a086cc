"""qubes.backup.compress against the real gzip, bzip2 and xz programs."""

import os
import subprocess

import pytest

from qubes.backup import compress
from qubes.backup.compress import CorruptStream, UnknownFilter, codec_for_filter

# Compressible and incompressible parts, a few hundred KiB.
DATA = (b"qubes backup " * 20000) + os.urandom(50_000) + bytes(200_000)

PROGRAMS = {"gzip": ["gzip"], "bzip2": ["bzip2"], "xz": ["xz"],
            "lzma": ["xz", "--format=lzma"]}
CODECS = sorted(compress.CODECS)


def compress_all(name: str, data: bytes = DATA, level=None) -> bytes:
    comp = compress.CODECS[name].compressor(level)
    return comp.compress(data) + comp.flush()


def decompress_all(name: str, stream: bytes, step: int = 65536) -> bytes:
    dec = compress.CODECS[name].decompressor()
    out = b"".join(dec.decompress(stream[i:i + step])
                   for i in range(0, len(stream), step))
    return out + dec.finish()


def run(args, data: bytes) -> bytes:
    return subprocess.run(args, input=data, check=True,
                          capture_output=True).stdout


def test_registry_has_required_codecs():
    assert {"gzip", "bzip2", "xz"} <= set(compress.CODECS)
    assert compress.CODECS["gzip"].default_level == 6
    assert compress.CODECS["bzip2"].default_level == 9
    assert compress.CODECS["xz"].default_level == 6


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("step", [1000, 1 << 20])
def test_round_trip(name, step):
    assert decompress_all(name, compress_all(name), step) == DATA


@pytest.mark.parametrize("name", CODECS)
def test_round_trip_empty_input(name):
    assert decompress_all(name, compress_all(name, b"")) == b""


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_real_program_reads_our_output(name):
    assert run([*PROGRAMS[name], "-d", "-c"], compress_all(name)) == DATA


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_we_read_real_program_output(name):
    stream = run([*PROGRAMS[name], "-c"], DATA)
    assert decompress_all(name, stream, 4096) == DATA


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz"])
def test_concatenated_members(name):
    parts = [b"first part\n", os.urandom(3000), bytes(70_000), b"last"]
    stream = b"".join(compress_all(name, p) for p in parts)
    assert run([name, "-d", "-c"], stream) == b"".join(parts)  # like tar -z
    for step in (1, 777, len(stream)):
        assert decompress_all(name, stream, step) == b"".join(parts)


@pytest.mark.parametrize("name", CODECS)
def test_truncated_stream(name):
    stream = compress_all(name)
    for cut in (1, 10, len(stream) // 2, len(stream) - 1):
        dec = compress.CODECS[name].decompressor()
        try:
            dec.decompress(stream[:cut])
        except CorruptStream:
            continue  # also acceptable: damage noticed at once
        with pytest.raises(CorruptStream, match="truncated"):
            dec.finish()


@pytest.mark.parametrize("name", CODECS)
def test_empty_stream_is_corrupt(name):
    dec = compress.CODECS[name].decompressor()
    assert dec.decompress(b"") == b""
    with pytest.raises(CorruptStream):
        dec.finish()


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz"])
@pytest.mark.parametrize("tail", [b"garbage!" * 4, bytes(512)])
def test_trailing_garbage_or_zero_padding(name, tail):
    with pytest.raises(CorruptStream):
        decompress_all(name, compress_all(name) + tail)


@pytest.mark.parametrize("name", CODECS)
def test_damaged_data(name):
    stream = bytearray(compress_all(name))
    stream[len(stream) // 2] ^= 0xFF
    stream[len(stream) // 2 + 1] ^= 0xFF
    with pytest.raises(CorruptStream):
        decompress_all(name, bytes(stream))


def test_not_compressed_at_all():
    with pytest.raises(CorruptStream, match="gzip"):
        decompress_all("gzip", b"plain text, not gzip" * 10)


def test_iter_decompress_bounds_pieces():
    zeros = compress_all("gzip", bytes(10 * 1024 * 1024))
    dec = codec_for_filter("gzip").decompressor()
    pieces = list(dec.iter_decompress(zeros, limit=65536))
    dec.finish()
    assert max(map(len, pieces)) <= 65536
    assert sum(map(len, pieces)) == 10 * 1024 * 1024


@pytest.mark.parametrize("name", CODECS)
def test_iter_decompress_bounds_pieces_all_codecs(name):
    stream = compress_all(name, bytes(3 * 1024 * 1024))
    dec = compress.CODECS[name].decompressor()
    pieces = list(dec.iter_decompress(stream, limit=100_000))
    dec.finish()
    assert max(map(len, pieces)) <= 100_000
    assert b"".join(pieces) == bytes(3 * 1024 * 1024)


def test_levels():
    small = compress_all("gzip", DATA, level=9)
    fast = compress_all("gzip", DATA, level=1)
    assert decompress_all("gzip", small) == decompress_all("gzip", fast)
    with pytest.raises(ValueError):
        compress.CODECS["gzip"].compressor(10)
    with pytest.raises(ValueError):
        compress.CODECS["bzip2"].compressor(0)


@pytest.mark.parametrize("value,name", [
    ("gzip", "gzip"), ("gzip -3", "gzip"), ("gzip --best", "gzip"),
    ("pigz", "gzip"), ("bzip2", "bzip2"), ("pbzip2 -9", "bzip2"),
    ("xz", "xz"), ("xz -T0 -6", "xz"), ("lzma", "lzma")])
def test_codec_for_filter(value, name):
    assert codec_for_filter(value).name == name


@pytest.mark.parametrize("value", [
    "less", "../gzip", "/usr/bin/gzip", "bin/gzip", "", " ", "-gzip",
    "gzip;rm", "gzip -3;x", "gzip\n", "GZIP", "gzip -o/tmp/x", "gunzip"])
def test_codec_for_filter_refuses(value):
    with pytest.raises(UnknownFilter) as info:
        codec_for_filter(value)
    message = str(info.value)
    assert repr(value) in message
    assert "gzip" in message and "bzip2" in message and "xz" in message
    assert isinstance(info.value, ValueError)


def test_zstd_absent_or_working():
    if "zstd" not in compress.CODECS:
        with pytest.raises(UnknownFilter):
            codec_for_filter("zstd")
        return
    stream = compress_all("zstd")
    assert decompress_all("zstd", stream + stream, 999) == DATA + DATA
    assert run(["zstd", "-d", "-c"], stream) == DATA
