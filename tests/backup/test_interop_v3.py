"""Format 3 against independent peers built from tar, openssl and the compressors.

Our backups must be restored byte-identical by ../shared/peers/emergency-restore-v3;
backups made by ../shared/peers/make-backup-v3 must be restored byte-identical by us.
"""
from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from tests.backup.helpers import (allocated, image_hashes, make_demo_vms, sha256_file,
                                  write_at)
from tests.conftest import peers_or_skip, run

PASS = "correct horse battery staple ✓"


COMBOS = [([], "enc-gzip"), (["--no-compress"], "enc-plain"),
          (["--no-encrypt"], "clear-gzip"), (["--no-encrypt", "--no-compress"], "clear-plain")]


@pytest.mark.parametrize("flags,label", COMBOS, ids=[c[1] for c in COMBOS])
def test_our_backup_is_read_by_the_emergency_peer(base, tmp_path, passfile, flags, label):
    peers = peers_or_skip()
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 10 << 20, os.urandom(3 << 20))  # > 3 chunks
    hashes = image_hashes(base)
    out = tmp_path / "backup.bin"
    run("qvm-backup", *flags, "--passphrase-file", passfile, out, env={
        "QUBES_BACKUP_CHUNK_SIZE": str(1 << 20)})
    names = subprocess.run(["tar", "-i", "-tf", out], capture_output=True, text=True).stdout
    work = "vm3" if "--no-encrypt" not in flags else "appvms/work"
    assert f"{work}/private.img.003\n{work}/private.img.003.hmac" in names
    restored = tmp_path / "er"
    proc = subprocess.run([peers / "emergency-restore-v3", "-q", "-p", passfile, out, restored],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    # map each VM's backup_path to its directory
    enc = "--no-encrypt" not in flags
    paths = {"vm-templates/tpl": "vm1", "servicevms/sys-net": "vm2",
             "appvms/work": "vm3", "appvms/personal": "vm4"}
    for rel, digest in hashes.items():
        vmdir, name = rel.rsplit("/", 1)
        got = restored / (paths[vmdir] if enc else vmdir) / name
        assert sha256_file(got) == digest, rel
        assert allocated(got) < 64 << 20, f"{rel} came back without its holes"


PEER_VARIANTS = {
    "enc-gzip": [],
    "enc-plain": ["--compressed", "False"],
    "clear-gzip": ["--encrypted", "False"],
    "clear-plain": ["--encrypted", "False", "--compressed", "False"],
    "sha256": ["--hmac-algorithm", "SHA256"],
    "sha1-bzip2": ["--hmac-algorithm", "SHA1", "--compression-filter", "bzip2"],
    "xz": ["--compression-filter", "xz"],
    "multichunk": ["--chunk-size", "32768", "--vm", "template:tpl",
                   "--vm", "app:work:private=3M,data=256K@1M+64K@2M,firewall",
                   "--vm", "standalone:alone:root=2M,rootdata=64K@1M"],
}


def manifest_files(manifest, only: str | None = None) -> dict[tuple[str, str], str]:
    """(vm, path) -> sha256 of the manifest's files: VMs' by default, or one VM's."""
    files = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        kind, digest, _size, vm, path, _restore = line.split("\t")
        wanted = vm == only if only else vm not in ("-", "dom0")
        if kind == "f" and wanted:
            files[(vm, path)] = digest
    return files


@pytest.mark.parametrize("variant", list(PEER_VARIANTS))
def test_peer_backup_is_restored_by_us(base, tmp_path, passfile, variant):
    peers = peers_or_skip()
    out = tmp_path / "peer.bin"
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, *PEER_VARIANTS[variant], out],
                   check=True, capture_output=True, timeout=300)
    homes = tmp_path / "homes"
    homes.mkdir()
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, "--dom0-home-dir", homes,
               "--ignore-username-mismatch", out)
    assert b"Restore completed" in proc.stdout
    expected = manifest_files(out.with_name("peer.bin.manifest"))
    home = next(homes.glob("home-restore-*")) / "dom0-home" / "user"
    for (vm, path), digest in manifest_files(out.with_name("peer.bin.manifest"), "dom0").items():
        assert sha256_file(home / path) == digest, path
    listing = run("qvm-ls", "--raw-list").stdout.decode().split()
    for (vm, path), digest in expected.items():
        assert vm in listing
        matches = list(base.glob(f"*/{vm}/{path}"))
        assert len(matches) == 1, (vm, path)
        if path.endswith(".img"):
            assert sha256_file(matches[0]) == digest, (vm, path)


def test_demo_roundtrip_and_verify_keep_images(base, tmp_path, passfile, monkeypatch):
    hashes = make_demo_vms(base)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out)
    before = (base / "qubes.xml").read_bytes()
    run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, out)
    assert (base / "qubes.xml").read_bytes() == before, "verify-only changed qubes.xml (B54)"
    target = tmp_path / "second"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    run("qvm-backup-restore", "--passphrase-file", passfile, out)
    assert image_hashes(target) == hashes
    assert not list(target.glob(".restore-*")), "staging directory left behind"


def test_stream_of_exact_chunk_multiple_has_no_empty_tail(base, tmp_path, passfile):
    """B21a: k whole chunks, not k + 1 with an empty one; still restorable by the peer."""
    peers = peers_or_skip()
    make_demo_vms(base)
    out = tmp_path / "probe.bin"
    run("qvm-backup", "--no-encrypt", "--no-compress", "--passphrase-file", passfile, out, "tpl",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(1 << 30)})
    with tarfile.open(out, ignore_zeros=True) as tf:
        stream = next(m.size for m in tf if m.name == "vm-templates/tpl/..000")
    assert stream % 10240 == 0  # an uncompressed tar stream: whole records
    out2 = tmp_path / "exact.bin"
    run("qvm-backup", "--no-encrypt", "--no-compress", "--passphrase-file", passfile, out2, "tpl",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(stream // 2)})
    with tarfile.open(out2, ignore_zeros=True) as tf:
        names = [m.name for m in tf if not m.name.endswith(".hmac")]
    assert names[-2:] == ["vm-templates/tpl/..000", "vm-templates/tpl/..001"]
    proc = subprocess.run([peers / "emergency-restore-v3", "-q", "-p", passfile, out2,
                           tmp_path / "er"], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
