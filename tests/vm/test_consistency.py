"""qubes.xml is the authority; qvm-check --consistency finds and repairs drift (issue 4 §10)."""
from __future__ import annotations

import subprocess


def defined() -> list[str]:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True).stdout.split()


def test_a_domain_without_a_vm_is_reported_then_removed(q, fresh):
    ghost = fresh("ghost")
    q("qvm-create", "-l", "red", "-t", "tiny", ghost)
    q("qvm-start", ghost)
    q("qvm-kill", ghost)
    # Dropping the entry offline leaves libvirt's definition behind, as a crash could.
    q("qvm-remove", "--just-db", "--offline-mode", ghost)
    assert ghost in defined()
    proc = q("qvm-check", "--consistency", check=False)
    assert proc.returncode == 1
    assert f"orphan-domain: libvirt has a domain '{ghost}' (Halted) that qubes.xml does not " \
           f"know".encode() in proc.stdout
    q("qvm-check", "--consistency", "--repair")
    assert ghost not in defined()
    assert q("qvm-check", "--consistency").returncode == 0


def test_a_dispvm_left_by_a_crash_is_reported_then_removed(q):
    """B99: the watcher is gone (as after a power loss), the domain too."""
    out = q.out("qvm-start", "--dispvm", "tiny")
    disp = out.split(":")[0]
    subprocess.run(["pkill", "-f", f"qubes.ops.watch .* {disp}$"], check=False)
    subprocess.run(["virsh", "-q", "-c", "qemu:///system", "destroy", disp], check=True,
                   capture_output=True)
    proc = q("qvm-check", "--consistency", check=False)
    assert f"leftover-dispvm: the DisposableVM '{disp}' is registered but not running" \
        .encode() in proc.stdout
    q("qvm-check", "--consistency", "--repair")
    assert disp not in q.out("qvm-ls", "--raw-list").split()
    assert not (q.base / "appvms" / disp).exists()
