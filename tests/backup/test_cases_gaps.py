"""CASES.md cases whose coverage was missing or partial: error reports naming VM and
member (B06), foreign-language command errors (B09), bounded temporary space for
restore and verify (B19, B20), hostile qubes.xml entries and outer names (B41), a
legacy DispVM entry (B44), a zstd backup without a zstd codec (B48), and progress of
a compressed backup (B50).

Backups come from our `qvm-backup` over `make_demo_vms`, or from the peer writer when
a case needs a qubes.xml we edit (`--keep-source` gives the one the writer stored,
`--raw-item qubes.xml=...` puts our version in its place, authenticated as usual).
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from qubes.tools import _progress as _progress_mod
from qubes.tools import qvm_backup
from tests.backup.helpers import (fresh_target, image_hashes, make_demo_vms, outer_members,
                                  rewrite_members, write_at)
from tests.conftest import ROOT, peers_or_skip, run, small_tmpfs

PASS = "pässwörd-✓-ß"
MiB = 1 << 20


def files_under(path) -> set[str]:
    return {os.path.relpath(os.path.join(r, f), path) for r, _d, fs in os.walk(path) for f in fs}


def listing() -> list[str]:
    return run("qvm-ls", "--raw-list").stdout.decode().split()


def hmac_file(data: bytes) -> bytes:
    return f"(stdin)= {hmac.new(PASS.encode(), data, 'sha512').hexdigest()}\n".encode()


def flip_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]


def qid(vm: str) -> str:
    return run("qvm-prefs", "-g", vm, "qid").stdout.decode().strip()


class PeakUsage:
    """Samples the bytes in use on the filesystem mounted at `path` while a command runs
    (statvfs, so unlinked temporary files count too)."""

    def __init__(self, path):
        self.path = path
        self.base = self._usage()
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _usage(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._usage() - self.base)
            self.samples += 1
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- B06: every error names VM, member and stage; the report lists every failed VM ---------

@pytest.mark.parametrize("verify", [True, False], ids=["verify-only", "restore"])
def test_b06_corrupt_and_missing_chunks_each_name_vm_member_and_stage(base, tmp_path, passfile,
                                                                     monkeypatch, verify):
    """Two faults in two VMs: neither hides the other, each line says where it happened,
    the summary lists both VMs, and the --log file holds the same lines as stderr."""
    make_demo_vms(base)
    for vm in ("work", "personal"):  # incompressible: several chunks each
        write_at(base / f"appvms/{vm}/private.img", 1 * MiB, os.urandom(128 * 1024))
    w, p = f"vm{qid('work')}", f"vm{qid('personal')}"
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "tpl", "work", "personal",
        env={"QUBES_BACKUP_CHUNK_SIZE": "16384"})
    names = [n for n, _d in outer_members(backup)]
    corrupt, missing = f"{w}/private.img.002", f"{p}/private.img.002"
    assert corrupt in names and missing in names and f"{p}/private.img.003" in names, names
    bad = tmp_path / "bad.bin"
    rewrite_members(backup, bad, {corrupt: flip_middle, missing: lambda _d: None,
                                  missing + ".hmac": lambda _d: None})
    target = base if verify else fresh_target(tmp_path, monkeypatch)
    log = tmp_path / "restore.log"
    proc = run("qvm-backup-restore", "--skip-dom0-home", *(["--verify-only"] if verify else []),
               "--log", log, "--passphrase-file", passfile, bad, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("ERROR: ")]
    corrupt_lines = [line for line in errors if corrupt in line]
    missing_lines = [line for line in errors if missing in line]
    assert corrupt_lines and missing_lines, err
    assert all("VM work" in line and "authenticate" in line for line in corrupt_lines), err
    assert all("VM personal" in line and "retrieve" in line for line in missing_lines), err
    assert "passphrase" not in err
    assert any(line.startswith("VM work: FAILED") for line in err.splitlines()), err
    assert any(line.startswith("VM personal: FAILED") for line in err.splitlines()), err
    assert any(line.startswith("ERROR: the backup was not") for line in err.splitlines()), err
    assert "Traceback" not in err
    logged = log.read_text(encoding="utf-8").splitlines()
    missing_from_log = [line for line in err.splitlines() if line and line not in logged]
    assert not missing_from_log, missing_from_log
    if not verify:
        names = listing()
        assert "tpl" in names and "work" not in names and "personal" not in names
        assert not (target / "appvms" / "work").exists()
        assert not (target / "appvms" / "personal").exists()


# -- B09: a command's error text in another language or encoding arrives intact ----------

FRENCH = "Impossible de réinitialiser le périphérique PCI"
# French in UTF-8, then German in Latin-1 with a terminal escape in it
FOREIGN_STDERR = (FRENCH + "\n").encode() + b"Ger\xe4t \x1b[2J belegt\n"


@pytest.fixture
def foreign_failure(tmp_path):
    """A script that prints FOREIGN_STDERR to its stderr and exits 3."""
    msg = tmp_path / "msg.bin"
    msg.write_bytes(FOREIGN_STDERR)
    script = tmp_path / "fail.sh"
    script.write_text(f"#!/bin/sh\ncat >/dev/null 2>&1 || true\ncat '{msg}' >&2\nexit 3\n")
    script.chmod(0o755)
    return script


def _check_foreign_error(proc) -> None:
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.decode("utf-8")  # strict: whatever the command wrote, we print UTF-8
    # (with --dest-command the backup summary goes to stderr too: stdout is not ours)
    assert err.count("ERROR") == 1, err
    error = err[err.index("ERROR"):]
    assert error.startswith("ERROR: the "), err
    assert "exit status 3" in error
    assert FRENCH in error  # intact, not "empty response" or mojibake
    assert "Ger" in error and "belegt" in error
    assert b"\xe4" not in proc.stderr and b"\x1b" not in proc.stderr  # escaped, not passed on


def test_b09_source_command_error_in_french_and_latin1_is_shown(base, passfile, foreign_failure):
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile,
               "--source-command", str(foreign_failure), check=False)
    _check_foreign_error(proc)
    assert listing() == ["dom0"]


def test_b09_dest_command_error_in_french_and_latin1_is_shown(base, passfile, foreign_failure):
    make_demo_vms(base)
    proc = run("qvm-backup", "--passphrase-file", passfile, "--dest-command",
               str(foreign_failure), "work", "tpl", check=False)
    _check_foreign_error(proc)


# -- B19, B20: temporary space stays a few chunks, whatever the size of the VM -----------

CHUNK = 1 * MiB


def _big_backup(base, tmp_path, passfile, mib: int):
    """work holds `mib` MiB of random data; 1 MiB chunks, uncompressed (so every chunk
    is full size)."""
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(mib * MiB))
    hashes = image_hashes(base)
    out = tmp_path / "big.bin"
    run("qvm-backup", "--no-compress", "--passphrase-file", passfile, out, "tpl", "work",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(CHUNK)})
    return out, hashes


def _run_sampled(tmpdir, *args, env=None):
    with PeakUsage(tmpdir) as usage:
        proc = run(*args, check=False, env=env, timeout=300)
    assert usage.samples > 3  # the sampler really ran while the command did
    return proc, usage.peak


def test_b19_restore_of_a_vm_larger_than_the_tmpdir_filesystem(base, tmp_path, passfile,
                                                               monkeypatch):
    """48 MiB of VM data through an 8 MiB --tmpdir: chunks stream through it one or two
    at a time and the images land in the pool intact."""
    out, hashes = _big_backup(base, tmp_path, passfile, 48)
    with small_tmpfs(tmp_path / "small", "8m") as small:
        target = fresh_target(tmp_path, monkeypatch)
        proc, peak = _run_sampled(small, "qvm-backup-restore", "--skip-dom0-home", "--tmpdir",
                                  small, "--passphrase-file", passfile, out)
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert peak <= 4 * CHUNK, f"{peak} bytes in --tmpdir at once"
        assert os.listdir(small) == []
    got = image_hashes(target)
    assert got["appvms/work/private.img"] == hashes["appvms/work/private.img"]
    assert got["vm-templates/tpl/root.img"] == hashes["vm-templates/tpl/root.img"]
    assert {"tpl", "work"} <= set(listing())


@pytest.mark.parametrize("how", ["--tmpdir", "TMPDIR"])
def test_b20_verify_only_of_a_large_backup_writes_a_few_chunks_at_most(base, tmp_path, passfile,
                                                                       how):
    """A 48 MiB backup verified with a 6 MiB temporary filesystem (given by --tmpdir, or
    the default temporary directory): it passes, never holds more than a few chunks, and
    leaves nothing behind."""
    out, _hashes = _big_backup(base, tmp_path, passfile, 48)
    assert out.stat().st_size > 40 * CHUNK
    xml_before = (base / "qubes.xml").read_bytes()
    with small_tmpfs(tmp_path / "small", "6m") as small:
        args = ["--tmpdir", small] if how == "--tmpdir" else []
        env = {"TMPDIR": str(small)} if how == "TMPDIR" else None
        proc, peak = _run_sampled(small, "qvm-backup-restore", "--verify-only", *args,
                                  "--passphrase-file", passfile, out, env=env)
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert b"Verification completed" in proc.stdout
        assert peak <= 4 * CHUNK, f"{peak} bytes in the temporary directory at once"
        assert os.listdir(small) == []
    assert (base / "qubes.xml").read_bytes() == xml_before


# -- B41: hostile names and paths in an authentic qubes.xml; an absolute outer member ---

LAYOUT = ["--vm", "template:tpl", "--vm", "app:work", "--vm", "app:other", "--no-home"]


def _peer_with_xml(tmp_path, passfile, change):
    """A peer backup whose qubes.xml is the writer's own with `change(text) -> text`
    applied; the changed file is authenticated like the rest (the sender knew the
    passphrase)."""
    peers = peers_or_skip()
    src = tmp_path / "peer-src"
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, *LAYOUT, "--keep-source",
                    src, tmp_path / "orig.bin"], check=True, capture_output=True, timeout=300)
    xml = (src / "qubes.xml").read_text(encoding="utf-8")
    changed = change(xml)
    assert changed != xml
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("qubes.xml")
        info.size = len(changed.encode())
        tf.addfile(info, io.BytesIO(changed.encode()))
    raw = tmp_path / "xml.tar"
    raw.write_bytes(buf.getvalue())
    out = tmp_path / "hostile.bin"
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, *LAYOUT, "--raw-item",
                    f"qubes.xml={raw}", out], check=True, capture_output=True, timeout=300)
    return out


def _attr(vm: str, attr: str, value: str):
    """Set attribute `attr` of VM element `vm` to `value` (added when absent)."""
    def change(xml: str) -> str:
        start = xml.index(f'name="{vm}"')
        end = xml.index("/>", start)
        element = xml[start:end]
        if f' {attr}="' in element:
            head, _sep, rest = element.partition(f' {attr}="')
            element = head + f' {attr}="{value}"' + rest.split('"', 1)[1]
        else:
            element += f' {attr}="{value}"'
        return xml[:start] + element + xml[end:]
    return change


def _both(*changes):
    def change(xml):
        for c in changes:
            xml = c(xml)
        return xml
    return change


HOSTILE_XML = {
    "name": (lambda xml: xml.replace('name="work"', 'name="../../etc"'), "../../etc"),
    "kernel": (_both(_attr("work", "uses_default_kernel", "False"),
                     _attr("work", "kernel", "/../../boot/evil")), "/../../boot/evil"),
    "backup_path": (_attr("work", "backup_path", "vm2/../../../home/user/.bashrc"),
                    "vm2/../../../home/user/.bashrc"),
}


@pytest.mark.parametrize("attack", list(HOSTILE_XML))
@pytest.mark.parametrize("verify", [False, True], ids=["restore", "verify-only"])
def test_b41_hostile_qubes_xml_entry_is_refused_naming_it(base, tmp_path, passfile, attack,
                                                          verify):
    """An authentic backup from a compromised machine: the bad value is named, nothing
    is written anywhere (not in the target, not beside it), nothing is registered."""
    change, offending = HOSTILE_XML[attack]
    backup = _peer_with_xml(tmp_path, passfile, change)
    xml_before = (base / "qubes.xml").read_bytes()
    before = files_under(tmp_path.parent)
    proc = run("qvm-backup-restore", "--skip-dom0-home", *(["--verify-only"] if verify else []),
               "--passphrase-file", passfile, backup, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.stdout.decode(), err)
    assert offending in err, err
    assert "using the default" not in err, err  # it was refused, not repaired
    assert "Traceback" not in err
    assert listing() == ["dom0"]
    assert (base / "qubes.xml").read_bytes() == xml_before
    assert files_under(tmp_path.parent) - before == set()
    assert not os.path.exists("/boot/evil") and not (base.parent / "etc").exists()


def test_b41_hostile_dir_path_is_never_used(base, tmp_path, passfile, monkeypatch):
    """dir_path says where a VM lived on the sending machine: the restore must not follow
    it. Either it refuses the backup naming the value, or the VM comes back in its usual
    directory of the target and nothing is written beside the target."""
    evil = "/var/lib/qubes/appvms/../../../../etc"
    backup = _peer_with_xml(tmp_path, passfile, _attr("work", "dir_path", evil))
    target = fresh_target(tmp_path, monkeypatch)
    before = files_under(tmp_path.parent)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile, backup,
               check=False)
    err = proc.stderr.decode()
    assert "Traceback" not in err
    new = files_under(tmp_path.parent) - before
    assert all(f.startswith(os.path.relpath(target, tmp_path.parent) + "/") for f in new), new
    if proc.returncode != 0:
        assert evil in err, err
        assert listing() == ["dom0"]
        return
    dir_path = run("qvm-prefs", "-g", "work", "dir_path").stdout.decode().strip()
    assert dir_path == str(target / "appvms" / "work")
    assert (target / "appvms" / "work" / "private.img").is_file()


def test_b41_absolute_outer_member_is_refused_naming_it(base, tmp_path, passfile, monkeypatch):
    """A member `/etc/passwd` with a valid HMAC between the VMs' chunks: named in the
    error, and /etc/passwd is not touched."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "tpl", "work")
    payload = b"root::0:0:pwned:/root:/bin/sh\n"
    passwd_before = hashlib.sha256(open("/etc/passwd", "rb").read()).hexdigest()
    members = outer_members(backup)
    at = next(i for i, (n, _d) in enumerate(members) if n == "qubes.xml.000.hmac") + 1
    members[at:at] = [("/etc/passwd", payload), ("/etc/passwd.hmac", hmac_file(payload))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    bad = tmp_path / "abs.bin"
    bad.write_bytes(buf.getvalue())
    assert "/etc/passwd" in [m.name for m in tarfile.open(bad, ignore_zeros=True)]
    for verify in (True, False):
        if not verify:
            fresh_target(tmp_path, monkeypatch)
        proc = run("qvm-backup-restore", "--skip-dom0-home", *(["--verify-only"] if verify else []),
                   "--passphrase-file", passfile, bad, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert any(line.startswith("ERROR: ") and "/etc/passwd" in line
                   for line in err.splitlines()), err
    assert hashlib.sha256(open("/etc/passwd", "rb").read()).hexdigest() == passwd_before


# -- B44: a legacy DispVM element without dir_path ----------------------------------------

DISPVM = '  <QubesDisposableVm qid="9" name="disp1" dispid="1"{tpl} label="red" ' \
         'firewall_conf="firewall.xml" netvm_qid="4"/>\n'


@pytest.mark.parametrize("template", [True, False], ids=["with-template", "no-template"])
def test_b44_legacy_dispvm_entry_does_not_stop_the_restore(base, tmp_path, passfile, template):
    """R2 wrote DispVMs without dir_path (and one whose template was gone without
    template_qid): that entry is left out with a WARNING naming it, or loads harmlessly;
    every backed-up VM comes back."""
    element = DISPVM.format(tpl=' template_qid="1"' if template else "")
    backup = _peer_with_xml(tmp_path, passfile, lambda xml: xml.replace(
        "</QubesVmCollection>", element + "</QubesVmCollection>"))
    for extra in (["--verify-only"], []):
        proc = run("qvm-backup-restore", "--skip-dom0-home", *extra, "--passphrase-file",
                   passfile, backup, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "ERROR" not in err, err
    names = listing()
    assert {"tpl", "work", "other"} <= set(names)
    assert "disp1" not in names  # not backed up: nothing to restore
    assert not (base / "appvms" / "disp1").exists()


# -- B48: zstd named in the header, no zstd codec here -----------------------------------

# Runs the real command with every zstd module made unimportable, as on a host
# without them (setting sys.modules[name] = None makes `import name` fail).
NO_ZSTD = ("import sys\n"
           "for m in ('zstandard', 'compression.zstd', 'compression', 'zstd'):\n"
           "    sys.modules[m] = None\n"
           "from qubes.tools.qvm_backup_restore import main\n"
           "sys.exit(main(sys.argv[1:]))\n")


def test_b48_zstd_backup_without_zstd_fails_after_the_header_naming_what_to_install(
        base, tmp_path, passfile, monkeypatch):
    """An authentic header saying zstd on a host without a zstd codec: one ERROR right
    after the header, naming zstd and the package to install; no plan, nothing written."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "tpl", "work")
    header = dict(outer_members(backup))["backup-header"].decode()
    assert "compression-filter=gzip" in header
    zheader = header.replace("compression-filter=gzip", "compression-filter=zstd").encode()
    zbackup = tmp_path / "zstd.bin"
    rewrite_members(backup, zbackup, {"backup-header": lambda _d: zheader,
                                      "backup-header.hmac": lambda _d: hmac_file(zheader)})
    target = fresh_target(tmp_path, monkeypatch)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = files_under(target)
    for extra in (["--verify-only"], []):
        proc = subprocess.run([sys.executable, "-c", NO_ZSTD, "--skip-dom0-home", *extra,
                               "--tmpdir", str(tmp), "--passphrase-file", str(passfile),
                               str(zbackup)], capture_output=True, timeout=120,
                              cwd=ROOT, env=dict(os.environ))
        err = proc.stderr.decode()
        assert proc.returncode == 1, err
        assert err.count("ERROR: ") == 1 and err.startswith("ERROR: "), err
        assert "zstd" in err and "install" in err and "zstandard" in err, err
        assert "passphrase" not in err and "HMAC" not in err  # the header is authentic
        assert proc.stdout == b""  # stopped before the plan: no VM was looked at
        assert os.listdir(tmp) == []
    assert files_under(target) == before
    assert listing() == ["dom0"]


# -- B50: progress of a compressed backup counts input bytes ----------------------------

def _progress(stderr: bytes) -> list[dict]:
    events = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "finished" and events[-1]["ok"] is True, events
    return [e for e in events if e["event"] == "progress"]


def test_b50_progress_of_a_compressed_backup_counts_input_and_ends_at_total(
        base, tmp_path, passfile, monkeypatch, capsys):
    """160 MiB of real zeros compress to almost nothing: progress still moves with the
    bytes read (never by the bytes written), never goes back, and ends exactly at total.
    Run in-process with the renderer's rate limit off, so every report is seen."""
    make_demo_vms(base)
    zeros = 160 * MiB
    write_at(base / "appvms/work/private.img", 0, bytes(zeros))  # allocated zeros, no holes
    out = tmp_path / "b.bin"
    monkeypatch.setattr(_progress_mod, "INTERVAL", 0)
    capsys.readouterr()
    code = qvm_backup.main(["--progress", "json", "--passphrase-file", str(passfile), str(out),
                            "tpl", "work"])
    err = capsys.readouterr().err
    assert code == 0, err
    progress = _progress(err.encode())
    size = out.stat().st_size
    assert size < zeros // 20  # it did compress
    done = [e["done"] for e in progress]
    totals = {e["total"] for e in progress}
    assert len(totals) == 1, totals
    total = totals.pop()
    assert zeros <= total <= 2 * zeros
    assert done == sorted(done), done
    assert done[-1] == total
    # input bytes: about one report per MiB read, though only `size` bytes were written
    assert len(done) >= zeros // MiB // 2, len(done)
    steps = [b - a for a, b in zip(done, done[1:])]
    assert max(steps) <= 8 * MiB and sum(steps) > 100 * size, steps


def test_b50_restore_progress_never_goes_back_and_ends_at_the_backup_size(
        base, tmp_path, passfile, monkeypatch):
    """The restore reads the backup file: its progress counts the bytes of that file, so
    it ends exactly at the file's size (a bar left at 70 % after success is wrong)."""
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(8 * MiB))
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out, "tpl", "work",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(MiB)})
    size = out.stat().st_size
    fresh_target(tmp_path, monkeypatch)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--progress", "json",
               "--passphrase-file", passfile, out)
    progress = _progress(proc.stderr)
    done = [e["done"] for e in progress]
    assert done and done == sorted(done), done
    assert {e["total"] for e in progress} == {size}
    assert done[-1] == size, (done, size)
