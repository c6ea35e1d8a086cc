"""Checks made before anything is defined in libvirt (CASES.md B86, B87, B95)."""
from __future__ import annotations

import pytest

from qubes.errors import QubesError
from qubes.ops.lifecycle import start_vm
from qubes.util.host import LocalHost
from qubes.vmm.base import DomainInfo, DomainState
from tests.conftest import run


class ShortOfMemory:
    offline = False
    uri = "fake:///"

    def __init__(self, free_mb: int):
        self.free_mb = free_mb
        self.started = []

    def domain_states(self, names):
        return {n: DomainInfo(DomainState.HALTED) for n in names}

    def host_free_memory_mb(self):
        return self.free_mb

    def start(self, spec):
        self.started.append(spec.name)


def test_not_enough_memory_is_refused_naming_both_sizes(base):
    (base / "vm-templates" / "t").mkdir(parents=True)
    (base / "vm-templates" / "t" / "root.img").write_bytes(b"")
    run("qvm-add-template", "t")
    run("qvm-create", "-l", "red", "win7")
    run("qvm-prefs", "-s", "win7", "memory", "4096")
    hv = ShortOfMemory(1024)
    with pytest.raises(QubesError, match=r"not enough memory to start 'win7': 4160 MiB needed "
                                         r"\(64 MiB of it for QEMU\), 1024 MiB available"):
        start_vm(str(base), LocalHost(str(base)), hv, "win7")
    assert hv.started == []


def test_dom0_cannot_be_started(base):
    with pytest.raises(QubesError, match="dom0 is always running"):
        start_vm(str(base), LocalHost(str(base)), ShortOfMemory(10**6), "dom0")
