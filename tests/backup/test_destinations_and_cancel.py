"""Backups into a command's stdin and out of a command's stdout; cancel leaves nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.backup.helpers import image_hashes, make_demo_vms, write_at
from tests.conftest import BIN, run

PASS = "pw"


def test_dest_command_and_source_command_round_trip(base, tmp_path, passfile, monkeypatch):
    hashes = make_demo_vms(base)
    target = tmp_path / "via cmd"
    run("qvm-backup", "--passphrase-file", passfile, "--dest-command",
        f"cat > '{target}'", "work", "tpl")
    assert target.stat().st_size > 0
    second = tmp_path / "second"
    monkeypatch.setenv("QUBES_BASE_DIR", str(second))
    run("qvm-init-storage")
    run("qvm-backup-restore", "--passphrase-file", passfile, "--source-command",
        f"cat '{target}'")
    got = image_hashes(second)
    assert got == {k: v for k, v in hashes.items() if "work" in k or "tpl" in k}


def test_failing_destination_command_is_reported(base, tmp_path, passfile):
    make_demo_vms(base)
    proc = run("qvm-backup", "--passphrase-file", passfile, "--dest-command",
               "head -c 1000 >/dev/null; echo 'Datei zu groß' >&2; exit 27", check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "exit status 27" in err and "Datei zu groß" in err


def test_failing_source_command_is_reported(base, passfile):
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, "--source-command",
               "echo 'no such share' >&2; exit 3", check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "exit status 3" in err and "no such share" in err


def _big_vm(base, mib: int) -> None:
    make_demo_vms(base)
    path = base / "appvms/work/private.img"
    os.truncate(path, (mib + 100) << 20)
    for i in range(mib // 8):
        write_at(path, (i * 8) << 20, os.urandom(8 << 20))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cancelled_backup_leaves_no_partial_output(base, tmp_path, passfile, sig, code):
    _big_vm(base, 320)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([BIN / "qvm-backup", "--passphrase-file", passfile, out, "work"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p.stat().st_size > (1 << 20)
                                                    for p in out.iterdir()):
        time.sleep(0.05)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 2.5
    assert proc.returncode == code, err
    assert b"removed the partial backup" in err
    assert list(out.iterdir()) == []


def test_cancelled_restore_leaves_no_partial_vm(base, tmp_path, passfile, monkeypatch):
    _big_vm(base, 64)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--no-compress", "--passphrase-file", passfile, backup, "tpl", "work",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(8 << 20)})
    target = tmp_path / "target"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    before = (target / "qubes.xml").read_bytes()
    # half of the backup arrives, then the source stalls: the restore is mid-VM
    half = backup.stat().st_size // 2
    proc = subprocess.Popen([BIN / "qvm-backup-restore", "--passphrase-file", passfile,
                             "--source-command", f"head -c {half} '{backup}'; sleep 30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(target.glob(".restore-*/*")):
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"removed the partly restored data" in err
    assert not list(target.glob(".restore-*"))
    assert not (target / "appvms").exists() or not list((target / "appvms").iterdir())
    assert (target / "qubes.xml").read_bytes() == before


def test_progress_json_for_programs(base, tmp_path, passfile):
    make_demo_vms(base)
    proc = run("qvm-backup", "--progress", "json", "--passphrase-file", passfile,
               tmp_path / "b.bin")
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0
    assert all(a["done"] <= b["done"] for a, b in zip(progress, progress[1:]))
    assert events[-1] == {"event": "finished", "ok": True, "seconds": events[-1]["seconds"]}
    plain = run("qvm-backup", "--passphrase-file", passfile, tmp_path / "c.bin")
    assert plain.stderr == b""  # not a terminal: no bar, nothing extra


def test_b25_destination_that_stops_reading_times_out(base, tmp_path, passfile):
    _big_vm(base, 16)
    t0 = time.monotonic()
    proc = run("qvm-backup", "--passphrase-file", passfile, "--dest-timeout", "2",
               "--dest-command", "head -c 1000000 >/dev/null; sleep 60", check=False, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    assert b"took no data for 2 s" in proc.stderr


def test_b16_failed_backups_leave_no_temporary_files(base, tmp_path, passfile):
    _big_vm(base, 16)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    for _ in range(3):
        proc = run("qvm-backup", "--passphrase-file", passfile, "--tmpdir", tmp,
                   "--dest-command", "head -c 100000 >/dev/null; exit 5", check=False)
        assert proc.returncode == 1 and b"exit status 5" in proc.stderr
        assert list(tmp.iterdir()) == []
