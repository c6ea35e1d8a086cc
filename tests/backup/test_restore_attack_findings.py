"""What an adversarial review of restore found (and what must stay fixed): a VM is never
registered half-made, the request is taken as meant, and every archive text reaching the
terminal or the log is escaped. Backups come from the peer writer (`../shared/peers`),
which makes the odd shapes a real `qvm-backup` never would."""
from __future__ import annotations

import subprocess

import pytest

from tests.conftest import peers_or_skip, run

PASS = "attack passphrase"


def peer_backup(tmp_path, name, *args) -> str:
    peers = peers_or_skip()
    out = tmp_path / f"{name}.bin"
    pfile = tmp_path / "peer-pass"
    pfile.write_text(PASS + "\n")
    subprocess.run([peers / "make-backup-v3", "-q", "-p", pfile, *args, out], check=True,
                   capture_output=True)
    return str(out)


def flip(tmp_path, backup, member) -> str:
    out = tmp_path / "damaged.bin"
    subprocess.run([peers_or_skip() / "outer-members", "flip", backup, member, "mid", out],
                   check=True, capture_output=True)
    return str(out)


def restore(passfile, *args):
    return run("qvm-backup-restore", "-y", "--progress", "none", "--passphrase-file", passfile,
               *args, check=False)


def names() -> set[str]:
    return set(run("qvm-ls", "--raw-list").stdout.decode().split())


def test_a_vm_whose_netvm_failed_comes_back_without_network(base, tmp_path, passfile):
    """Its data is whole: it is restored, told, and left without network, never registered
    pointing at nothing (nor registered at all without its data)."""
    backup = peer_backup(tmp_path, "net", "--no-home", "--vm", "template:tpl",
                         "--vm", "net:sys-net", "--vm", "net:sysn2:include",
                         "--vm", "app:work:netvm=sysn2")  # sys-net: the default netvm
    proc = restore(passfile, flip(tmp_path, backup, "vm3/private.img.000"))
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "VM sysn2: FAILED" in proc.stdout.decode() + err
    assert "VM 'work': its netvm 'sysn2' was not restored; it comes back without network" in err
    assert {"tpl", "work"} <= names() and "sysn2" not in names()
    assert run("qvm-prefs", "-g", "work", "netvm").stdout.decode().strip() == "None"
    assert (base / "appvms" / "work" / "private.img").is_file()
    assert not (base / "servicevms" / "sysn2").exists()


def home_tar(tmp_path, user: str) -> str:
    import io
    import tarfile
    out = tmp_path / f"home-{user}.tar"
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, kind in ((f"dom0-home/{user}", tarfile.DIRTYPE),
                           (f"dom0-home/{user}/.bashrc", tarfile.REGTYPE)):
            info = tarfile.TarInfo(name)
            info.type, data = kind, b"echo planted\n" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return f"dom0-home/{user}={out}"


def test_only_the_home_qubes_xml_lists_is_restored(base, tmp_path, passfile):
    """A second home item (one qubes.xml does not list) is refused, named, and nothing of
    it lands on disk; the listed home still comes back."""
    backup = peer_backup(tmp_path, "twohome", "--vm", "template:tpl",
                         "--raw-item", home_tar(tmp_path, "evil"))
    homes = tmp_path / "homes"
    homes.mkdir()
    proc = restore(passfile, "--ignore-username-mismatch", "--dom0-home-dir", homes, backup)
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert "archive item 'dom0-home/evil' is not the dom0 home qubes.xml lists" in err
    restored = list(homes.iterdir())
    assert len(restored) == 1
    assert not list(restored[0].rglob("evil")) and (restored[0] / "dom0-home" / "user").is_dir()


@pytest.mark.parametrize("name, escaped", [
    ("\u009b31mRED\x1b[2J", b"\\x9b31mRED\\x1b[2J"),     # CSI codes
    ("bad\udc9bname", b"bad\\udc9bname"),                  # a byte that is not UTF-8
], ids=["csi", "undecodable"])
def test_archive_names_reach_terminal_and_log_escaped(base, tmp_path, passfile, name, escaped):
    """A fifo so named: the VM fails, naming it escaped on the terminal and in --log (which
    must not crash on it)."""
    import tarfile
    inner = tmp_path / "kernels.tar"
    with tarfile.open(inner, "w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for member, kind in (("vm2/kernels", tarfile.DIRTYPE),
                             (f"vm2/kernels/{name}", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(member)
            info.type = kind
            tf.addfile(info)
    backup = peer_backup(tmp_path, "names", "--no-home", "--vm", "template:tpl",
                         "--vm", "app:work", "--raw-item", f"vm2/kernels={inner}")
    log = tmp_path / "restore.log"
    proc = restore(passfile, "--log", log, backup)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 1 and b"internal error" not in shown
    assert b"VM work: FAILED" in shown and escaped in shown
    written = log.read_bytes()
    assert b"VM work: FAILED" in written and escaped in written
    for raw in (b"\x1b", "\u009b".encode(), b"\x9b"):
        assert raw not in shown and raw not in written


def test_a_failing_source_command_still_reports_every_vm(base, tmp_path, passfile):
    """The whole backup came through, then the command failed: the VMs are restored and
    said so; the command's failure is one more error, and the exit status is 1."""
    backup = peer_backup(tmp_path, "src", "--no-home", "--vm", "template:tpl", "--vm", "app:work")
    proc = restore(passfile, "--source-command", f"cat {backup}; echo gone >&2; exit 3")
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1
    assert "VM tpl: restored" in out and "VM work: restored" in out
    assert "failed with exit status 3: gone" in err
    assert {"tpl", "work"} <= names()


def test_a_vm_named_twice_is_restored_once(base, tmp_path, passfile):
    backup = peer_backup(tmp_path, "twice", "--no-home", "--vm", "template:tpl", "--vm", "app:work")
    proc = restore(passfile, backup, "work", "work", "tpl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().count("VM work: restored") == 1 and b"FAILED" not in proc.stdout


def test_contradictory_requests_are_refused_before_anything_is_written(base, tmp_path, passfile):
    """A VM both asked for and excluded; a --replace-template naming an AppVM of the backup
    (it would become its own template)."""
    backup = peer_backup(tmp_path, "req", "--no-home", "--vm", "template:tpl",
                         "--vm", "app:work", "--vm", "app:personal")
    proc = restore(passfile, backup, "work", "-x", "work")
    assert (proc.returncode, proc.stderr) == (1, b"ERROR: both asked for and excluded (-x): "
                                                 b"work\n")
    proc = restore(passfile, "--replace-template", "tpl:personal", backup)
    assert proc.returncode == 1
    assert b"VM 'personal': --replace-template names 'personal', which is not a TemplateVM" \
        in proc.stderr
    assert names() == {"dom0"}
    assert not (base / "appvms").exists() or not list((base / "appvms").iterdir())
