"""More cases of CASES.md groups A-F: space, paths, images behind links, metadata leaks."""
from __future__ import annotations

import os
import subprocess
import tarfile

from tests.backup.helpers import image_hashes, make_demo_vms, sha256_file, write_at
from tests.conftest import BIN, run, small_tmpfs

PASS = "pässwörd-✓-ß"


def archived_xml(backup, passfile) -> str:
    """The qubes.xml inside an unencrypted, uncompressed backup."""
    with tarfile.open(backup, ignore_zeros=True) as tf:
        inner = tf.extractfile("qubes.xml.000").read()
    import io
    with tarfile.open(fileobj=io.BytesIO(inner)) as tf:
        return tf.extractfile("qubes.xml").read().decode()


def test_b42_single_vm_backup_describes_only_it(base, tmp_path, passfile):
    make_demo_vms(base)
    run("qvm-prefs", "-s", "sys-net", "pcidevs", "['00:19.0']")
    out = tmp_path / "b.bin"
    run("qvm-backup", "--no-encrypt", "--no-compress", "--passphrase-file", passfile, out,
        "personal")
    xml = archived_xml(out, passfile)
    assert 'name="personal"' in xml and "00:19.0" not in xml
    assert 'name="work"' not in xml
    tpl_line = next(line for line in xml.splitlines() if 'name="tpl"' in line)
    assert "memory" not in tpl_line and 'backup_content="False"' in tpl_line  # a stub


def test_b08_b07_path_with_spaces_and_accents(base, tmp_path, passfile, monkeypatch):
    hashes = make_demo_vms(base)
    folder = tmp_path / "Sicherung Müller"
    folder.mkdir()
    run("qvm-backup", "--passphrase-file", passfile, folder, "work", "tpl")
    backup = next(folder.iterdir())
    target = tmp_path / "zurück"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    run("qvm-backup-restore", "--passphrase-file", passfile, backup)
    assert image_hashes(target)["appvms/work/private.img"] == hashes["appvms/work/private.img"]


def test_b40_image_behind_a_link_is_backed_up_by_content(base, tmp_path, passfile, monkeypatch):
    make_demo_vms(base)
    elsewhere = tmp_path / "second-disk.img"
    img = base / "appvms/work/private.img"
    os.rename(img, elsewhere)
    os.symlink(elsewhere, img)
    digest = sha256_file(elsewhere)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out, "work", "tpl")
    target = tmp_path / "t"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    run("qvm-backup-restore", "--passphrase-file", passfile, out)
    restored = target / "appvms/work/private.img"
    assert not restored.is_symlink() and sha256_file(restored) == digest


def test_b25_missing_image_fails_before_writing(base, tmp_path, passfile):
    make_demo_vms(base)
    os.unlink(base / "appvms/personal/private.img")
    out = tmp_path / "b.bin"
    proc = run("qvm-backup", "--passphrase-file", passfile, out, check=False)
    assert proc.returncode == 1
    assert b"personal" in proc.stderr and b"private.img is missing" in proc.stderr
    assert not list(tmp_path.glob("b.bin*"))


def test_b24_incompressible_image_compressed_restores(base, tmp_path, passfile, monkeypatch):
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(24 << 20))
    hashes = image_hashes(base)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out, "work", "tpl",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(4 << 20)})
    target = tmp_path / "t"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    run("qvm-backup-restore", "--passphrase-file", passfile, out)
    assert image_hashes(target)["appvms/work/private.img"] == hashes["appvms/work/private.img"]


def test_b53_verify_reads_everything_despite_name_conflicts(base, tmp_path, passfile):
    make_demo_vms(base)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out)
    before = (base / "qubes.xml").read_bytes()
    proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, out)
    assert b"already exists" not in proc.stdout + proc.stderr
    assert proc.stdout.count(b": verified") == 4
    assert (base / "qubes.xml").read_bytes() == before


def test_b03_full_temporary_space_is_named_with_sizes(base, tmp_path, passfile):
    with small_tmpfs(tmp_path / "small", "1m") as small:
        make_demo_vms(base)
        write_at(base / "appvms/work/private.img", 0, os.urandom(4 << 20))
        out = tmp_path / "b.bin"
        run("qvm-backup", "--no-compress", "--passphrase-file", passfile, out, "work", "tpl")
        proc = run("qvm-backup-restore", "--verify-only", "--tmpdir", small, "--passphrase-file",
                   passfile, out, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1
        assert f"not enough space in {small}" in err and "bytes available" in err
        assert "HMAC" not in err and "passphrase" not in err
        assert os.listdir(small) == []


def test_b57_two_backups_at_once_both_succeed(base, tmp_path, passfile):
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(16 << 20))
    procs = [subprocess.Popen([BIN / "qvm-backup", "--passphrase-file", passfile,
                               tmp_path / f"b{i}.bin", vm], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i, vm in enumerate(("work", "personal"))]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    for i in range(2):
        run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile,
            tmp_path / f"b{i}.bin")


def test_restored_device_settings_are_pointed_out(base, tmp_path, passfile, monkeypatch):
    make_demo_vms(base)
    run("qvm-prefs", "-s", "work", "pcidevs", "['00:19.0']")
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out, "work", "tpl")
    monkeypatch.setenv("QUBES_BASE_DIR", str(tmp_path / "t"))
    run("qvm-init-storage")
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, out)
    assert b"comes back with PCI devices ['00:19.0']" in proc.stderr
