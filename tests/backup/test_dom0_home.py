"""dom0 home in backups (CASES.md B34-B39): links exact, nothing overwritten, users checked."""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from qubes.backup.hometree import HomeTree
from qubes.errors import QubesError
from tests.backup.helpers import make_demo_vms
from tests.conftest import run


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    (h / "docs" / "v2").mkdir(parents=True)
    (h / ".bashrc").write_text("Y\n")
    (h / "docs" / "v2" / "report.txt").write_text("report\n")
    os.symlink("../v2", h / "docs" / "current")      # relative, with ..
    os.symlink("/etc/hosts", h / "abs")              # absolute
    os.symlink(".", h / "self")
    os.symlink("/nonexistent/file", h / "dangling")  # B38
    os.link(h / ".bashrc", h / "bashrc-hardlink")
    (h / "empty").mkdir()
    big = h / "sparse.img"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(4096))
    monkeypatch.setenv("HOME", str(h))
    return h


def test_home_round_trip_keeps_links_and_overwrites_nothing(base, tmp_path, home):
    make_demo_vms(base)
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--dom0-home", "--passphrase-file", pw, backup, "work")
    (home / ".bashrc").write_text("X\n")  # changed after the backup: must stay X (B36)
    target = tmp_path / "restore-into"
    target.mkdir()
    proc = run("qvm-backup-restore", "--passphrase-file", pw, "--dom0-home-dir", target,
               "--rename-conflicting", backup)
    restored_root = next(target.glob("home-restore-*"))
    assert str(restored_root) in proc.stdout.decode()  # the path is printed
    user = getpass.getuser()
    r = restored_root / "dom0-home" / user
    assert (home / ".bashrc").read_text() == "X\n"
    assert (r / ".bashrc").read_text() == "Y\n"
    assert os.readlink(r / "docs" / "current") == "../v2"          # B37
    assert os.readlink(r / "abs") == "/etc/hosts"
    assert os.readlink(r / "self") == "."
    assert os.readlink(r / "dangling") == "/nonexistent/file"       # B38
    assert os.stat(r / "bashrc-hardlink").st_ino == os.stat(r / ".bashrc").st_ino
    assert (r / "empty").is_dir() and (r / "docs" / "v2" / "report.txt").read_text() == "report\n"
    assert (r / "sparse.img").read_bytes() == (home / "sparse.img").read_bytes()
    assert os.stat(r / "sparse.img").st_blocks * 512 < 1 << 20


def test_username_mismatch_is_refused_unless_asked(base, tmp_path, home, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    backup = tmp_path / "b.bin"
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("LOGNAME", "alice")
    run("qvm-backup", "--dom0-home", "--passphrase-file", pw, backup)
    monkeypatch.setenv("USER", "bob")
    monkeypatch.setenv("LOGNAME", "bob")
    target = tmp_path / "t"
    target.mkdir()
    proc = run("qvm-backup-restore", "--passphrase-file", pw, "--dom0-home-dir", target, backup,
               check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "'alice'" in err and "'bob'" in err and "--ignore-username-mismatch" in err
    assert list(target.iterdir()) == []
    run("qvm-backup-restore", "--passphrase-file", pw, "--dom0-home-dir", target,
        "--ignore-username-mismatch", backup)
    assert (next(target.glob("home-restore-*")) / "dom0-home" / "alice" / ".bashrc").exists()


def test_skip_dom0_home_and_verify_only(base, tmp_path, home):
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--dom0-home", "--passphrase-file", pw, backup)
    target = tmp_path / "t"
    target.mkdir()
    run("qvm-backup-restore", "--verify-only", "--passphrase-file", pw, "--dom0-home-dir",
        target, backup)
    run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", pw, "--dom0-home-dir",
        target, backup)
    assert list(target.iterdir()) == []


def test_home_in_archive_without_dom0_entry_is_still_offered(base, tmp_path):
    """B34: the peer writes a home whatever qubes.xml says; it must not be ignored."""
    from tests.conftest import peers_or_skip
    import subprocess
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    out = tmp_path / "peer.bin"
    subprocess.run([peers_or_skip() / "make-backup-v3", "-q", "-p", pw, "--vm", "template:t",
                    out], check=True, capture_output=True)
    target = tmp_path / "t"
    target.mkdir()
    proc = run("qvm-backup-restore", "--passphrase-file", pw, "--dom0-home-dir", target,
               "--ignore-username-mismatch", out)
    assert "dom0 home restored into" in proc.stdout.decode()
    assert (next(target.glob("home-restore-*")) / "dom0-home" / "user" / ".bashrc").exists()


def test_unreadable_file_is_named_before_anything_is_written(tmp_path, monkeypatch):
    """B39. As root every file is readable, so the check's decision is simulated here."""
    h = tmp_path / "h"
    (h / "sub").mkdir(parents=True)
    (h / "sub" / "secret").write_text("x")
    real_access = os.access
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # root skips the check
    monkeypatch.setattr(os, "access", lambda p, m: not str(p).endswith("secret")
                        and real_access(p, m))
    with pytest.raises(QubesError, match=r"cannot read .*sub/secret.*nothing was written"):
        HomeTree(str(h), "user").size


NOBODY = 65534
AS_NOBODY = {
    "setpriv": ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"],
    "runuser": ["runuser", "-u", "nobody", "--"],
}


def _as_nobody_prefix(env) -> list[str]:
    """A command prefix that runs our Python as uid/gid 65534, or a skip saying why not."""
    if os.geteuid() != 0:
        pytest.skip("B39 for real needs root to make a file of another owner and drop to nobody")
    tried = []
    for name, prefix in AS_NOBODY.items():
        if shutil.which(prefix[0]) is None:
            tried.append(f"{name}: not installed")
            continue
        probe = subprocess.run([*prefix, sys.executable, "-c",
                                "import os, qubes.backup.hometree; print(os.getuid())"],
                               capture_output=True, env=env, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip() == str(NOBODY).encode():
            return prefix
        tried.append(f"{name}: exit {probe.returncode} "
                     f"{probe.stderr.decode(errors='replace').strip()[-200:]}")
    pytest.skip("cannot run this project's Python as nobody (" + "; ".join(tried) + ")")


@pytest.fixture
def world_dir():
    """A directory nobody can reach (pytest's tmp_path sits below a 0700 directory)."""
    d = tempfile.mkdtemp(prefix="qubes-b39-")
    os.chmod(d, 0o755)
    closed = [str(p) for p in Path(d).parents if not os.stat(p).st_mode & 0o001]
    if closed:
        shutil.rmtree(d)
        pytest.skip(f"the temporary directory is below {closed[0]}, which nobody cannot enter")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_b39_real_unreadable_file_stops_qvm_backup_as_a_user(world_dir):
    """B39 without simulation: `secret` is root's, mode 000, and qvm-backup runs as nobody."""
    w = Path(world_dir)
    home, out, qubes = w / "home", w / "out", w / "qubes"
    (home / "sub").mkdir(parents=True)
    (home / ".bashrc").write_text("fine\n")
    (home / "sub" / "secret").write_text("only root\n")
    out.mkdir()
    (w / "pw").write_text("pw\n")
    env = dict(os.environ, QUBES_BASE_DIR=str(qubes), QUBES_OFFLINE="1", HOME=str(home),
               USER="nobody", LOGNAME="nobody")
    prefix = _as_nobody_prefix(env)
    for cmd in (["qvm-init-storage"], ["qvm-create", "--class", "TemplateVM", "-l", "black", "tpl"],
                ["qvm-create", "-l", "blue", "work"]):
        run(*cmd, env=env)
    for root, dirs, files in os.walk(w):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.lchown(name, NOBODY, NOBODY)
    os.chown(w, 0, 0)
    secret = home / "sub" / "secret"
    os.chown(secret, 0, 0)
    os.chmod(secret, 0)
    backup = [*prefix, sys.executable, "-m", "qubes.tools.qvm_backup", "--dom0-home", "-y",
              "--passphrase-file", str(w / "pw"), str(out), "work"]
    before = {p: p.stat().st_mtime_ns for p in w.rglob("*")}
    proc = subprocess.run(backup, capture_output=True, env=env, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.stdout, err)
    assert err.startswith("ERROR: ") and err.count("ERROR: ") == 1, err
    assert str(secret) in err and "permission denied" in err, err
    assert "nothing was written" in err
    assert list(out.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in w.rglob("*")} == before, "something was written"
    # the control: readable again, the same command as the same user succeeds
    os.chmod(secret, 0o644)
    proc = subprocess.run(backup, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(list(out.iterdir())) == 1


def test_a_home_a_restore_would_refuse_is_refused_before_writing(tmp_path, monkeypatch):
    """The writer keeps within the reader's limits (entries, depth): a backup we make is
    one we can restore. Limits lowered here; the real ones are 200,000 and 256."""
    from qubes.backup import extract, hometree
    home = tmp_path / "user"
    deep = home / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    monkeypatch.setattr(hometree, "MAX_DEPTH", 5)   # user/a/b/c/f: five parts, allowed
    assert len(HomeTree(str(home), "user").entries) == 4
    monkeypatch.setattr(hometree, "MAX_DEPTH", 4)
    with pytest.raises(QubesError, match=r"a/b/c in the home directory is nested more than 4"):
        HomeTree(str(home), "user").entries
    monkeypatch.setattr(hometree, "MAX_DEPTH", extract.MAX_DEPTH)
    monkeypatch.setattr(hometree, "MAX_HOME_ENTRIES", 3)
    with pytest.raises(QubesError, match="holds more than 3 entries, more than a restore "
                                         "accepts; move some out, nothing was written"):
        HomeTree(str(home), "user").entries
