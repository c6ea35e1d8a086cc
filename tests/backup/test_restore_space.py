"""A restore never fills its target filesystem, and a killed one leaves nothing that the
next attempt would merge (CASES.md B13).

The pre-flight estimate (B14) uses `backup_size` from qubes.xml, which a damaged or
hostile backup can understate and which other writers on the same filesystem make
stale; so the extraction itself keeps a reserve free and stops the VM that would eat
into it. The free-space probe is `qubes.backup.space.free_space`, replaced here to
simulate a small filesystem; one test uses a real small tmpfs.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time

import pytest

from qubes.backup import space
from qubes.backup.report import CollectingReporter
from qubes.backup.restore_run import discard, staging_dir
from qubes.tools import qvm_backup_restore
from qubes.util.sizes import disk_usage
from tests.backup.helpers import image_hashes, make_demo_vms, write_at
from tests.conftest import BIN, run, small_tmpfs

PASS = "pw"

MiB, GiB = 1 << 20, 1 << 30
NEEDS = re.compile(r"(\d+) more bytes needed, (\d+) bytes available")


def _backup(base, tmp_path, passfile, work_mib: int, *vms: str):
    """tpl, work (with `work_mib` MiB of random data), personal; 4 MiB chunks."""
    hashes = make_demo_vms(base)
    if work_mib:
        write_at(base / "appvms/work/private.img", 0, os.urandom(work_mib * MiB))
        hashes = image_hashes(base)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--no-compress", "--passphrase-file", passfile, out,
        *(vms or ("tpl", "work", "personal")), env={"QUBES_BACKUP_CHUNK_SIZE": str(4 * MiB)})
    return out, hashes


def _fresh_target(tmp_path, monkeypatch, path=None):
    target = path or tmp_path / "target"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    return target


def _only(hashes: dict, *vms: str) -> dict:
    return {k: v for k, v in hashes.items() if k.split("/")[1] in vms}


def _listing() -> list[str]:
    return run("qvm-ls", "--raw-list").stdout.decode().split()


def test_reserve_is_64_mib_or_one_percent_up_to_1_gib():
    assert space.space_reserve(100 * MiB) == 64 * MiB
    assert space.space_reserve(20 * GiB) == 20 * GiB // 100
    assert space.space_reserve(4096 * GiB) == 1 * GiB


def test_b13_vm_that_would_fill_the_target_fails_alone(base, tmp_path, passfile, monkeypatch,
                                                       capsys):
    out, hashes = _backup(base, tmp_path, passfile, 48)
    target = _fresh_target(tmp_path, monkeypatch)
    fs_size, usable = 4 * GiB, 24 * MiB   # a reserve of 64 MiB, then 24 MiB for the restore
    seen = []

    def small_filesystem(path):
        if not seen:  # the pre-flight check: another writer takes the space only after it
            seen.append(None)
            return 4 * space.RESERVE_MIN + 4 * usable, fs_size
        free = space.RESERVE_MIN + usable - disk_usage(str(target))
        seen.append(free)
        return free, fs_size

    monkeypatch.setattr(space, "free_space", small_filesystem)
    capsys.readouterr()
    code = qvm_backup_restore.main(["--passphrase-file", str(passfile), str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("not enough space") >= 1 and "VM work" in err, err
    assert "VM work: FAILED: not enough space" in err
    needed, available = map(int, NEEDS.search(err).groups())
    assert needed > 0 and available < space.RESERVE_MIN + usable
    assert len(seen) > 1 and min(seen[1:]) >= space.RESERVE_MIN - MiB, "the reserve was eaten into"
    names = _listing()
    assert "work" not in names and "tpl" in names and "personal" in names
    assert image_hashes(target) == _only(hashes, "tpl", "personal")
    assert not (target / "appvms" / "work").exists()
    assert not list(target.glob(".restore-*"))


def test_b13_real_small_filesystem_keeps_its_reserve(base, tmp_path, passfile, monkeypatch,
                                                     capsys):
    """The pre-flight check passes; right after it another writer takes 60 MiB."""
    out, hashes = _backup(base, tmp_path, passfile, 48)
    with small_tmpfs(tmp_path / "small", "160m") as mnt:
        target = _fresh_target(tmp_path, monkeypatch, mnt / "qubes")
        real_free_space, calls = space.free_space, []

        def other_writer_after_the_check(path):
            found = real_free_space(path)
            if not calls:
                (mnt / "other-writer").write_bytes(b"x" * (60 * MiB))
            calls.append(found)
            return found

        monkeypatch.setattr(space, "free_space", other_writer_after_the_check)
        lowest = [os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.002):
                st = os.statvfs(mnt)
                lowest[0] = min(lowest[0], st.f_bavail * st.f_frsize)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        capsys.readouterr()
        try:
            code = qvm_backup_restore.main(["--passphrase-file", str(passfile), str(out)])
        finally:
            stop.set()
            sampler.join()
        err = capsys.readouterr().err
        assert code == 1, err
        assert "VM work: FAILED: not enough space in" in err and NEEDS.search(err), err
        assert lowest[0] >= space.RESERVE_MIN - MiB, f"free space went down to {lowest[0]}"
        names = _listing()
        assert "work" not in names and "tpl" in names and "personal" in names
        assert image_hashes(target) == _only(hashes, "tpl", "personal")
        assert not list(target.glob(".restore-*"))


def test_b13_second_attempt_after_a_killed_one_starts_clean(base, tmp_path, passfile,
                                                            monkeypatch):
    out, hashes = _backup(base, tmp_path, passfile, 48, "tpl", "work")
    target = _fresh_target(tmp_path, monkeypatch)
    data = out.read_bytes()
    proc = subprocess.Popen([BIN / "qvm-backup-restore", "--passphrase-file", passfile, "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def feed():  # half of the backup, then the stream stalls with the restore mid-VM
        try:
            proc.stdin.write(data[:len(data) // 2])
            proc.stdin.flush()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and disk_usage(str(target)) < 8 * MiB:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no clean-up of its own
    proc.wait()
    writer.join()
    proc.stdin.close()
    left = list(target.glob(".restore-*"))
    assert len(left) == 1 and disk_usage(str(left[0])) >= 8 * MiB, "nothing was staged"
    second = run("qvm-backup-restore", "--passphrase-file", passfile, out)
    assert f"removed {left[0]}, left by an interrupted restore".encode() in second.stderr
    assert image_hashes(target) == _only(hashes, "tpl", "work")
    assert not list(target.glob(".restore-*"))


def test_b13_leftover_from_before_a_reboot_is_removed_though_its_pid_lives(
        base, tmp_path, passfile, monkeypatch):
    """After a reboot the killed run's pid may belong to any process: the pid alone
    cannot tell a leftover from a running restore, its lock can."""
    out, _hashes = _backup(base, tmp_path, passfile, 0, "tpl", "work")
    target = _fresh_target(tmp_path, monkeypatch)
    stale = target / f".restore-20200101T000000-{os.getpid()}"  # a live pid: this one
    (stale / "work").mkdir(parents=True)
    (stale / "work" / "private.img").write_bytes(b"stale" * 1000)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, out)
    assert f"removed {stale}, left by an interrupted restore".encode() in proc.stderr
    assert not stale.exists()
    assert (target / "appvms/work/private.img").read_bytes()[:5] != b"stale"


def test_staging_dir_of_a_running_restore_is_never_taken(tmp_path):
    reporter = CollectingReporter()
    first = staging_dir(str(tmp_path), reporter)
    old = time.time() - 3600
    os.utime(first, (old, old))  # old, and its pid alive: only the lock says "in use"
    second = staging_dir(str(tmp_path), reporter)
    try:
        assert first != second and os.path.isdir(first) and os.path.isdir(second)
        assert reporter.warnings == []
    finally:
        discard(second)
        discard(first)
    assert os.listdir(tmp_path) == []


def test_guard_probes_only_every_few_mib(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(space, "free_space", lambda p: (calls.append(p), (10 * GiB, 100 * GiB))[1])
    guard = space.SpaceGuard(str(tmp_path))
    for _ in range(256):
        guard.claim(MiB, "x", MiB)
    assert 256 // (space.CHECK_EVERY // MiB) <= len(calls) <= 256 // (space.CHECK_EVERY // MiB) + 1


def test_guard_refuses_before_the_reserve_with_sizes(monkeypatch, tmp_path):
    free = [space.RESERVE_MIN + 3 * MiB]
    monkeypatch.setattr(space, "free_space", lambda p: (free[0], 1 * GiB))
    guard = space.SpaceGuard(str(tmp_path))
    guard.claim(2 * MiB, "'private.img'", 10 * MiB)
    free[0] -= 2 * MiB
    with pytest.raises(space.NoSpaceError) as info:
        guard.claim(2 * MiB, "'private.img'", 8 * MiB)
    msg = str(info.value)
    assert f"not enough space in {tmp_path} for 'private.img'" in msg
    assert f"{8 * MiB} more bytes needed, {space.RESERVE_MIN + MiB} bytes available" in msg
    assert not msg.startswith("ERROR")
