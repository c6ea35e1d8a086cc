"""Hostile and damaged outer archives (BACKUP-FORMAT.md §2.1, §10): every attack ends
in one clear error line, in bounded memory and time, with nothing registered that is
not complete; a backup whose data is all there is still restored."""
from __future__ import annotations

import io
import itertools
import tarfile

import pytest

from qubes.backup.errors import BackupError
from qubes.backup.reader import MAX_GAP, OuterReader
from qubes.backup.report import Problem
from qubes.backup.tarreader import (MAX_META, TarFormatError, TarReader,
                                    TarTruncatedError)

from tests.conftest import run

PASS = "correct horse"
MiB = 1 << 20
EVIL = "appvms/work/x\n\x1b[2JVM work: OK"  # a fake line and a terminal escape


# --- raw outer members ------------------------------------------------------------------

def block(name: bytes, size: int, kind: bytes = b"0", extra: dict[int, bytes] = {}) -> bytes:
    b = bytearray(512)
    b[0:len(name)] = name
    b[100:108] = b"0000644\0"
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"00000000000\0"
    b[156:157] = kind
    b[257:265] = b"ustar\x0000"
    for offset, raw in extra.items():
        b[offset:offset + len(raw)] = raw
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def pad(n: int) -> bytes:
    return bytes(-n % 512)


def member(name: str, data: bytes, kind: bytes = b"0") -> bytes:
    return block(name.encode(), len(data), kind) + data + pad(len(data))


def pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax(records: dict[str, bytes | str], kind: bytes = b"x") -> bytes:
    data = b"".join(pax_record(k, v.encode() if isinstance(v, str) else v)
                    for k, v in records.items())
    return block(b"PaxHeaders/x", len(data), kind) + data + pad(len(data))


EOA = bytes(1024)


class Endless:
    """A source of `head` then `unit` for ever; counts what was read, and refuses to be
    read past `limit` (a reader that would go on for ever fails the test, not the host)."""

    def __init__(self, head: bytes, unit=None, units=None, limit: int = 32 * MiB):
        self.buf = head
        self.units = units if units is not None else itertools.repeat(unit)
        self.read_bytes = 0
        self.limit = limit

    def read(self, n: int = -1) -> bytes:
        if self.read_bytes > self.limit:
            raise AssertionError(f"the reader went on past {self.limit} bytes")
        while len(self.buf) < n:
            self.buf += next(self.units)
        out, self.buf = self.buf[:n], self.buf[n:]
        self.read_bytes += len(out)
        return out


# --- a real backup to take apart --------------------------------------------------------

@pytest.fixture
def plain(base, tmp_path):
    """An unencrypted, uncompressed backup of a template and an AppVM: its members."""
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    run("qvm-create", "-l", "blue", "work")
    passfile = tmp_path / "pass"
    passfile.write_text(PASS + "\n")
    out = tmp_path / "plain.bin"
    run("qvm-backup", "--no-encrypt", "--no-compress", "--passphrase-file", passfile, "--yes",
        out)
    with tarfile.open(out, ignore_zeros=True) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf]
    for name in ("work", "tpl"):
        run("qvm-remove", name, input=b"y\n")
    return members, passfile, out


def restore(passfile, path, *extra):
    return run("qvm-backup-restore", "--skip-dom0-home", "--yes", *extra, "--passphrase-file",
               passfile, path, check=False, timeout=60)


def listing() -> list[str]:
    return run("qvm-ls", "--raw-list").stdout.decode().split()


# --- D1, D2: extended headers without a member ------------------------------------------

def test_pax_headers_piling_up_before_a_member_are_bounded():
    """Each x header may be 1 MiB, but they must not add up for ever (was: ~200 MiB/s)."""
    keys = (pax({f"k{i}": b"A" * (MAX_META - 100)}) for i in itertools.count())
    src = Endless(b"", units=keys)
    with pytest.raises(TarFormatError, match="extended tar headers"):
        TarReader(src.read, ignore_zeros=True, max_gap=MAX_GAP).next()
    assert src.read_bytes < 8 * MiB


def test_an_endless_run_of_global_headers_ends():
    src = Endless(b"", pax({"comment": b"g"}, kind=b"g"))
    with pytest.raises(TarFormatError, match="extended tar headers"):
        TarReader(src.read, ignore_zeros=True, max_gap=MAX_GAP).next()
    assert src.read_bytes < 8 * MiB


def test_zeros_between_global_headers_count_towards_one_gap():
    src = Endless(b"", pax({"comment": b"g"}, kind=b"g") + bytes(MAX_GAP - 512))
    with pytest.raises(TarFormatError, match="without an archive member"):
        TarReader(src.read, ignore_zeros=True, max_gap=MAX_GAP).next()
    assert src.read_bytes < 8 * MiB


def test_a_normal_extended_header_still_works():
    data = pax({"comment": b"c" * 1000}, kind=b"g") + pax({"path": b"a/" + b"b" * 300}) \
        + member("short", b"data") + EOA
    stream = io.BytesIO(data)
    reader = TarReader(stream.read, ignore_zeros=True, max_gap=MAX_GAP)
    m = reader.next()
    assert m.name == "a/" + "b" * 300 and reader.read_data(m) == b"data"
    assert reader.next() is None


# --- D3: sparse members in the outer stream ---------------------------------------------

def test_outer_sparse_member_is_refused_before_its_map_is_read():
    """A 4-million-region map cost ~750 MiB before the member was refused anyway."""
    head = pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                "GNU.sparse.name": "appvms/work/private.img.000",
                "GNU.sparse.realsize": str(8_000_000)}) \
        + block(b"GNUSparseFile.0/x", 50 * MiB) + b"4000000\n"
    src = Endless(head, units=(b"%d\n1\n" % (2 * i) for i in itertools.count()))
    reader = OuterReader(src, "backup")
    with pytest.raises(BackupError, match="'appvms/work/private.img.000' is a sparse file"):
        reader.next()
    assert src.read_bytes < 2 * MiB


def test_outer_old_gnu_sparse_member_is_refused_before_its_extension_blocks():
    sparse = block(b"appvms/work/private.img.000", 1, b"S",
                   {386: b"%011o\0" % 0, 398: b"%011o\0" % 1, 482: b"\x01",
                    483: b"%011o\0" % 10})
    ext = bytearray(b"%011o\0%011o\0" % (4, 1) * 21 + bytes(8))
    ext[504] = 1
    src = Endless(sparse, bytes(ext))
    with pytest.raises(BackupError, match="is a sparse file"):
        OuterReader(src, "backup").next()
    assert src.read_bytes < 2 * MiB


# --- D5: names with control characters --------------------------------------------------

@pytest.mark.parametrize("attack", ["pax-path", "link-with-data", "sparse-name"])
def test_hostile_names_are_escaped_in_every_message(attack):
    if attack == "pax-path":
        data = pax({"path": EVIL}) + member("x", b"1")
    elif attack == "link-with-data":
        data = pax({"path": EVIL}) + block(b"l", 10, b"2", {157: b"t"}) + b"z" * 10 + pad(10)
    else:
        data = pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": EVIL,
                    "GNU.sparse.realsize": "10"}) + member("s", b"1\n0\n20\n".ljust(512, b"\0"))
    with pytest.raises(BackupError) as info:
        OuterReader(io.BytesIO(data + EOA), "backup").next()
    shown = str(Problem("retrieve", "x", None, info.value.member))  # as a report shows it
    for text in (str(info.value), shown):
        assert "\n" not in text and "\x1b" not in text, repr(text)


def test_a_hostile_name_gives_one_error_line_at_the_command_line(plain, tmp_path):
    members, passfile, _ = plain
    data = b"".join(member(n, d) + EOA for n, d in members[:4])
    data += pax({"path": EVIL}) + member("x", b"1") + EOA
    bad = tmp_path / "evil.bin"
    bad.write_bytes(data)
    proc = restore(passfile, bad, "--verify-only")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "\x1b" not in err and "VM work: OK" not in err.splitlines()
    assert sum(line.startswith("ERROR: ") and "unsafe name" in line
               for line in err.splitlines()) == 1, err


# --- D4: the end of the stream inside the last zero padding -----------------------------

def test_a_partial_zero_block_at_the_end_is_the_end_of_the_archive():
    data = member("a", b"1") + EOA
    for cut in (1, 100, 511, 512, 513):
        stream = io.BytesIO(data[:-cut])
        reader = TarReader(stream.read, ignore_zeros=True)
        assert reader.next().name == "a"
        assert reader.next() is None
    stream = io.BytesIO(member("a", b"1") + block(b"b", 1)[:300])
    reader = TarReader(stream.read, ignore_zeros=True)
    assert reader.next().name == "a"
    with pytest.raises(TarTruncatedError):  # a partial header is still damage
        reader.next()


def test_a_backup_cut_inside_its_final_padding_restores(plain, tmp_path):
    """The data and every HMAC are there; GNU tar accepts it: so do we (was: the last
    VM failed and its dependents with it)."""
    _members, passfile, out = plain
    cut = tmp_path / "cut.bin"
    cut.write_bytes(out.read_bytes()[:-1])
    proc = restore(passfile, cut)
    assert proc.returncode == 0, proc.stderr.decode()
    assert {"tpl", "work"} <= set(listing())


# --- D6: the position of a damaged header -----------------------------------------------

def test_a_damaged_header_is_named_by_its_position(plain, tmp_path):
    members, passfile, _ = plain
    good = b"".join(member(n, d) + EOA for n, d in members[:4])
    bad = bytearray(member(*members[4]))
    bad[10] ^= 0x01
    path = tmp_path / "badsum.bin"
    path.write_bytes(good + bytes(bad) + EOA + b"".join(member(n, d) + EOA
                                                       for n, d in members[5:]))
    proc = restore(passfile, path, "--verify-only")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert f"at byte {len(good)}" in err and "checksum" in err, err
    assert "Traceback" not in err
