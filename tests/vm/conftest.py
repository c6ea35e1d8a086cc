"""Real VMs: a real libvirtd, QEMU and the tiny template, built once per session.

Skipped, with the reason, where libvirtd cannot be reached (not root, or the
packages are missing); `make test` installs and starts it (scripts/).
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.conftest import run

URI = "qemu:///system"


def _libvirt_reason() -> str | None:
    if os.geteuid() != 0:
        return "real-VM tests need root (libvirtd's system instance)"
    try:
        proc = subprocess.run(["virsh", "-q", "-c", URI, "uri"], capture_output=True, timeout=30)
    except FileNotFoundError:
        return "virsh is not installed (make test installs libvirt)"
    if proc.returncode != 0:
        return f"libvirtd does not answer at {URI}: {proc.stderr.decode(errors='replace')}"
    return None


class Collection:
    """A collection directory and a runner whose commands all use it, online."""

    def __init__(self, base):
        self.base = base
        self.env = {"QUBES_BASE_DIR": str(base), "QUBES_OFFLINE": "0", "QUBES_VMM_URI": URI}

    def __call__(self, cmd: str, *args, check: bool = True, timeout: float = 180):
        return run(cmd, *args, check=check, env=self.env, timeout=timeout)

    def out(self, cmd: str, *args) -> str:
        return self(cmd, *args).stdout.decode()


@pytest.fixture(scope="session")
def q(tmp_path_factory):
    """A collection holding the tiny template; every command talks to libvirtd."""
    reason = _libvirt_reason()
    if reason:
        pytest.skip(reason)
    coll = Collection(tmp_path_factory.mktemp("vms") / "qubes")
    coll("qvm-init-storage")
    coll("qvm-template-build", "tiny", timeout=600)
    yield coll
    _destroy_owned(coll.base)


def _destroy_owned(base) -> None:
    from qubes import vmm
    from qubes.ops.domain import owner_tag
    from qubes.ops.network import prefix as network_prefix
    hv = vmm.connect(offline=False, uri=URI)
    owner = owner_tag(str(base))
    for name in hv.owned_domains(owner):
        hv.undefine(name, owner)
    for net in hv.networks(network_prefix(str(base))):
        hv.remove_network(net)
    hv.close()


def watchers(base, name: str) -> list[int]:
    """Pids of the per-VM watcher processes (`python -m qubes.ops.watch BASE NAME`)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"qubes.ops.watch" in argv and argv[-3:-1] == [str(base).encode(), name.encode()]:
            pids.append(int(entry))
    return pids


def wait_for_watchers(base, name: str, limit: float = 30) -> None:
    """Until the watcher of `name`'s last run has done its clean-up and exited."""
    import time
    deadline = time.monotonic() + limit
    while watchers(base, name):
        assert time.monotonic() < deadline, f"the watcher of {name} is still running"
        time.sleep(0.1)


@pytest.fixture
def fresh(q):
    """A name maker for this test's VMs; whatever they left running is killed after."""
    made = []

    def name(prefix: str = "vm") -> str:
        made.append(f"{prefix}{uuid.uuid4().hex[:6]}")
        return made[-1]
    yield name
    for vm in made:
        q("qvm-kill", vm, check=False)
