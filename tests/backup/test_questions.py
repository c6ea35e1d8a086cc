"""Questions only on a terminal: `Do you want to proceed?` and the passphrase prompts."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import termios
import fcntl
import time

from tests.backup.helpers import make_demo_vms
from tests.conftest import run

BIN = os.path.dirname(sys.executable)


def _on_terminal(args, answers, timeout=60):
    """Run a command with a pseudo-terminal as its controlling terminal; answer prompts."""
    master, slave = os.openpty()

    def become_session_leader():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([os.path.join(BIN, args[0]), *map(str, args[1:])], stdin=slave,
                            stdout=slave, stderr=slave, preexec_fn=become_session_leader)
    os.close(slave)
    seen, pending = b"", list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        while pending and pending[0][0].encode() in seen.split(b"\n")[-1] + seen[-200:]:
            prompt, answer = pending.pop(0)
            seen += b"\n"  # do not answer the same prompt twice
            os.write(master, answer.encode() + b"\n")
        if proc.poll() is not None and not ready:
            break
    proc.wait(timeout=10)
    os.close(master)
    return proc.returncode, seen.decode(errors="replace")


def test_backup_and_restore_ask_on_a_terminal(base, tmp_path, monkeypatch):
    make_demo_vms(base)
    out = tmp_path / "b.bin"
    code, text = _on_terminal(["qvm-backup", out, "work"],
                              [("Do you want to proceed?", "y"), ("passphrase", "pässwörd-✓-ß"),
                               ("verification", "pässwörd-✓-ß")])
    assert code == 0, text
    assert out.exists() and "Backup completed" in text
    target = tmp_path / "t"
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    code, text = _on_terminal(["qvm-backup-restore", out],
                              [("passphrase", "pässwörd-✓-ß"), ("Do you want to proceed?", "y")])
    assert code == 0, text
    assert "work" in run("qvm-ls", "--raw-list").stdout.decode().split()


def test_answer_no_writes_nothing(base, tmp_path):
    make_demo_vms(base)
    out = tmp_path / "b.bin"
    code, text = _on_terminal(["qvm-backup", out], [("Do you want to proceed?", "n")])
    assert code == 0, text
    assert not out.exists() and not list(tmp_path.glob("b.bin*"))


def test_mismatched_passphrases_stop(base, tmp_path):
    make_demo_vms(base)
    out = tmp_path / "b.bin"
    code, text = _on_terminal(["qvm-backup", "--yes", out],
                              [("passphrase", "one"), ("verification", "two")])
    assert code == 1 and "Password mismatch" in text
    assert not out.exists()


def test_no_terminal_and_no_passphrase_file_is_refused(base, tmp_path):
    make_demo_vms(base)
    proc = run("qvm-backup", tmp_path / "b.bin", check=False, input=b"")
    assert proc.returncode == 1 and b"--passphrase-file" in proc.stderr
