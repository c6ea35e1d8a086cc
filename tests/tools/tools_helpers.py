"""Helpers of the tool tests (imported by conftest.py and the test modules)."""
from __future__ import annotations

import os

from qubes.vmm.base import DomainInfo, DomainState

KERNEL = "3.12.1-1"


class FakeHypervisor:
    """Answers domain_states from a dict; counts every call."""

    def __init__(self, running=None, offline=False, error=None, uri="fake:///"):
        self.running = dict(running or {})  # name -> DomainInfo
        self.offline = offline
        self.uri = uri
        self.error = error
        self.calls: list[tuple[str, tuple]] = []

    def domain_states(self, names):
        names = tuple(names)
        self.calls.append(("domain_states", names))
        if self.error is not None:
            raise self.error
        return {n: self.running.get(n, DomainInfo(DomainState.HALTED)) for n in names}

    def host_memory_mb(self):
        return 16384

    def host_cpus(self):
        return 4

    def close(self):
        pass


def running(xid=5, mem_mb=400, cpu_ns=0):
    return DomainInfo(DomainState.RUNNING, xid, mem_mb * 1024, cpu_ns)


def make_template(base, name="fedora-20-x64", size=1 << 30):
    from qubes.tools import qvm_add_template
    tdir = os.path.join(str(base), "vm-templates", name)
    os.makedirs(tdir)
    with open(os.path.join(tdir, "root.img"), "wb") as f:
        f.truncate(size)
    assert qvm_add_template.main(["-q", name]) == 0


def create(*argv):
    from qubes.tools import qvm_create
    assert qvm_create.main(list(argv)) == 0, argv


def xml_bytes(base) -> bytes:
    with open(os.path.join(str(base), "qubes.xml"), "rb") as f:
        return f.read()
