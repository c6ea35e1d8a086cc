"""Cases of CASES.md groups A-F: passphrase and header errors, space, verify-only
leaving no trace, dry-run plans, compression choices, destinations and cancelling.

Backups are made by our `qvm-backup` over `make_demo_vms` unless a case needs the
peer writer; damaged copies are rebuilt member by member with `rewrite_members`
(the header's HMAC recomputed where the case asks for an authentic header).
"""
from __future__ import annotations

import hmac
import io
import os
import re
import signal
import subprocess
import tarfile
import time

import pytest

from tests.backup.helpers import (fresh_target, image_hashes, make_demo_vms, outer_members,
                                  rewrite_members, sha256_file, write_at)
from tests.conftest import BIN, peers_or_skip, run, small_tmpfs

PASS = "pässwörd-✓-ß"


def tree(path) -> set[str]:
    """Every file, directory and link below `path` (relative names)."""
    out = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(root, name), path))
    return out


def header_hmac(header: bytes, algorithm: str = "sha512") -> bytes:
    return f"(stdin)= {hmac.new(PASS.encode(), header, algorithm).hexdigest()}\n".encode()


def with_header(src, dst, change) -> None:
    """`dst` = `src` with backup-header changed by `change(text) -> text` and its HMAC
    recomputed with the right passphrase, so the header is authentic."""
    header = change(dict(outer_members(src))["backup-header"].decode()).encode()
    rewrite_members(src, dst, {"backup-header": lambda _old: header,
                               "backup-header.hmac": lambda _old: header_hmac(header)})


# -- A: passphrase, authentication, integrity -----------------------------------------

def test_b01_wrong_passphrase_stops_at_the_header_and_writes_nothing(base, tmp_path, passfile,
                                                                    monkeypatch):
    """B01: wrong passphrase -> exit 1, one ERROR line blaming the passphrase or a modified
    header, no VM list on stdout, nothing created in the target or the temp directory."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup)
    target = fresh_target(tmp_path, monkeypatch)
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-pass\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = tree(target)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--tmpdir", tmp, "--passphrase-file",
               wrong, backup, check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert [line for line in err.splitlines() if "ERROR" in line] == [err.strip()]
    assert err.startswith("ERROR: ")
    assert "passphrase is wrong" in err and "header has been modified" in err
    assert proc.stdout == b""  # no "will be restored" plan, no VM names
    assert tree(target) == before
    assert os.listdir(tmp) == []
    assert run("qvm-ls", "--raw-list").stdout.decode().split() == ["dom0"]


def test_b04_verify_is_repeatable_and_a_short_last_chunk_is_named(base, tmp_path, passfile):
    """B04: (a) the same valid backup verified twice passes twice with the same report;
    (b) its last chunk cut by one byte fails both runs, with the same message naming it."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup,
        env={"QUBES_BACKUP_CHUNK_SIZE": "16384"})
    good = [run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, backup)
            for _ in range(2)]
    assert good[0].stdout == good[1].stdout and b"Verification completed" in good[0].stdout
    chunks = [name for name, _d in outer_members(backup) if not name.endswith(".hmac")]
    last = chunks[-1]
    assert int(last.rsplit(".", 1)[1]) > 0, chunks  # the item has several chunks
    short = tmp_path / "short.bin"
    rewrite_members(backup, short, {last: lambda data: data[:-1]})
    errors = []
    for _ in range(2):
        proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, short,
                   check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert last in err and "HMAC verification failed" in err
        assert "passphrase" not in err
        assert b"Verification completed" not in proc.stdout
        errors.append(err)
    assert errors[0] == errors[1]


def test_b12_failing_source_command_names_the_command_and_its_stderr(base, tmp_path, passfile):
    """B12 (with --source-command): `cat /nonexistent` -> non-zero exit, a message naming
    the command's failure and its stderr, nothing written."""
    before = tree(base)
    proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile,
               "--source-command", "cat /nonexistent", check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "the source command 'cat /nonexistent' failed with exit status 1" in err
    assert "/nonexistent: No such file or directory" in err  # cat's own stderr
    assert proc.stdout == b""
    assert tree(base) == before


# -- B: disk space, temp files ---------------------------------------------------------

def test_b03_small_temporary_space_names_needed_and_available_sizes(base, tmp_path, passfile):
    """B03: a temp directory too small for a chunk -> "not enough space in <tmpdir>" with
    the bytes needed and the bytes available; no HMAC/passphrase wording; temp emptied."""
    with small_tmpfs(tmp_path / "small", "1m") as small:
        make_demo_vms(base)
        write_at(base / "appvms/work/private.img", 0, os.urandom(4 << 20))
        out = tmp_path / "b.bin"
        run("qvm-backup", "--no-compress", "--passphrase-file", passfile, out, "work", "tpl")
        proc = run("qvm-backup-restore", "--verify-only", "--tmpdir", small, "--passphrase-file",
                   passfile, out, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1
        match = re.search(rf"not enough space in {re.escape(str(small))}: chunk '[^']+' needs "
                          r"(\d+) bytes, (\d+) bytes available", err)
        assert match, err
        needed, available = map(int, match.groups())
        assert needed > available and available <= 1 << 20 and needed >= 4 << 20
        assert "HMAC" not in err and "passphrase" not in err
        assert os.listdir(small) == []


def test_b14_restore_larger_than_free_space_is_refused_up_front(base, tmp_path, passfile,
                                                                monkeypatch):
    """B14: the VMs need more than the target has free -> refused before writing anything,
    "N bytes needed, M bytes available"; the target unchanged, nothing registered."""
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(24 << 20))
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "work", "tpl")
    with small_tmpfs(tmp_path / "pool", "16m") as pool:
        target = pool / "qubes"
        monkeypatch.setenv("QUBES_BASE_DIR", str(target))
        run("qvm-init-storage")
        before = tree(pool)
        xml = (target / "qubes.xml").read_bytes()
        proc = run("qvm-backup-restore", "--skip-dom0-home", "--passphrase-file", passfile,
                   backup, check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        match = re.search(rf"not enough space in {re.escape(str(target))} to restore: (\d+) "
                          r"bytes needed, (\d+) bytes available", err)
        assert match, err
        needed, available = map(int, match.groups())
        assert needed >= 24 << 20 and available <= 16 << 20
        assert tree(pool) == before and (target / "qubes.xml").read_bytes() == xml
        assert b"will be restored" not in proc.stdout
        assert run("qvm-ls", "--raw-list").stdout.decode().split() == ["dom0"]


def _verify_env(tmp_path):
    home, cwd, tmp = (tmp_path / n for n in ("home", "cwd", "tmp"))
    for d in (home, cwd, tmp):
        d.mkdir()
    return home, cwd, tmp, dict(os.environ, HOME=str(home), TMPDIR=str(tmp))


@pytest.mark.parametrize("damaged", [False, True], ids=["success", "failure"])
def test_b17_verify_only_leaves_nothing_in_home_cwd_or_tmpdir(base, tmp_path, passfile, damaged):
    """B17: after --verify-only (successful, and failing on a damaged chunk) $HOME, the
    working directory and the temp directory hold nothing new."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup)
    if damaged:
        bad = tmp_path / "bad.bin"
        rewrite_members(backup, bad, {"vm2/private.img.000": lambda d: d[:100] + bytes(
            [d[100] ^ 1]) + d[101:]})
        backup = bad
    home, cwd, tmp, env = _verify_env(tmp_path)
    for extra in ([], ["--tmpdir", str(tmp)]):
        proc = subprocess.run([BIN / "qvm-backup-restore", "--verify-only", *extra,
                               "--passphrase-file", passfile, backup], capture_output=True,
                              cwd=cwd, env=env, timeout=120)
        assert proc.returncode == (1 if damaged else 0), proc.stderr
        assert (b"Verification completed" in proc.stdout) != damaged
        assert (tree(home), tree(cwd), tree(tmp)) == (set(), set(), set())


def test_b18_cancelled_restore_leaves_no_process_of_the_source_command(base, tmp_path,
                                                                      passfile, monkeypatch):
    """B18: SIGINT to a restore fed by --source-command -> exit 130 ("cancelled"), and no
    process of that command (the shell and what it started) is still alive."""
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(16 << 20))
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--no-compress", "--passphrase-file", passfile, backup, "tpl", "work",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(4 << 20)})
    target = fresh_target(tmp_path, monkeypatch)
    pidfile = tmp_path / "source.pid"
    half = backup.stat().st_size // 2
    # the shell notes its pid, sends half of the backup, then stalls in a child `sleep`
    command = f"echo $$ > '{pidfile}'; head -c {half} '{backup}'; sleep 300; echo done"
    proc = subprocess.Popen([BIN / "qvm-backup-restore", "--skip-dom0-home", "--passphrase-file",
                             passfile, "--source-command", command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(target.glob(".restore-*/*")):
        time.sleep(0.02)
    assert pidfile.exists() and list(target.glob(".restore-*/*")), "the restore never started"
    shell = int(pidfile.read_text())
    assert _session_members(shell), "the source command should be running now"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert _session_members(shell) == []
    assert not list(target.glob(".restore-*"))


def _session_members(sid: int) -> list[int]:
    """Live processes (not zombies) whose session is `sid` (the source command runs in
    a session of its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


# -- C: restore mapping --------------------------------------------------------------

def _plan_lines(stdout: bytes) -> dict[str, str]:
    lines = {}
    for line in stdout.decode().splitlines():
        m = re.match(r"  (\S+)(?: -> (\S+))?\s+\S+\s+template: (\S+)", line)
        if m:
            lines[m.group(1)] = (m.group(2) or m.group(1), m.group(3))
    return lines


def test_b29_dry_run_shows_every_vms_final_template(base, tmp_path, passfile, monkeypatch):
    """B29: host already has `tpl`; the backup has `tpl` and VMs based on it. The printed
    plan shows each VM's final template: `tpl1` for all when renamed, the replacement
    with --replace-template; --dry-run changes nothing."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "tpl", "work", "personal")
    target = fresh_target(tmp_path, monkeypatch)
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "alt")
    xml = (target / "qubes.xml").read_bytes()
    before = tree(target)
    renamed = run("qvm-backup-restore", "--dry-run", "--rename-conflicting", "--passphrase-file",
                  passfile, backup)
    assert _plan_lines(renamed.stdout) == {"tpl": ("tpl1", "-"), "work": ("work", "tpl1"),
                                           "personal": ("personal", "tpl1")}
    replaced = run("qvm-backup-restore", "--dry-run", "--replace-template", "tpl:alt",
                   "--passphrase-file", passfile, backup, "work", "personal")
    assert _plan_lines(replaced.stdout) == {"work": ("work", "alt"),
                                            "personal": ("personal", "alt")}
    assert (target / "qubes.xml").read_bytes() == xml and tree(target) == before
    assert sorted(run("qvm-ls", "--raw-list").stdout.decode().split()) == ["alt", "dom0", "tpl"]


# -- E: formats, compression, verify-only ------------------------------------------------

def _header(backup) -> dict[str, str]:
    text = dict(outer_members(backup))["backup-header"].decode()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


@pytest.mark.parametrize("flag,compressed", [("-z", True), ("--compress", True),
                                             ("--no-compress", False)])
def test_b49_explicit_compression_choice_is_in_the_header_and_restores(
        base, tmp_path, passfile, monkeypatch, flag, compressed):
    """B49: `-z`/`--compress` -> header compressed=True (default filter gzip) and gzip
    chunks; `--no-compress` -> compressed=False and plain tar chunks; both restore."""
    hashes = make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", flag, "--no-encrypt", "--passphrase-file", passfile, backup, "tpl", "work")
    header = _header(backup)
    assert header["compressed"] == str(compressed)
    assert header.get("compression-filter") == ("gzip" if compressed else None)
    chunk = dict(outer_members(backup))["appvms/work/private.img.000"]  # names not hidden
    if compressed:
        assert chunk[:2] == b"\x1f\x8b"
    else:
        assert chunk[257:262] == b"ustar"
    target = fresh_target(tmp_path, monkeypatch)
    run("qvm-backup-restore", "--passphrase-file", passfile, backup)
    assert image_hashes(target) == {k: v for k, v in hashes.items() if "/work/" in k
                                    or "/tpl/" in k}


def test_b54_verify_only_changes_no_state(base, tmp_path, passfile):
    """B54: back up `work` (netvm sys-net), set its netvm to none, --verify-only: netvm is
    still none and qubes.xml has the same bytes and mtime."""
    make_demo_vms(base)
    run("qvm-prefs", "-s", "work", "netvm", "sys-net")
    assert run("qvm-prefs", "-g", "work", "netvm").stdout.strip() == b"sys-net"
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "work", "sys-net", "tpl")
    run("qvm-prefs", "-s", "work", "netvm", "none")
    xml = base / "qubes.xml"
    before = (xml.read_bytes(), xml.stat().st_mtime_ns, xml.stat().st_ino)
    listing = tree(base)
    time.sleep(0.01)  # a rewrite now would show in the mtime
    proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, backup)
    assert proc.stdout.count(b": verified") == 3
    assert (xml.read_bytes(), xml.stat().st_mtime_ns, xml.stat().st_ino) == before
    assert tree(base) == listing
    assert run("qvm-prefs", "-g", "work", "netvm").stdout.strip() in (b"None", b"none", b"")


def test_b45_too_new_header_version_is_named_before_any_decryption(base, tmp_path, passfile):
    """B45: an authentic header with version=99 -> "backup format version 99 is newer than
    supported (max N)", non-zero exit, before any decryption: qubes.xml.000 is garbage
    here and is never looked at; nothing is written."""
    make_demo_vms(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "work", "tpl")
    v99 = tmp_path / "v99.bin"
    with_header(backup, v99, lambda text: text.replace("version=3\n", "version=99\n"))
    garbage = tmp_path / "v99-garbage.bin"
    rewrite_members(v99, garbage, {"qubes.xml.000": lambda d: os.urandom(len(d))})
    assert _header(garbage)["version"] == "99"
    before = tree(base)
    for extra in ([], ["--verify-only"]):
        proc = run("qvm-backup-restore", *extra, "--skip-dom0-home", "--passphrase-file",
                   passfile, garbage, check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert re.search(r"backup format version 99 is newer than supported \(max \d\)", err), err
        assert err.count("ERROR") == 1 and "qubes.xml" not in err and "passphrase" not in err
        assert proc.stdout == b""
    assert tree(base) == before


def _peer(tmp_path, passfile, *args, name="peer.bin"):
    peers = peers_or_skip()
    out = tmp_path / name
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, *args, out], check=True,
                   capture_output=True, timeout=300)
    return out


def test_b46_compression_filter_with_options_restores(base, tmp_path, passfile):
    """B46: a peer backup whose authentic header says `compression-filter=gzip -3`
    restores (the program name picks the decompressor); an unknown program in the same
    place is refused with the key and the value named."""
    from tests.backup.test_interop_v3 import manifest_files

    peer = _peer(tmp_path, passfile, "--vm", "template:tpl", "--vm", "app:work", "--no-home")
    with_options = tmp_path / "gzip-3.bin"
    with_header(peer, with_options, lambda t: t.replace("compression-filter=gzip\n",
                                                        "compression-filter=gzip -3\n"))
    assert _header(with_options)["compression-filter"] == "gzip -3"
    unknown = tmp_path / "evil.bin"
    with_header(peer, unknown, lambda t: t.replace("compression-filter=gzip\n",
                                                   "compression-filter=evil -3\n"))
    proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, unknown,
               check=False)
    assert proc.returncode == 1
    assert b"compression filter 'evil -3'" in proc.stderr, proc.stderr
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, with_options)
    assert b"Restore completed" in proc.stdout
    expected = manifest_files(peer.with_name("peer.bin.manifest"))
    assert expected
    for (vm, path), digest in expected.items():
        matches = list(base.glob(f"*/{vm}/{path}"))
        assert len(matches) == 1, (vm, path)
        if path.endswith(".img"):
            assert sha256_file(matches[0]) == digest, (vm, path)


def test_b47_bzip2_backup_of_five_vms_verifies_and_restores_identically(base, tmp_path,
                                                                       passfile, monkeypatch):
    """B47: `qvm-backup -Z bzip2` with 5 VMs; verify passes, then restore passes and every
    image is identical to its source."""
    make_demo_vms(base)
    run("qvm-create", "-l", "purple", "mail")
    write_at(base / "appvms/mail/private.img", 3 << 20, os.urandom(64 << 10))
    hashes = image_hashes(base)
    backup = tmp_path / "b.bin"
    run("qvm-backup", "-Z", "bzip2", "--passphrase-file", passfile, backup,
        env={"QUBES_BACKUP_CHUNK_SIZE": str(64 << 10)})
    assert _header(backup)["compression-filter"] == "bzip2"
    proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, backup)
    assert proc.stdout.count(b": verified") == 5
    target = fresh_target(tmp_path, monkeypatch)
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, backup)
    assert proc.stdout.count(b": restored") == 5
    assert image_hashes(target) == hashes
    assert sorted(run("qvm-ls", "--raw-list").stdout.decode().split()) == \
        ["dom0", "mail", "personal", "sys-net", "tpl", "work"]


def test_b35_restored_home_files_belong_to_the_restoring_user(base, tmp_path, passfile,
                                                              monkeypatch):
    """B35: a home of `alice` whose archive members belong to uid/gid 4242, restored by
    `bob` with --ignore-username-mismatch: everything under
    home-restore-<ts>/dom0-home/alice/ is owned by the restoring user, not by 4242."""
    members = []
    for name, kind, data in (("dom0-home/alice", tarfile.DIRTYPE, None),
                             ("dom0-home/alice/.bashrc", tarfile.REGTYPE, b"alias ll='ls -l'\n"),
                             ("dom0-home/alice/docs", tarfile.DIRTYPE, None),
                             ("dom0-home/alice/docs/notes.txt", tarfile.REGTYPE, b"notes\n"),
                             ("dom0-home/alice/docs/link", tarfile.SYMTYPE, None)):
        info = tarfile.TarInfo(name)
        info.type, info.uid, info.gid, info.uname, info.gname = kind, 4242, 4242, "alice", "alice"
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        if kind == tarfile.SYMTYPE:
            info.linkname = "notes.txt"
        if data is not None:
            info.size = len(data)
        members.append((info, io.BytesIO(data) if data is not None else None))
    raw = tmp_path / "home.tar"
    with tarfile.open(raw, "w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, data)
    backup = _peer(tmp_path, passfile, "--vm", "template:tpl", "--home-user", "alice",
                   "--raw-item", f"dom0-home/alice={raw}")
    homes = tmp_path / "homes"
    homes.mkdir()
    monkeypatch.setenv("USER", "bob")
    monkeypatch.setenv("LOGNAME", "bob")
    run("qvm-backup-restore", "--passphrase-file", passfile, "--dom0-home-dir", homes,
        "--ignore-username-mismatch", backup)
    restored = next(homes.glob("home-restore-*")) / "dom0-home" / "alice"
    assert (restored / "docs" / "notes.txt").read_bytes() == b"notes\n"
    assert os.readlink(restored / "docs" / "link") == "notes.txt"
    found = tree(restored) | {"."}
    assert len(found) == 5
    owners = {rel: (os.lstat(restored / rel).st_uid, os.lstat(restored / rel).st_gid)
              for rel in found}
    assert set(owners.values()) == {(os.getuid(), os.getgid())}, owners


# -- F: destinations ---------------------------------------------------------------------

def test_b56_existing_file_and_read_only_destination_fail_clearly(base, tmp_path, passfile):
    """B56: the destination is an existing regular file / lies below one / is a directory
    on a read-only filesystem -> exit 1, a message with the reason, no temp or partial
    files anywhere, the existing file untouched."""
    make_demo_vms(base)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"keep me")
    cases = [(existing, f"{existing} already exists; not overwriting it"),
             (existing / "sub", f"{existing} is not a directory")]
    with small_tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", ro], check=True)
        cases += [(ro, "Read-only file system"), (ro / "b.bin", "Read-only file system")]
        before = tree(tmp_path)
        for dest, reason in cases:
            proc = run("qvm-backup", "--tmpdir", tmp, "--passphrase-file", passfile, dest,
                       "work", "tpl", check=False)
            assert proc.returncode == 1, dest
            err = proc.stderr.decode()
            assert err.startswith("ERROR: ") and reason in err, (dest, err)
            assert tree(tmp_path) == before and os.listdir(tmp) == [] and os.listdir(ro) == []
    assert existing.read_bytes() == b"keep me"


def test_b57_new_backup_after_a_killed_one_succeeds(base, tmp_path, passfile):
    """B57(b): `kill -9` of a running backup, then a new backup to the same place: it
    succeeds and verifies, and the killed run's partial file is cleaned away."""
    make_demo_vms(base)
    path = base / "appvms/work/private.img"
    os.truncate(path, 400 << 20)
    for i in range(24):
        write_at(path, (i * 16) << 20, os.urandom(8 << 20))
    dest = tmp_path / "out" / "b.bin"
    dest.parent.mkdir()
    proc = subprocess.Popen([BIN / "qvm-backup", "--passphrase-file", passfile, dest, "work"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = dest.with_name(f"b.bin.partial-{proc.pid}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not (
            partial.exists() and partial.stat().st_size > (1 << 20)):
        time.sleep(0.02)
    assert proc.poll() is None, "the backup ended before it could be killed"
    proc.kill()
    proc.wait()
    assert partial.exists()  # what kill -9 leaves behind
    done = run("qvm-backup", "--passphrase-file", passfile, dest, "work", "tpl")
    assert b"Backup completed" in done.stdout
    assert f"WARNING: removed {partial}, left by a backup that was killed".encode() in done.stderr
    run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile, dest)
    assert sorted(os.listdir(dest.parent)) == ["b.bin"]


def test_b58_destination_command_that_drops_data_fails_the_following_verify(base, tmp_path,
                                                                           passfile):
    """B58: a --dest-command that keeps only the first N bytes, discards the rest and exits
    0. The tool cannot count what a command stored: the backup reports success with the
    byte count it sent; the following verify of the stored copy fails, naming the truncation, never "verified"."""
    make_demo_vms(base)
    full = tmp_path / "full.bin"
    run("qvm-backup", "--passphrase-file", passfile, full, "work", "tpl")
    keep = full.stat().st_size // 2
    stored = tmp_path / "stored.bin"
    proc = run("qvm-backup", "--passphrase-file", passfile, "--dest-command",
               f"head -c {keep} > '{stored}'; cat > /dev/null; exit 0", "work", "tpl")
    assert proc.returncode == 0  # the truth: a command's exit status is all there is
    assert stored.stat().st_size == keep
    sent = re.search(rb"(\d+) bytes written to command", proc.stderr)  # the count to compare
    assert sent and int(sent.group(1)) > keep, proc.stderr
    for _ in range(2):
        proc = run("qvm-backup-restore", "--verify-only", "--passphrase-file", passfile,
                   stored, check=False)
        assert proc.returncode == 1
        assert b"damaged or truncated" in proc.stderr or b"ends before" in proc.stderr, \
            proc.stderr
        assert b"Verification completed" not in proc.stdout
        assert b"FAILED" in proc.stderr or b"not verified completely" in proc.stderr


def test_b57_only_abandoned_partial_files_are_removed(tmp_path):
    """B57(b), the rule behind the clean-up: a partial file is removed only when nobody
    holds its lock and its pid is dead; a locked one, one whose pid lives and files of
    other names stay."""
    import fcntl

    from qubes.ops.backup import FileDestination

    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {"dead": f"b.bin.partial-{dead.pid}", "alive": f"b.bin.partial-{os.getppid()}",
             "locked": f"b.bin.partial-{dead.pid + 1000000}", "other": f"c.bin.partial-{dead.pid}"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a backup")
    with open(tmp_path / names["locked"], "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        dest = FileDestination(str(tmp_path / "b.bin"))
        dest.open()
        dest.abort()
    assert dest.removed_stale == [str(tmp_path / names["dead"])]
    assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "dead")


def test_b05_backup_cut_in_the_second_vm_restores_the_first(base, tmp_path, passfile):
    """B05: the outer tar ends in the middle of one VM's chunks: the VMs written before it
    are restored, the cut one is reported failed and not registered, the exit is 1."""
    peers = peers_or_skip()
    backup = tmp_path / "two.bin"
    subprocess.run([peers / "make-backup-v3", "-q", "-p", passfile, "--no-home",
                    "--chunk-size", "32768", "--vm", "template:tpl", "--vm", "standalone:first",
                    "--vm", "standalone:second:private=2M,data=640K@1M", backup],
                   check=True, capture_output=True, timeout=300)
    with tarfile.open(backup, ignore_zeros=True) as tf:
        data_members = [m for m in tf if re.fullmatch(r"vm\d+/.+\.\d{3}", m.name)]
    items: dict[str, list] = {}
    for m in data_members:
        items.setdefault(m.name.rsplit(".", 1)[0], []).append(m)
    chunks = max(items.values(), key=len)  # second's private.img: by far the most data
    assert len(chunks) > 10, "the cut must fall inside a multi-chunk item"
    cut = tmp_path / "cut.bin"
    cut.write_bytes(backup.read_bytes()[:chunks[len(chunks) // 2].offset_data + 1000])
    proc = run("qvm-backup-restore", "--passphrase-file", passfile, cut, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, out + err
    assert "VM second: FAILED" in out + err and "truncated" in err, out + err
    assert "VM first: restored" in out + err, out + err
    names = run("qvm-ls", "--raw-list").stdout.decode().split()
    assert "first" in names and "second" not in names
    assert not (base / "appvms" / "second").exists()
    assert not list(base.glob(".restore-*"))


def test_b15_write_error_during_restore_fails_that_vm_only(base, tmp_path, passfile,
                                                          monkeypatch, capsys):
    """B15: a write error (EIO) while one VM's image is written fails that VM: reported
    with the VM and the error, nothing of it registered or left; the others restored."""
    from qubes.backup import extract
    from qubes.tools import qvm_backup_restore
    hashes = make_demo_vms(base)
    marker = b"\xee" * 4096
    write_at(base / "appvms/work/private.img", 1 << 20, marker * 4)
    hashes = image_hashes(base)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out, "tpl", "work", "personal")
    target = fresh_target(tmp_path, monkeypatch)
    real_pwrite = extract.os.pwrite

    def failing_disk(fd, data, offset):
        if marker[:512] in bytes(data):
            raise OSError(5, "Input/output error")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(extract.os, "pwrite", failing_disk)
    capsys.readouterr()
    code = qvm_backup_restore.main(["--passphrase-file", str(passfile), str(out)])
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert code == 1, err
    assert "VM work: FAILED" in err and "Input/output error" in err, err
    names = run("qvm-ls", "--raw-list").stdout.decode().split()
    assert "work" not in names and "tpl" in names and "personal" in names
    assert not (target / "appvms" / "work").exists()
    assert not list(target.glob(".restore-*"))
    assert image_hashes(target) == {k: v for k, v in hashes.items()
                                    if k.split("/")[1] in ("tpl", "personal")}


def test_b22_stale_bytes_in_the_way_never_show_through_the_holes(base, tmp_path, passfile,
                                                                 monkeypatch):
    """B22: the target already holds the VM's directory with an image full of 0xAA; the
    restored image is byte-identical to the source, its zero regions read as zeros."""
    make_demo_vms(base)
    image = base / "appvms/work/private.img"
    write_at(image, 3 << 20, os.urandom(64 << 10))
    write_at(image, 5 << 20, bytes(256 << 10))  # zeros that are allocated in the source
    source_hash = sha256_file(image)
    out = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, out, "tpl", "work")
    target = fresh_target(tmp_path, monkeypatch)
    stale = target / "appvms/work"
    stale.mkdir(parents=True)
    (stale / "private.img").write_bytes(b"\xaa" * image.stat().st_size)
    run("qvm-backup-restore", "--passphrase-file", passfile, out)
    restored = target / "appvms/work/private.img"
    assert sha256_file(restored) == source_hash
    with open(restored, "rb") as f:
        f.seek(5 << 20)
        assert f.read(256 << 10) == bytes(256 << 10)
    assert b"\xaa" * 512 not in restored.read_bytes()


def test_b11_failed_verify_leaves_no_thread_process_or_temporary_file(base, tmp_path,
                                                                      passfile, capsys):
    """B11: the first data chunk is corrupted; when verify returns, every worker thread
    and child process has ended and the temporary directory is empty."""
    import threading

    from qubes.tools import qvm_backup_restore
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(1 << 20))
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup,
        env={"QUBES_BACKUP_CHUNK_SIZE": str(256 << 10)})
    first = next(n for n, _d in outer_members(backup)
                 if re.fullmatch(r".+\.000", n) and not n.startswith("qubes.xml"))
    bad = tmp_path / "bad.bin"
    rewrite_members(backup, bad, {first: lambda data: data[:100] + bytes([data[100] ^ 1])
                                  + data[101:]})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = set(threading.enumerate())
    capsys.readouterr()
    code = qvm_backup_restore.main(["--verify-only", "--tmpdir", str(tmp),
                                    "--passphrase-file", str(passfile), str(bad)])
    err = capsys.readouterr().err
    assert code == 1 and first in err, err
    deadline = time.monotonic() + 5  # daemon threads may still be unwinding
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before, threading.enumerate()
    assert not list(tmp.iterdir())
    children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True,
                              text=True).stdout.split()
    assert children == [], children


def test_b52_chunks_swapped_by_renaming_fail_verification(base, tmp_path, passfile,
                                                         monkeypatch):
    """B52(b), format 3: chunks .001 and .002 of one image swapped together with their
    .hmac files, so each is authentic on its own; verify and restore still fail that VM
    (the stream no longer decrypts and decodes) and never report it verified."""
    make_demo_vms(base)
    write_at(base / "appvms/work/private.img", 0, os.urandom(1 << 20))
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "tpl", "work",
        env={"QUBES_BACKUP_CHUNK_SIZE": str(128 << 10)})
    members = dict(outer_members(backup))
    item = next(n[:-4] for n in members if n.endswith(".002") and not n.startswith("qubes"))
    one, two = f"{item}.001", f"{item}.002"
    swapped = tmp_path / "swapped.bin"
    rewrite_members(backup, swapped, {
        one: lambda _d: members[two], two: lambda _d: members[one],
        one + ".hmac": lambda _d: members[two + ".hmac"],
        two + ".hmac": lambda _d: members[one + ".hmac"]})
    fresh_target(tmp_path, monkeypatch)
    for extra in (["--verify-only"], []):
        proc = run("qvm-backup-restore", *extra, "--passphrase-file", passfile, swapped,
                   check=False)
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert proc.returncode == 1, out + err
        assert "FAILED" in out + err and "passphrase" not in err, out + err
        assert "Verification completed" not in out
    assert "work" not in run("qvm-ls", "--raw-list").stdout.decode().split()


def test_b21_very_sparse_and_huge_sparse_images_round_trip(base, tmp_path, passfile,
                                                         monkeypatch):
    """B21(b, c): a 64 MiB image with a 4 KiB block every 64 KiB (1,024 regions) and a
    10 GiB image holding 1 MiB: identical after the round trip, the backup small, the
    restored 10 GiB image not allocated."""
    from qubes.util.sparse import sparse_sha256
    make_demo_vms(base)
    many = base / "appvms/work/private.img"
    os.truncate(many, 64 << 20)
    for offset in range(0, 64 << 20, 64 << 10):
        write_at(many, offset, os.urandom(4096))
    huge = base / "appvms/personal/private.img"
    os.truncate(huge, 10 << 30)
    write_at(huge, 7 << 30, os.urandom(1 << 20))
    want = {"work": sparse_sha256(many), "personal": sparse_sha256(huge)}
    backup = tmp_path / "b.bin"
    run("qvm-backup", "--passphrase-file", passfile, backup, "tpl", "work", "personal")
    assert backup.stat().st_size < 16 << 20
    target = fresh_target(tmp_path, monkeypatch)
    run("qvm-backup-restore", "--passphrase-file", passfile, backup)
    for vm, digest in want.items():
        assert sparse_sha256(target / "appvms" / vm / "private.img") == digest, vm
    restored_huge = target / "appvms/personal/private.img"
    assert restored_huge.stat().st_size == 10 << 30
    assert restored_huge.stat().st_blocks * 512 < 64 << 20
