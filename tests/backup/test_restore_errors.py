"""Damaged, hostile and wrong-passphrase backups: a clear error naming the fault,
a non-zero exit, nothing written outside the restore area, nothing half-registered
(CASES.md A, B05, B41, B43, B45, B55)."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from tests.conftest import peers_or_skip, run

PASS = "correct horse"


def peer_backup(tmp_path, passfile, *args, name="peer.bin"):
    peers = peers_or_skip()
    out = tmp_path / name
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, *args, out], check=True,
                   capture_output=True, timeout=300)
    return out


def listing(base) -> list[str]:
    return run("qvm-ls", "--raw-list").stdout.decode().split()


def files_under(path) -> set[str]:
    return {os.path.relpath(os.path.join(r, f), path) for r, _d, fs in os.walk(path) for f in fs}


MULTI = ["--chunk-size", "32768", "--vm", "template:tpl",
         "--vm", "app:work:private=2M,data=256K@1M", "--vm", "app:other"]


def test_wrong_passphrase_creates_nothing(base, tmp_path, passfile):
    backup = peer_backup(tmp_path, passfile)
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    before = files_under(base)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", wrong, backup, check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "passphrase is wrong" in err and "header has been modified" in err
    assert err.count("ERROR: ") == 1
    assert files_under(base) == before
    assert listing(base) == ["dom0"]


@pytest.mark.parametrize("verify", [False, True])
def test_flipped_byte_names_the_chunk_every_time(base, tmp_path, passfile, verify):
    backup = peer_backup(tmp_path, passfile, *MULTI)
    bad = tmp_path / "flip.bin"
    subprocess.run([peers_or_skip() / "outer-members", "flip", backup, "vm2/private.img.004",
                    "mid", bad], check=True)
    extra = (["--verify-only"] if verify else []) + ["--log", str(tmp_path / "report.log")]
    messages = set()
    for _ in range(2 if verify else 1):  # B04: same member every run
        proc = run("qvm-backup-restore", "--skip-dom0-home", *extra, "--passphrase-file", passfile, bad, check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert "vm2/private.img.004" in err and "HMAC verification failed" in err
        assert "passphrase" not in err
        messages.add(err)
        log = (tmp_path / "report.log").read_text()
        assert all(line in log for line in err.splitlines())  # B06: the same text in the log
    assert len(messages) == 1
    names = listing(base)
    assert "work" not in names
    if not verify:  # the undamaged VMs still come back
        assert "other" in names and "tpl" in names
        assert not (base / "appvms" / "work").exists()


def test_truncated_backup_fails_the_cut_vm(base, tmp_path, passfile):
    backup = peer_backup(tmp_path, passfile, *MULTI, "--no-home")
    data = backup.read_bytes()
    cut = tmp_path / "cut.bin"
    # cut in the middle of the last item's chunks (the template is written last)
    members = subprocess.run(["tar", "-i", "-tvf", backup], capture_output=True, text=True).stdout
    assert "vm1/..001" in members
    with tarfile.open(backup, ignore_zeros=True) as tf:
        offset = next(m.offset for m in tf if m.name == "vm1/..001")
    cut.write_bytes(data[:offset + 700])
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, cut, check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "truncated" in err and "tpl" in err
    names = listing(base)
    assert "tpl" not in names
    # work and other need tpl: without it they are not registered either
    assert "work" not in names and "other" not in names
    assert "template 'tpl' was not restored" in err
    assert not (base / "vm-templates" / "tpl").exists()


def test_vm_listed_without_data_is_a_failure(base, tmp_path, passfile):
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--vm", "app:work",
                         "--vm", "app:ghost:nodata")
    for extra in (["--verify-only"], []):
        proc = run("qvm-backup-restore", "--skip-dom0-home", *extra, "--passphrase-file", passfile, backup,
                   check=False)
        assert proc.returncode == 1
        assert "ghost" in proc.stderr.decode() and "missing" in proc.stderr.decode()
    assert "ghost" not in listing(base) and "work" in listing(base)


def _raw_tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data=b"x" * 100):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


HOSTILE = {
    "dotdot": [_file("vm2/private.img/../../../../escape")],
    "absolute": [_file("/tmp/qubes-test-escape")],
    "symlink-then-write": [_link("vm2/private.img", "/"), _file("vm2/private.img/etc/pwn")],
    "hardlink": [_link("vm2/private.img", "/etc/passwd", tarfile.LNKTYPE)],
    "device": [(lambda i: (setattr(i, "type", tarfile.CHRTYPE), (i, None))[1])(
        tarfile.TarInfo("vm2/private.img"))],
    "other-name": [_file("vm3/private.img")],
    "control-char": [_file("vm2/private.img\n")],
}


@pytest.mark.parametrize("attack", list(HOSTILE))
def test_hostile_inner_archive_is_refused(base, tmp_path, passfile, attack):
    raw = tmp_path / "raw.tar"
    raw.write_bytes(_raw_tar(HOSTILE[attack]))
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--vm", "app:work",
                         "--raw-item", f"vm2/private.img={raw}", "--no-home")
    outside_before = files_under(tmp_path.parent)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, backup, check=False)
    assert proc.returncode == 1, proc.stdout
    assert "vm2/private.img" in proc.stderr.decode()
    assert "work" not in listing(base)
    new = files_under(tmp_path.parent) - outside_before
    assert all("/qubes/" in f or f.startswith("qubes/") or "pytest" in f for f in new), new
    assert not os.path.exists("/tmp/qubes-test-escape")


def test_hostile_vm_names_are_refused_before_writing(base, tmp_path, passfile):
    peers = peers_or_skip()
    out = tmp_path / "bad-names.bin"
    proc = subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, "--allow-invalid-names",
                           "--vm", "template:tpl", "--vm", "app:1bad-name", "--no-home", out],
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"peer refused the invalid name: {proc.stderr.decode()[:200]}")
    before = files_under(base)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, out, check=False)
    assert proc.returncode == 1
    assert "1bad-name" in proc.stderr.decode()
    assert files_under(base) == before


def test_missing_backup_file(base, tmp_path, passfile):
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, tmp_path / "nope", check=False)
    assert proc.returncode == 1
    assert f"backup file not found: {tmp_path / 'nope'}" in proc.stderr.decode()


def test_existing_name_is_skipped_and_serves_dependents(base, tmp_path, passfile):
    """B26: the host's template of that name is kept; the AppVM is based on it."""
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--vm", "app:work")
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    host_root = (base / "vm-templates/tpl/root.img").stat()
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, backup)
    out = proc.stdout.decode()
    assert "tpl" in out and "SKIPPED: a VM named 'tpl' already exists" in out
    assert run("qvm-prefs", "-g", "work", "template").stdout.decode().strip() == "tpl"
    assert (base / "vm-templates/tpl/root.img").stat().st_ino == host_root.st_ino
    named = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, backup, "tpl", check=False)
    assert named.returncode == 1, "an explicitly requested VM that did not come back"


def test_leftover_directory_is_moved_aside_never_merged(base, tmp_path, passfile):
    """B33: the final layout is exactly <vmdir>/work/private.img."""
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--vm", "app:work")
    stray = base / "appvms" / "work"
    stray.mkdir(parents=True)
    (stray / "junk").write_text("old")
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, backup)
    assert b"was in the way" in proc.stderr
    assert sorted(p.name for p in (base / "appvms" / "work").iterdir()) == \
        sorted(p.name for p in (base / "appvms" / "work").iterdir() if p.name != "junk")
    assert not (base / "appvms" / "work" / "junk").exists()
    assert not (base / "appvms" / "work" / "work").exists()
    aside = list((base / "appvms").glob("work.leftover-*"))
    assert len(aside) == 1 and (aside[0] / "junk").read_text() == "old"


def test_zero_stream_is_not_a_backup(base, passfile):
    proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, "/dev/zero",
               check=False, timeout=30)
    assert proc.returncode == 1 and b"not a Qubes backup" in proc.stderr


def _dir_tar(tmp_path, members) -> "Path":
    raw = tmp_path / "raw.tar"
    raw.write_bytes(_raw_tar(members))
    return raw


def test_image_item_may_hold_only_the_image(base, tmp_path, passfile):
    raw = _dir_tar(tmp_path, [(lambda i: (setattr(i, "type", tarfile.DIRTYPE), (i, None))[1])(
        tarfile.TarInfo("vm2/private.img")), _file("vm2/private.img/inner")])
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--vm", "app:work",
                         "--raw-item", f"vm2/private.img={raw}", "--no-home")
    for extra in (["--verify-only"], []):
        proc = run("qvm-backup-restore", *extra, "--skip-dom0-home", "--passphrase-file",
                   passfile, backup, check=False)
        assert proc.returncode == 1 and b"may hold only the regular file" in proc.stderr
    assert "work" not in listing(base)


def test_template_without_root_image_is_not_registered(base, tmp_path, passfile):
    raw = _dir_tar(tmp_path, [_file("vm1/./junk")])
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--raw-item",
                         f"vm1/.={raw}", "--no-home")
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, backup,
               check=False)
    assert proc.returncode == 1 and b"missing from the archive" in proc.stderr
    assert "tpl" not in listing(base)


def test_qubes_xml_item_holds_one_file_only(base, tmp_path, passfile):
    good = tmp_path / "plain.bin"
    peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--no-home",
                "--encrypted", "False", "--compressed", "False", name="plain.bin")
    with tarfile.open(good, ignore_zeros=True) as tf:
        inner = tf.extractfile("qubes.xml.000").read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as tf:
        xml = tf.extractfile("qubes.xml").read()
    raw = _dir_tar(tmp_path, [_file("qubes.xml", xml)] +
                   [_file(f"qubes.xml/f{i}", b"\0" * 1000) for i in range(3)])
    backup = peer_backup(tmp_path, passfile, "--vm", "template:tpl", "--raw-item",
                         f"qubes.xml={raw}", "--no-home")
    proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, backup,
               check=False)
    assert proc.returncode == 1 and b"may hold only the regular file 'qubes.xml'" in proc.stderr


def test_misordered_chunks_fail_their_vm_and_the_rest_is_restored(base, tmp_path, passfile):
    """B05/B06: one structural fault fails one VM; the VMs after it are still read."""
    backup = peer_backup(tmp_path, passfile, "--chunk-size", "32768", "--vm", "template:tpl",
                         "--vm", "app:work:private=2M,data=256K@1M", "--vm", "app:other",
                         "--no-home")
    parts = tmp_path / "parts"
    subprocess.run([peers_or_skip() / "outer-members", "unpack", backup, parts], check=True)
    order = (parts / ".members").read_text().split()
    a, b = order.index("vm2/private.img.001"), order.index("vm2/private.img.002")
    order[a:a + 2], order[b:b + 2] = order[b:b + 2], order[a:a + 2]
    (parts / ".members").write_text("\n".join(order) + "\n")
    swapped = tmp_path / "swapped.bin"
    subprocess.run([peers_or_skip() / "outer-members", "pack", parts, swapped], check=True)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, swapped,
               check=False)
    assert proc.returncode == 1
    assert b"vm2/private.img.002' is out of order" in proc.stderr
    names = listing(base)
    assert "work" not in names and "other" in names and "tpl" in names
