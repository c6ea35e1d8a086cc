"""Atomic saves, lock-then-verify, concurrent writers and readers (CASES.md B59, B62, B63, B64)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from qubes.errors import StoreError
from qubes.model.host import FixedHost
from qubes.store.access import modify_collection, read_collection, store_path
from tests.conftest import run, small_tmpfs


def test_save_on_a_full_filesystem_keeps_the_old_file(tmp_path):
    with small_tmpfs(tmp_path / "small", "64k") as mnt:
        env = {"QUBES_BASE_DIR": str(mnt), "QUBES_OFFLINE": "1"}
        run("qvm-init-storage", env=env)
        with modify_collection(str(mnt), FixedHost()) as app:
            app.ensure_dom0()
        old = (mnt / "qubes.xml").read_bytes()
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\1" * 512):
                pass
        except OSError:
            pass
        os.close(fd)
        with pytest.raises(StoreError, match="no space left on device"):
            with modify_collection(str(mnt), FixedHost()) as app:
                for i in range(20):
                    app.add_new_vm("TemplateVM", f"tpl{i}")
        assert (mnt / "qubes.xml").read_bytes() == old
        assert not [p for p in os.listdir(mnt) if p.endswith(".tmp")]
        proc = run("qvm-prefs", "-s", "dom0", "default_user", "alice", check=False, env=env)
        assert proc.returncode == 1 and b"no space left" in proc.stderr
        assert (mnt / "qubes.xml").read_bytes() == old


def test_failed_block_saves_nothing(base):
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    before = (base / "qubes.xml").read_bytes()
    with pytest.raises(RuntimeError):
        with modify_collection(str(base), FixedHost()) as app:
            app["tpl"].memory = 999
            raise RuntimeError("changed my mind")
    assert (base / "qubes.xml").read_bytes() == before


WORKER = r"""
import os, subprocess, sys
exe, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    subprocess.run([exe, "-s", name, "qrexec_timeout", str(100 + i)], check=True)
    subprocess.run([exe, "-s", name, "default_user", f"u{i}"], check=True)
"""


def test_eight_writers_lose_no_change_and_readers_never_see_a_partial_file(base):
    """8 processes x 25 changes of their own VM through qvm-prefs (B62, B63)."""
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    names = [f"vm{i}" for i in range(8)]
    for name in names:
        run("qvm-create", "-l", "red", name)
    exe = os.path.join(os.path.dirname(sys.executable), "qvm-prefs")
    stop = False
    reads = 0

    def reader():
        nonlocal reads
        while not stop:
            with read_collection(str(base), FixedHost()) as app:
                assert len(app) == 10
            reads += 1

    with ThreadPoolExecutor(1) as pool:
        watcher = pool.submit(reader)
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, exe, name, "25"])
                 for name in names]
        codes = [p.wait(timeout=600) for p in procs]
        stop = True
        watcher.result()
    assert codes == [0] * 8 and reads > 0
    with read_collection(str(base), FixedHost()) as app:
        for name in names:
            assert app[name].qrexec_timeout == 124 and app[name].default_user == "u24"


def test_lock_then_verify_survives_a_rename_while_waiting(base):
    """P2 waits on the old inode while P1 saves: P2 must re-lock the new file (§16.3)."""
    script = r"""
import sys, time
from qubes.model.host import FixedHost
from qubes.store.access import modify_collection
base, name, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
with modify_collection(base, FixedHost()) as app:
    time.sleep(delay)
    app.add_new_vm("TemplateVM", name)
"""
    p1 = subprocess.Popen([sys.executable, "-c", script, str(base), "first", "1.0"])
    time.sleep(0.3)
    p2 = subprocess.Popen([sys.executable, "-c", script, str(base), "second", "0"])
    assert p1.wait(timeout=60) == 0 and p2.wait(timeout=60) == 0
    with read_collection(str(base)) as app:
        assert app.get("first") is not None and app.get("second") is not None


def test_stuck_writer_blocks_neither_readers_nor_forever(base):
    """B64: readers go on; a writer gives up naming the holder's pid."""
    holder = subprocess.Popen([sys.executable, "-c", r"""
import sys, time
from qubes.model.host import FixedHost
from qubes.store.access import modify_collection
with modify_collection(sys.argv[1], FixedHost()) as app:
    print("locked", flush=True)
    time.sleep(60)
""", str(base)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        t0 = time.monotonic()
        proc = run("qvm-ls", "--raw-list", env={"QUBES_READ_LOCK_TIMEOUT": "0.5"})
        assert proc.stdout.split() == [b"dom0"] and time.monotonic() - t0 < 10
        proc = run("qvm-prefs", "-s", "dom0", "default_user", "x", check=False,
                   env={"QUBES_LOCK_TIMEOUT": "1"})
        assert proc.returncode == 1
        assert f"locked by process {holder.pid}".encode() in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_missing_store_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("QUBES_BASE_DIR", str(tmp_path / "none"))
    proc = run("qvm-ls", check=False)
    assert proc.returncode == 1
    assert b"qubes.xml does not exist (run qvm-init-storage first)" in proc.stderr


def test_damaged_store_offers_the_previous_version(base):
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    path = store_path(str(base))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    proc = run("qvm-ls", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "qubes.xml is damaged: line" in err and "qubes.xml.bak" in err


def test_flushing_syncs_while_the_block_runs_and_stops_after(monkeypatch, tmp_path):
    """A restore overlaps write-back with decoding; after the block no flush is left running."""
    import threading
    from qubes.util import atomicfile
    flushed, calls = threading.Event(), []
    monkeypatch.setattr(atomicfile, "sync_filesystem",
                        lambda path: (calls.append(path), flushed.set()))
    with atomicfile.flushing([str(tmp_path)], interval=0.01):
        assert flushed.wait(10), "no flush while the block ran"
    done = len(calls)
    threading.Event().wait(0.05)
    assert calls[0] == str(tmp_path) and len(calls) == done
    assert not any(t.name == "flush" for t in threading.enumerate())
