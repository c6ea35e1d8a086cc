"""Changing the netvm of a running VM against a fake hypervisor and a fake guest
(CASES.md B106, B107).

`work` (netvm firewallvm) runs; `qvm-prefs -s work netvm netvm` moves its
interface. When the move fails, the property is unchanged and the VM is
back on its old link, with its old address, or the error says it is not.
"""
from __future__ import annotations

import pytest
from tools_helpers import FakeHypervisor, running

from qubes.errors import QubesError, VMMError
from qubes.ops import agent
from qubes.tools import _cli, qvm_prefs

MAC = "00:16:3E:5E:6C:04"


class NicHypervisor(FakeHypervisor):
    """Records interface calls; `fail` maps a call name to the error it raises."""

    def __init__(self, running_names, fail=None):
        super().__init__({n: running(xid=i + 1) for i, n in enumerate(running_names)})
        self.fail = dict(fail or {})

    def _record(self, call, *args):
        self.calls.append((call, args))
        error = self.fail.pop(call, None)
        if error is not None:
            raise error

    def ensure_network(self, network, bridge):
        self._record("ensure_network", network)

    def attach_nic(self, name, nic):
        self._record("attach_nic", name, nic.network.rsplit("-", 1)[1], nic.mac)

    def detach_nic(self, name, mac):
        self._record("detach_nic", name, mac)


def nic_calls(hv):
    return [c for c in hv.calls if c[0] in ("attach_nic", "detach_nic")]


@pytest.fixture
def guest(monkeypatch):
    """The guest's side of `qubes-net`: records commands; fails once when told to."""
    seen, failures = [], []

    def run_command(_socket, name, command, timeout=60.0):
        seen.append((name, command))
        if failures:
            raise failures.pop(0)
        return 0, b""
    monkeypatch.setattr(agent, "run_command", run_command)
    return seen, failures


def use(monkeypatch, hv):
    monkeypatch.setattr(_cli, "hypervisor_factory", lambda _args: hv)
    return hv


def netvm_of(run, vm="work"):
    return run(qvm_prefs, "-g", vm, "netvm")[1].strip()


def test_a_running_vm_moves_to_the_new_netvm(fixture_vms, run, monkeypatch, guest):
    """B107 (success) and B106: the old netvm is halted; nothing is asked of it."""
    hv = use(monkeypatch, NicHypervisor(["work", "netvm"]))
    assert run(qvm_prefs, "-s", "work", "netvm", "netvm") == (0, "", "")
    assert nic_calls(hv) == [("detach_nic", ("work", MAC)),
                             ("attach_nic", ("work", "netvm", MAC))]
    assert not any("firewallvm" in str(args) for _call, args in hv.calls[1:])
    assert guest[0] == [("work", f"qubes-net {MAC.lower()} 10.137.1.6 10.137.1.1")]
    assert netvm_of(run) == "netvm"


def test_a_failed_detach_changes_nothing(fixture_vms, run, monkeypatch, guest):
    """B106: the libvirt message is quoted, the stored netvm unchanged, nothing attached."""
    error = VMMError("detaching a network interface from 'work' failed: "
                     "operation failed: no device found")
    hv = use(monkeypatch, NicHypervisor(["work", "firewallvm", "netvm"],
                                        fail={"detach_nic": error}))
    assert run(qvm_prefs, "-s", "work", "netvm", "netvm") == (1, "", f"ERROR: {error}\n")
    assert nic_calls(hv) == [("detach_nic", ("work", MAC))]
    assert guest[0] == []
    assert netvm_of(run) == "firewallvm"


def test_a_failed_attach_puts_the_old_link_back_with_its_address(fixture_vms, run,
                                                                 monkeypatch, guest):
    """B107: rolled back, and the re-attached interface gets the old address again."""
    error = VMMError("attaching a network interface to 'work' failed: no free PCI slot")
    hv = use(monkeypatch, NicHypervisor(["work", "firewallvm", "netvm"],
                                        fail={"attach_nic": error}))
    assert run(qvm_prefs, "-s", "work", "netvm", "netvm") == (1, "", f"ERROR: {error}\n")
    assert nic_calls(hv) == [("detach_nic", ("work", MAC)),
                             ("attach_nic", ("work", "netvm", MAC)),
                             ("detach_nic", ("work", MAC)),
                             ("attach_nic", ("work", "firewallvm", MAC))]
    assert guest[0] == [("work", f"qubes-net {MAC.lower()} 10.137.2.6 10.137.2.1")]
    assert netvm_of(run) == "firewallvm"


def test_a_guest_that_cannot_take_the_new_address_goes_back(fixture_vms, run, monkeypatch,
                                                            guest):
    hv = use(monkeypatch, NicHypervisor(["work", "firewallvm", "netvm"]))
    guest[1].append(QubesError("VM 'work' could not configure its new interface: busy"))
    code, _out, err = run(qvm_prefs, "-s", "work", "netvm", "netvm")
    assert (code, err) == (1, "ERROR: VM 'work' could not configure its new interface: busy\n")
    assert nic_calls(hv)[-1] == ("attach_nic", ("work", "firewallvm", MAC))
    assert guest[0] == [("work", f"qubes-net {MAC.lower()} 10.137.1.6 10.137.1.1"),
                        ("work", f"qubes-net {MAC.lower()} 10.137.2.6 10.137.2.1")]
    assert netvm_of(run) == "firewallvm"


def test_a_rollback_that_fails_too_says_the_vm_is_offline(fixture_vms, run, monkeypatch,
                                                          guest):
    first = VMMError("attaching a network interface to 'work' failed: no free PCI slot")
    hv = NicHypervisor(["work", "firewallvm", "netvm"], fail={"attach_nic": first})
    use(monkeypatch, hv)
    real_record = hv._record

    def record(call, *args):
        if call == "attach_nic" and args[1] == "firewallvm":
            raise VMMError("attaching a network interface to 'work' failed: still no slot")
        real_record(call, *args)
    hv._record = record
    code, _out, err = run(qvm_prefs, "-s", "work", "netvm", "netvm")
    assert code == 1
    assert err.startswith(f"ERROR: {first}; ")
    assert "still no slot" in err and "'work' has no network now" in err
    assert err.count("ERROR: ") == 1
    assert netvm_of(run) == "firewallvm"
