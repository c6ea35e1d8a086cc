"""qubes.backup.tarreader against GNU tar's formats, our writer, and damaged input."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qubes.backup.tarreader import (MAX_META, TarFormatError, TarReader, TarTruncatedError,
                                    parse_pax)
from qubes.backup.tarwriter import TarWriter

KiB, MiB = 1024, 1024 * 1024
PREFIXED = "p" * 60 + "/" + "q" * 60 + "/f"  # ustar keeps it in prefix + name
LONG = "d/" + "/".join(["länger-verzeichnis"] * 16) + "/end.txt"


def members(data: bytes, **kw):
    """[(member, file content with holes filled)] of a whole archive in memory."""
    stream = io.BytesIO(data)
    reader = TarReader(lambda n: stream.read(n), **kw)
    out = []
    while (m := reader.next()) is not None:
        out.append((m, reader.read_data(m) if m.isreg() else None))
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Files of every kind the backups hold: plain, empty, long and non-ASCII names,
    links, and sparse files with holes at the start, middle and end."""
    root = tmp_path_factory.mktemp("src") / "item"
    (root / "sub").mkdir(parents=True)
    (root / "plain.txt").write_bytes(b"hello\n" * 1000)
    (root / "empty").write_bytes(b"")
    long_path = root / LONG
    long_path.parent.mkdir(parents=True)
    long_path.write_bytes(b"long")
    (root / "sub" / "ünï.txt").write_bytes("ünï\n".encode())
    (root / PREFIXED).parent.mkdir(parents=True)
    (root / PREFIXED).write_bytes(b"split between prefix and name")
    os.symlink("../" + "t" * 150, root / "sub" / "longlink")
    os.symlink("plain.txt", root / "rel")
    os.link(root / "plain.txt", root / "hard")
    with open(root / "sparse.img", "wb") as f:  # 7 regions: GNU needs extension blocks
        for i in range(7):
            f.seek(i * MiB + 4096 * i)
            f.write(os.urandom(4096 + i))
        f.truncate(16 * MiB)
    with open(root / "holes.img", "wb") as f:
        f.truncate(4 * MiB)
    os.utime(root / "plain.txt", (1_500_000_000, 1_500_000_000))
    return root


FORMATS = [["--format=gnu"], ["--format=oldgnu"], ["--format=posix"],
           ["--format=posix", "--sparse-version=0.1"], ["--format=posix", "--sparse-version=1.0"],
           ["--format=ustar"]]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: " ".join(f))
def test_gnu_tar_archives_read_like_tarfile_reads_them(tree, fmt):
    # ustar holds neither sparse files nor names over 255 bytes
    what = ["item/plain.txt", "item/rel", "item/sub/ünï.txt", f"item/{PREFIXED}"] \
        if fmt == ["--format=ustar"] else ["--sparse", "item"]
    proc = subprocess.run(["tar", *fmt, "-C", str(tree.parent), "-cf", "-", *what],
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    ours = members(proc.stdout)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        theirs = [(i, tar.extractfile(i).read() if i.isreg() else None) for i in tar]
    assert [(m.name.rstrip("/"), m.type, m.mode, m.mtime, m.size, m.linkname)
            for m, _ in ours] == [
        (i.name, "0" if i.type in (b"7", b"S") else i.type.decode(), i.mode, int(i.mtime), i.size,
         i.linkname) for i, _ in theirs]
    assert [d for _, d in ours] == [d for _, d in theirs]
    if fmt == ["--format=ustar"]:
        assert ours[-1][0].name == f"item/{PREFIXED}"
        return
    sparse = next(m for m, _ in ours if m.name.endswith("sparse.img"))
    assert sparse.size == 16 * MiB and len(sparse.sparse) == 7
    assert sparse.stored == sum(n for _, n in sparse.sparse)


def test_our_writer_round_trips_sparse_long_and_undecodable_names(tmp_path):
    img = tmp_path / "img"
    with open(img, "wb") as f:
        f.seek(3 * MiB)
        f.write(b"x" * 5000)
        f.truncate(8 * MiB)
    out = io.BytesIO()
    tar = TarWriter(out.write, mtime_default=1234)
    tar.add_dir("vm1/")
    tar.add_file(str(img), "vm1/private.img")
    odd = "vm1/" + os.fsdecode(b"bad-\xff-name")
    tar.add_bytes(odd, b"odd")
    tar.add_bytes(LONG, b"long")
    tar.add_symlink("vm1/link", "../" + "x" * 200)
    tar.close()
    got = members(out.getvalue())
    assert [(m.name, m.type) for m, _ in got] == [
        ("vm1/", "5"), ("vm1/private.img", "0"), (odd, "0"), (LONG, "0"), ("vm1/link", "2")]
    image, data = got[1]
    assert list(image.sparse) == [(3 * MiB, 8192)] and image.size == 8 * MiB
    assert data == img.read_bytes()
    assert got[4][0].linkname == "../" + "x" * 200


def test_pieces_come_in_stream_order_with_their_file_offsets(tmp_path):
    img = tmp_path / "img"
    with open(img, "wb") as f:
        f.seek(MiB)
        f.write(b"a" * 10)
        f.seek(5 * MiB)
        f.write(b"b" * 3 * MiB)
    out = io.BytesIO()
    TarWriter(out.write).add_file(str(img), "img")
    stream = io.BytesIO(out.getvalue() + bytes(1024))
    reader = TarReader(lambda n: stream.read(n))
    member = reader.next()
    offsets = [(off, len(p)) for off, p in reader.pieces(member)]
    assert offsets[0] == (MiB, 4096)  # holes and data come in filesystem blocks
    assert sum(n for _, n in offsets) == 4096 + 3 * MiB
    assert all(n <= MiB for _, n in offsets)
    assert reader.next() is None


def archive(*entries) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_damaged_header_is_named_as_damage():
    data = bytearray(archive(("a", b"1"), ("b", b"2")))
    data[1024 + 10] ^= 0x40  # inside the second header's name
    with pytest.raises(TarFormatError, match="checksum"):
        members(bytes(data))


@pytest.mark.parametrize("cut", [100, 512 + 1, 1024 + 300])
def test_a_truncated_archive_says_where_it_ends(cut):
    data = archive(("a", b"x" * 600), ("b", b"2"))
    with pytest.raises(TarTruncatedError):
        members(data[:cut] if cut != 512 + 1 else data[:512 + 1])


def test_without_ignore_zeros_the_first_zero_block_ends_the_archive():
    data = archive(("a", b"1")) + archive(("b", b"2"))
    assert [m.name for m, _ in members(data)] == ["a"]
    assert [m.name for m, _ in members(data, ignore_zeros=True)] == ["a", "b"]


def test_a_long_run_of_zeros_is_refused_when_a_gap_is_bounded():
    data = archive(("a", b"1")) + bytes(64 * KiB) + archive(("b", b"2"))
    with pytest.raises(TarFormatError, match="without an archive member"):
        members(data, ignore_zeros=True, max_gap=16 * KiB)


def header(name: bytes, kind: bytes, size_field: bytes, extra: dict[int, bytes] = {}) -> bytes:
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = size_field
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar  \0"
    for offset, raw in extra.items():
        block[offset:offset + len(raw)] = raw
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_oversized_metadata_and_negative_sizes_are_refused_before_reading_them():
    huge = header(b"././@LongLink", b"L", b"%011o\0" % (MAX_META + 1))
    with pytest.raises(TarFormatError, match="extended tar header"):
        members(huge + bytes(1024))
    negative = header(b"a", b"0", b"\xff" * 12)
    with pytest.raises(TarFormatError, match="negative size"):
        members(negative + bytes(1024))


def test_a_sparse_map_outside_the_file_is_refused():
    # old GNU sparse: one region at 1000 of 10 bytes in a file of 100 bytes
    block = header(b"s", b"S", b"%011o\0" % 10,
                   {386: b"%011o\0" % 1000, 398: b"%011o\0" % 10, 483: b"%011o\0" % 100})
    with pytest.raises(TarFormatError, match="sparse map"):
        members(block + b"x" * 512 + bytes(1024))


def test_a_directory_with_data_is_refused():
    block = header(b"d/", b"5", b"%011o\0" % 10)
    with pytest.raises(TarFormatError, match="directory or link"):
        members(block + bytes(2048))


def test_pax_records_are_parsed_strictly():
    assert parse_pax(b"11 path=ab\n") == {"path": b"ab"}
    for bad in (b"99 path=ab\n", b"5 x\n", b"x path=a\n", b"11 pathXab\n"):
        with pytest.raises(TarFormatError):
            parse_pax(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8))
def test_any_damage_is_a_format_error_never_a_crash(flips):
    out = io.BytesIO()
    tar = TarWriter(out.write, mtime_default=1)
    tar.add_bytes("vm1/a", b"a" * 700)
    tar.add_bytes(LONG, b"b")
    tar.add_symlink("vm1/l", "t")
    tar.close()
    data = bytearray(out.getvalue()[:4096])
    for offset, value in flips:
        data[offset] = value
    try:
        members(bytes(data))
    except TarFormatError:
        pass
