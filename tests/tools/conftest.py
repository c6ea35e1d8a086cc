"""Fixtures of the tool tests: an offline store in tmp_path, a fixed host,
a counting fake hypervisor, and a helper that runs a command's main()."""
from __future__ import annotations

import os
import sys

import pytest

# The helpers module sits beside this file; make it importable whether or not
# `tests/` is a package (pytest's prepend import mode differs between the two).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tools_helpers import KERNEL, FakeHypervisor, create, make_template  # noqa: E402

from qubes.model.host import FixedHost
from qubes.tools import _cli


@pytest.fixture
def base(tmp_path, monkeypatch):
    """An empty initialised store; offline; a host with 16 GiB, 4 CPUs, one kernel."""
    monkeypatch.setenv("QUBES_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("QUBES_OFFLINE", "1")
    monkeypatch.setattr(_cli, "host_factory",
                        lambda _args: FixedHost(16384, 4, kernels={KERNEL}))
    monkeypatch.setattr(_cli, "hypervisor_factory", None)
    from qubes.tools import qvm_init_storage
    assert qvm_init_storage.main([]) == 0
    return tmp_path


@pytest.fixture
def fake_hv(monkeypatch):
    """Install a FakeHypervisor as the hypervisor of every Context; returns it."""
    hv = FakeHypervisor()
    monkeypatch.setattr(_cli, "hypervisor_factory", lambda _args: hv)
    return hv


@pytest.fixture
def run(capsys):
    """run(module, *argv) -> (exit code, stdout, stderr); usage errors give 2."""
    def runner(module, *argv):
        capsys.readouterr()
        try:
            code = module.main(list(argv))
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err
    return runner


@pytest.fixture
def fixture_vms(base, capsys):
    """template fedora-20-x64 (qid 1), netvm (2), firewallvm (3), work (4),
    win7 standalone HVM (5), personal (6), standalone AppVM (7)."""
    make_template(base)
    create("-q", "-l", "red", "--net", "netvm")
    create("-q", "-l", "green", "--proxy", "firewallvm")
    create("-q", "-l", "blue", "work")
    create("-q", "-l", "purple", "--hvm", "win7")
    create("-q", "-l", "yellow", "personal")
    create("-q", "-l", "orange", "--standalone", "standalone")
    capsys.readouterr()
    return base
