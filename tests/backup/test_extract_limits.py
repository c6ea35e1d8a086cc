"""Hostile inner archives that cost depth, CPU or memory instead of writing anywhere:
very deep trees, many long names, sparse maps of millions of empty regions. Each is
refused (or read) in bounded time and memory, with an error naming the item, and what a
failed restore leaves is removed whatever its depth."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
import tracemalloc

import pytest

from qubes.backup import extract
from qubes.backup.errors import BackupError
from qubes.backup.extract import InnerExtractor
from qubes.backup.tarreader import TarReader
from qubes.util.rmtree import remove_tree

from tests.conftest import peers_or_skip, run

PASS = "correct horse"
HOME = "dom0-home/user"


def _tar(entries, fmt=tarfile.GNU_FORMAT) -> bytes:
    """entries: (name, kind, data) with kind 'f' file, 'd' directory, 'l' symlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "d" else 0o644
            if kind == "d":
                info.type = tarfile.DIRTYPE
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, data
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "f" else None)
    return out.getvalue()


def _extract(data: bytes, item: str = HOME, dest=None, **kwargs) -> InnerExtractor:
    """Run an item's inner tar through the extractor; raises its error."""
    subdir = "dom0-home/" if item.startswith("dom0-home/") else item.split("/")[0] + "/"
    ex = InnerExtractor(item, subdir, None if dest is None else str(dest),
                        links=item.startswith("dom0-home/"), **kwargs)
    for i in range(0, len(data), 1 << 16):
        ex.feed(data[i:i + (1 << 16)])
    ex.finish()
    return ex


# --- depth --------------------------------------------------------------------------------

def _deep_tree(root, depth: int, outside) -> None:
    """`depth` nested directories, some with a file and a symlink to `outside`; the
    deepest ones read-only. Made through directory fds: the path is too long for one call."""
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    fds = []
    for level in range(depth):
        os.mkdir("a", dir_fd=fd)
        if level % 100 == 0 or level == depth - 1:
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
            os.symlink(str(outside), "l", dir_fd=fd)
        fds.append(fd)
        fd = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    fds.append(fd)
    for fd in fds[-3:]:
        os.chmod(fd, 0o500)
    for fd in fds:
        os.close(fd)


def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    _deep_tree(tmp_path / "deep", 1500, outside)
    try:
        remove_tree(str(tmp_path / "deep"))
        assert not (tmp_path / "deep").exists()
        assert (outside / "keep").read_text() == "keep"  # links were removed, never followed
    finally:  # pytest's own clean-up of tmp_path recurses, and would fail on it
        remove_tree(str(tmp_path / "deep"), ignore_errors=True)


def test_remove_tree_removes_a_link_not_its_target(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    remove_tree(str(tmp_path / "link"))
    assert not os.path.lexists(tmp_path / "link") and (tmp_path / "target" / "keep").exists()
    with pytest.raises(FileNotFoundError):
        remove_tree(str(tmp_path / "link"))
    remove_tree(str(tmp_path / "link"), ignore_errors=True)


@pytest.mark.parametrize("dest", [False, True])
def test_a_member_deeper_than_the_limit_is_refused(tmp_path, dest):
    deep = "vm2/kernels" + "/a" * (extract.MAX_DEPTH - 1)  # "kernels" is one level
    ok = _tar([(deep, "d", b""), (deep + "x", "f", b"x")])
    _extract(ok, "vm2/kernels", tmp_path / "ok" if dest else None)  # the limit itself is fine
    data = _tar([(deep, "d", b""), (deep + "/a", "d", b""), (deep + "/a/f", "f", b"x")])
    with pytest.raises(BackupError, match=r"item 'vm2/kernels': member 'vm2/kernels/a/a.*…' "
                                          rf"is {extract.MAX_DEPTH + 1} path components deep"):
        _extract(data, "vm2/kernels", tmp_path / "bad" if dest else None)


# --- parent checks ------------------------------------------------------------------------

class _CountingSet(set):
    lookups = 0

    def __contains__(self, key):
        _CountingSet.lookups += 1
        return super().__contains__(key)


def test_parent_checks_cost_once_per_directory_not_per_member(monkeypatch):
    """F3: members under one deep directory check its parents once, not each time."""
    deep = HOME + "/d" * 200
    data = _tar([(f"{deep}/{i:05d}", "f", b"") for i in range(2000)])
    ex = InnerExtractor(HOME, "dom0-home/", None, links=True)
    ex._symlinks = _CountingSet()  # the worker waits for data: safe to swap before feeding
    _CountingSet.lookups = 0
    ex.feed(data)
    ex.finish()
    assert _CountingSet.lookups < 2000 + 250  # the old walk: 2000 members x 201 parents


@pytest.mark.parametrize("later", [("f", b"x"), ("l", "/etc")])
def test_a_file_or_link_where_a_directory_was_made_is_refused(later):
    """A checked parent is never rechecked, so it must never turn into a link or file."""
    data = _tar([(HOME + "/a/b/c", "f", b"c"), (HOME + "/a/b", *later),
                 (HOME + "/a/b/d", "f", b"d")])
    with pytest.raises(BackupError, match="is a file or link where earlier members made a "
                                          "directory"):
        _extract(data)


def test_writing_through_a_link_is_still_refused_below_a_checked_directory():
    data = _tar([(HOME + "/a/f", "f", b"f"), (HOME + "/a/l", "l", "/etc"),
                 (HOME + "/a/l/passwd", "f", b"x")])
    with pytest.raises(BackupError, match="written through a link or file"):
        _extract(data)


# --- entries and names ----------------------------------------------------------------------

def test_no_caller_raises_the_entry_cap(monkeypatch):
    monkeypatch.setattr(extract, "MAX_HOME_ENTRIES", 50)
    data = _tar([(f"{HOME}/{i}", "f", b"") for i in range(60)])
    with pytest.raises(BackupError, match=f"item '{HOME}' holds more than 50 entries"):
        _extract(data, max_entries=1_000_000)


def test_long_names_are_refused_past_the_item_budget(monkeypatch):
    monkeypatch.setattr(extract, "MAX_NAME_BYTES", 200_000)
    d = "/".join(["d" * 250] * 15)
    data = _tar([(f"{HOME}/{d}/{i:0100d}", "f", b"") for i in range(100)], tarfile.PAX_FORMAT)
    with pytest.raises(BackupError, match=f"item '{HOME}': its member names need more than "
                                          r"200000 bytes to check \(at 'dom0-home/user/ddd"):
        _extract(data)
    monkeypatch.setattr(extract, "MAX_NAME_BYTES", 2_000_000)
    assert _extract(data).files[-1].endswith("99")


def test_a_large_real_home_fits_the_default_limits():
    names = [f"{HOME}/.local/share/app{i % 50}/cache/{i:08d}-some-file.txt" for i in range(30_000)]
    ex = _extract(_tar([(n, "f", b"") for n in names]), max_entries=extract.MAX_HOME_ENTRIES)
    assert len(ex.files) == 30_000


# --- sparse maps --------------------------------------------------------------------------

def _sparse_10(regions: list[tuple[int, int]], realsize: int) -> bytes:
    """A pax 1.0 sparse member whose map lists `regions` (data bytes are 'x')."""
    text = f"{len(regions)}\n" + "".join(f"{o}\n{n}\n" for o, n in regions)
    body = text.encode() + bytes(-len(text) % 512) + b"x" * sum(n for _, n in regions)
    info = tarfile.TarInfo("vm2/GNUSparseFile.0/private.img")
    info.size = len(body)
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "vm2/private.img",
                        "GNU.sparse.realsize": str(realsize)}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _read_sparse(data: bytes):
    stream = io.BytesIO(data)
    tracemalloc.start()
    try:
        member = TarReader(stream.read).next()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return member, peak


def test_empty_sparse_regions_cost_no_memory():
    """F4: a map of 100,000 "0,0" regions used to keep them all, as Python tuples."""
    member, peak = _read_sparse(_sparse_10([(0, 0)] * 100_000 + [(4096, 5)], 1 << 20))
    assert list(member.sparse) == [(4096, 5)] and member.stored == 5
    assert peak < 1 << 20, peak


def test_sparse_regions_are_stored_compactly():
    regions = [(i * 4096, 1) for i in range(100_000)]
    member, peak = _read_sparse(_sparse_10(regions, 1 << 30))
    assert len(member.sparse) == 100_000 and list(member.sparse)[-1] == regions[-1]
    assert peak < 4 << 20, peak  # 16 bytes a region; tuples took ~10 MiB


# --- end to end ---------------------------------------------------------------------------


def test_deep_item_fails_its_vm_and_a_deep_leftover_is_removed(base, tmp_path, passfile):
    """F2: a 1300-level tree in one VM and a damaged chunk in another: that VM fails
    alone, nothing stays behind, and a leftover as deep from an older run is removed."""
    peers = peers_or_skip()
    raw = tmp_path / "deep.tar"
    path = "vm2/kernels"
    entries = [(path, "d", b"")]
    for _ in range(1300):
        path += "/a"
        entries.append((path, "d", b""))
    raw.write_bytes(_tar(entries + [(path + "/f", "f", b"x")]))
    backup, bad = tmp_path / "deep.bin", tmp_path / "deepbad.bin"
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, "--vm", "template:tpl",
                    "--vm", "app:work", "--raw-item", f"vm2/kernels={raw}", "--no-home", backup],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([peers / "outer-members", "flip", backup, "vm1/..000", "mid", bad],
                   check=True, capture_output=True)
    leftover = base / ".restore-20200101T000000-4194999-old"
    _deep_tree(leftover, 1300, tmp_path)
    os.utime(leftover, (time.time() - 3600,) * 2)

    try:
        proc = run("qvm-backup-restore", "-y", "--skip-dom0-home", "--passphrase-file",
                   passfile, bad, check=False)
    finally:  # pytest's own clean-up of tmp_path recurses, and would fail on it
        left = list(base.glob(".restore-*"))
        for path in left:
            remove_tree(str(path), ignore_errors=True)
    err = proc.stderr.decode() + proc.stdout.decode()
    assert proc.returncode == 1, err
    assert "RecursionError" not in err and "internal error" not in err
    assert "item 'vm2/kernels': member 'vm2/kernels/a/a" in err and "path components deep" in err
    assert "HMAC verification failed" in err
    assert not left, "a staging directory was left behind"
    assert "left by an interrupted restore" in err
