"""qubes.backup.tarwriter, checked with GNU tar and Python tarfile."""

import errno
import hashlib
import io
import os
import subprocess
import tarfile
import time

import pytest

from qubes.backup import tarwriter
from qubes.backup.tarwriter import (
    BLOCK, RECORD, FileShrankError, TarWriter, data_regions,
    outer_member_header, outer_member_trailer)

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
LONG_NAME = "d/" + "ünïcödé-näme-" * 12 + "plain"
LONG_TARGET = "../" + "t" * 150


def make_file(path, size, regions):
    """Create *path* of apparent *size* with random data in *regions*."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        for offset, length in regions:
            os.pwrite(fd, os.urandom(length), offset)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


# name -> (apparent size, data regions); holes everywhere else.
SPARSE = {
    "every8m": (64 * MiB, [(i * 8 * MiB, 4 * KiB) for i in range(8)]),
    "ends_hole": (1 * MiB, [(0, 4 * KiB)]),
    "starts_hole": (3 * MiB + 123, [(3 * MiB - 4 * KiB, 4 * KiB + 123)]),
    "all_hole": (5 * MiB, []),
    "empty": (0, []),
    "plain": (3 * MiB + 5, [(0, 3 * MiB + 5)]),
    "huge": (10 * GiB, [(4 * GiB, 1 * MiB)]),
}
HASHED = [name for name in SPARSE if name != "huge"]  # too big to hash


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def read_at(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name, (size, regions) in SPARSE.items():
        make_file(src / name, size, regions)
    assert os.stat(src / "huge").st_blocks * 512 < 4 * MiB, \
        "test file system does not keep holes"
    return src


def write_archive(source, write, pieces=None):
    """The standard test archive; returns {arcname: bytes read}."""
    writer = TarWriter(write, mtime_default=1_600_000_000)
    read = {}
    writer.add_dir("d", mode=0o750)
    for name in SPARSE:
        read[name] = writer.add_file(str(source / name), f"d/{name}")
    read[LONG_NAME] = writer.add_file(str(source / "plain"), LONG_NAME)
    writer.add_symlink("d/link", "../x")
    writer.add_symlink("d/longlink", LONG_TARGET)
    writer.add_hardlink("d/hard", "d/plain")
    writer.close()
    return read


@pytest.fixture(scope="module")
def archive(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("tar") / "a.tar"
    pieces = []
    with open(path, "wb") as f:
        def write(data):
            pieces.append(len(data))
            f.write(data)
        start = time.monotonic()
        read = write_archive(source, write)
        elapsed = time.monotonic() - start
    return path, read, pieces, elapsed


def test_bytes_read_and_speed(archive):
    path, read, pieces, elapsed = archive
    for name, (size, regions) in SPARSE.items():
        assert read[name] == sum(length for _, length in regions)
    assert elapsed < 2.0
    assert max(pieces) <= MiB  # streamed, never a whole file at once
    assert os.path.getsize(path) % RECORD == 0
    assert os.path.getsize(path) < 6 * MiB + 4 * MiB  # no holes stored


def check_extracted(source, out):
    for name in HASHED:
        assert sha256(out / "d" / name) == sha256(source / name), name
    assert sha256(out / LONG_NAME) == sha256(source / "plain")
    for name in ("every8m", "ends_hole", "all_hole", "huge"):
        st = os.stat(out / "d" / name)
        assert st.st_size == SPARSE[name][0]
        assert st.st_blocks * 512 < st.st_size / 8, f"{name} not sparse"
    huge = out / "d" / "huge"
    assert read_at(huge, 4 * GiB, MiB) == read_at(source / "huge", 4 * GiB,
                                                  MiB)
    assert read_at(huge, 10 * GiB - 100, 200) == bytes(100)
    assert os.readlink(out / "d" / "link") == "../x"
    assert os.readlink(out / "d" / "longlink") == LONG_TARGET
    assert os.stat(out / "d" / "hard").st_ino == \
        os.stat(out / "d" / "plain").st_ino
    assert (os.stat(out / "d" / "plain").st_mode & 0o777) == 0o640
    assert (os.stat(out / "d").st_mode & 0o777) == 0o750


def test_gnu_tar_extracts(archive, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive[0]), "-C", str(out)],
                   check=True)
    check_extracted(source, out)


def test_gnu_tar_lists_real_names(archive):
    listing = subprocess.run(["tar", "-tf", str(archive[0])], check=True,
                             capture_output=True, text=True).stdout
    names = listing.splitlines()
    assert names[0] == "d/"
    assert "d/huge" in names and LONG_NAME in names
    assert not any("GNUSparseFile" in n or "PaxHeaders" in n for n in names)


def expected_map(size, regions):
    entries = list(regions)
    if not entries or sum(entries[-1]) < size:
        entries.append((size, 0))
    return entries


def test_python_tarfile_reads_stream(archive, source):
    seen = {}
    with tarfile.open(archive[0], mode="r|") as tf:
        for member in tf:
            seen[member.name] = member
            base = member.name.removeprefix("d/")
            if member.isfile() and base in HASHED:
                data = tf.extractfile(member).read()
                assert hashlib.sha256(data).hexdigest() == \
                    sha256(source / base), base
    assert list(seen) == ["d", *(f"d/{n}" for n in SPARSE), LONG_NAME,
                          "d/link", "d/longlink", "d/hard"]
    assert seen["d"].isdir() and seen["d"].mode == 0o750
    assert seen["d/link"].issym() and seen["d/link"].linkname == "../x"
    assert seen["d/longlink"].linkname == LONG_TARGET
    assert seen["d/hard"].islnk() and seen["d/hard"].linkname == "d/plain"
    for name in ("every8m", "ends_hole", "starts_hole", "all_hole", "huge"):
        member = seen[f"d/{name}"]
        assert member.size == SPARSE[name][0]
        assert member.sparse == expected_map(*SPARSE[name]), name
    assert seen["d/plain"].sparse is None and seen["d/empty"].sparse is None
    assert seen["d/plain"].uid == 0 and seen["d/plain"].uname == ""
    assert seen["d/plain"].mtime == int(os.stat(source / "plain").st_mtime)


def test_sparse_member_layout(archive):
    """The raw pax 1.0 records and the physical name of the data member."""
    raw = archive[0].read_bytes()
    assert b"GNU.sparse.major=1\n" in raw and b"GNU.sparse.minor=0\n" in raw
    assert b"GNU.sparse.name=d/every8m\n" in raw
    assert b"GNU.sparse.realsize=67108864\n" in raw
    assert b"d/GNUSparseFile.0/every8m\0" in raw
    start = raw.index(b"d/GNUSparseFile.0/every8m\0")
    sparse_map = raw[start + BLOCK:start + 2 * BLOCK]
    text = "".join(f"{o}\n{n}\n" for o, n in expected_map(*SPARSE["every8m"]))
    assert sparse_map == (f"9\n{text}".encode()).ljust(BLOCK, b"\0")


def test_gnu_tar_reads_gzip_pipe(source, tmp_path):
    gz = tmp_path / "a.tar.gz"
    with open(gz, "wb") as f:
        proc = subprocess.Popen(["gzip", "-c"], stdin=subprocess.PIPE,
                                stdout=f)
        write_archive(source, proc.stdin.write)
        proc.stdin.close()
        assert proc.wait() == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(gz), "-C", str(out)], check=True)
    check_extracted(source, out)


def test_data_regions(source):
    for name, (size, regions) in SPARSE.items():
        fd = os.open(source / name, os.O_RDONLY)
        try:
            assert data_regions(fd, size) == regions, name
        finally:
            os.close(fd)


def test_data_regions_fallback(source, monkeypatch):
    def no_seek_data(fd, pos, how):
        raise OSError(errno.EINVAL, "Invalid argument")
    fd = os.open(source / "every8m", os.O_RDONLY)
    try:
        monkeypatch.setattr(os, "lseek", no_seek_data)
        assert data_regions(fd, 64 * MiB) == [(0, 64 * MiB)]
        monkeypatch.delattr(os, "SEEK_DATA")
        assert data_regions(fd, 64 * MiB) == [(0, 64 * MiB)]
        assert data_regions(fd, 0) == []
    finally:
        os.close(fd)


def test_unsupported_seek_data_writes_plain_member(source, tmp_path,
                                                   monkeypatch):
    monkeypatch.delattr(os, "SEEK_DATA")
    buf = io.BytesIO()
    writer = TarWriter(buf.write)
    assert writer.add_file(str(source / "ends_hole"), "f") == MiB
    writer.close()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        member = tf.getmember("f")
        assert member.sparse is None
        assert tf.extractfile(member).read() == \
            (source / "ends_hole").read_bytes()


def test_file_shrinking_while_read_is_an_error(tmp_path):
    path = make_file(tmp_path / "shrinks", 3 * MiB, [(0, 3 * MiB)])
    written = []

    def write(data):
        if not written:
            os.truncate(path, MiB + 10)  # after the header promised 3 MiB
        written.append(data)

    writer = TarWriter(write)
    with pytest.raises(FileShrankError) as info:
        writer.add_file(str(path), "shrinks")
    assert isinstance(info.value, OSError)
    assert info.value.filename == str(path)
    assert "shrank" in str(info.value)
    assert sum(map(len, written)) < BLOCK + 3 * MiB


@pytest.mark.parametrize("name", ["/abs", "../up", "a/../../b", "a/..", "",
                                  "a\0b"])
def test_refuses_unsafe_names(name, tmp_path):
    writer = TarWriter(io.BytesIO().write)
    path = make_file(tmp_path / "f", 10, [(0, 10)])
    for add in (lambda: writer.add_file(str(path), name),
                lambda: writer.add_dir(name),
                lambda: writer.add_symlink(name, "x"),
                lambda: writer.add_hardlink(name, "f"),
                lambda: writer.add_hardlink("ok", name)):
        with pytest.raises(ValueError):
            add()
    with pytest.raises(ValueError):
        outer_member_header(name, 1, 0)


def test_refuses_non_regular_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = TarWriter(io.BytesIO().write)
    with pytest.raises(OSError, match="not a regular file"):
        writer.add_file(str(fifo), "fifo")  # and does not hang
    with pytest.raises(OSError):
        writer.add_file(str(tmp_path), "dir")
    with pytest.raises(FileNotFoundError):
        writer.add_file(str(tmp_path / "missing"), "missing")


def test_write_after_close(tmp_path):
    buf = io.BytesIO()
    writer = TarWriter(buf.write)
    writer.add_dir("x")
    writer.close()
    assert len(buf.getvalue()) == RECORD
    with pytest.raises(ValueError):
        writer.add_dir("y")


def test_symlink_target_stored_verbatim():
    buf = io.BytesIO()
    writer = TarWriter(buf.write, mtime_default=0)
    targets = ["/usr/share/x", "../x", "./a//b/", "ä"]
    for i, target in enumerate(targets):
        writer.add_symlink(f"l{i}", target)
    writer.close()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert [m.linkname for m in tf] == targets


def test_undecodable_name_round_trips(tmp_path):
    name = os.fsdecode(b"bad-\xff-name")
    buf = io.BytesIO()
    writer = TarWriter(buf.write)
    writer.add_symlink(name, "x")
    writer.close()
    (tmp_path / "a.tar").write_bytes(buf.getvalue())
    subprocess.run(["tar", "-xf", "a.tar"], cwd=tmp_path, check=True)
    assert os.readlink(tmp_path / os.fsencode(name).decode(
        "utf-8", "surrogateescape")) == "x"


# --- outer archive helpers --------------------------------------------------

OUTER = [("backup-header", b"version=3\n" * 11 + b"abcdef"),
         ("backup-header.hmac", b""),
         ("vm5/private.img.000", os.urandom(21 * BLOCK)),
         ("dom0-home/" + "u" * 120 + ".000", os.urandom(5000))]


@pytest.fixture
def outer_stream():
    parts = []
    for name, data in OUTER:
        header = outer_member_header(name, len(data), 1_700_000_000)
        assert len(header) == tarwriter.OUTER_HEADER_SIZE
        one = header + data + outer_member_trailer(len(data))
        assert len(one) % RECORD == 0
        parts.append(one)
    return b"".join(parts)


def test_outer_gnu_tar(outer_stream, tmp_path):
    path = tmp_path / "backup"
    path.write_bytes(outer_stream)
    listing = subprocess.run(["tar", "-i", "-tvf", str(path)], check=True,
                             capture_output=True, text=True,
                             env={**os.environ, "TZ": "UTC"}).stdout
    assert [line.split()[-1] for line in listing.splitlines()] == \
        [name for name, _ in OUTER]
    assert "-rw-r--r--" in listing and "2023-11-14" in listing
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-i", "-xf", str(path), "-C", str(out)],
                   check=True)
    for name, data in OUTER:
        assert (out / name).read_bytes() == data


def test_outer_python_tarfile(outer_stream):
    got = []
    with tarfile.open(fileobj=io.BytesIO(outer_stream), mode="r|",
                      ignore_zeros=True) as tf:
        for member in tf:
            assert member.isfile() and member.mode == 0o644
            assert member.mtime == 1_700_000_000
            got.append((member.name, tf.extractfile(member).read()))
    assert got == OUTER


def test_outer_large_size_uses_pax():
    header = outer_member_header("big.000", 9 * GiB, 0)
    assert len(header) == tarwriter.OUTER_HEADER_SIZE
    tf = tarfile.open(fileobj=io.BytesIO(header + bytes(BLOCK)), mode="r|")
    assert tf.next().size == 9 * GiB


def test_outer_name_too_long():
    with pytest.raises(ValueError):
        outer_member_header("x" * 600, 1, 0)
