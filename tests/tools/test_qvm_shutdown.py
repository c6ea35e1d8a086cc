"""qvm-shutdown and qvm-kill against a fake hypervisor and libvirt's test driver
(CASES.md B92-B95).

A VM already off when asked to shut down is done; one that stops between
the state check and the hypervisor call is done too. qvm-kill of a VM that
is halted when it looks stays an error (B95).
"""
from __future__ import annotations

import pytest
from tools_helpers import FakeHypervisor, running

from qubes.tools import _cli, qvm_kill, qvm_shutdown
from qubes.vmm.base import DomainInfo, DomainState


class StoppingHypervisor(FakeHypervisor):
    """Records shutdown/kill; a stopped VM is halted at once. Off is done, as with libvirt."""

    def shutdown(self, name):
        self.calls.append(("shutdown", (name,)))
        self.running.pop(name, None)

    def kill(self, name):
        self.calls.append(("kill", (name,)))
        self.running.pop(name, None)


def actions(hv):
    return [c for c in hv.calls if c[0] != "domain_states"]


@pytest.fixture
def stopping(monkeypatch):
    hv = StoppingHypervisor()
    monkeypatch.setattr(_cli, "hypervisor_factory", lambda _args: hv)
    return hv


def test_shutting_down_a_halted_vm_is_done(fixture_vms, stopping, run):
    code, out, err = run(qvm_shutdown, "work")
    assert (code, out, err) == (0, "", "")
    assert actions(stopping) == []
    assert run(qvm_shutdown, "--wait", "work", "personal")[0] == 0


def test_halted_vms_named_with_running_ones_are_skipped(fixture_vms, stopping, run):
    stopping.running["personal"] = running()
    code, _out, err = run(qvm_shutdown, "--wait", "work", "personal")
    assert (code, err) == (0, "")
    assert actions(stopping) == [("shutdown", ("personal",))]


def test_a_dispvm_removed_after_the_names_were_checked_counts_as_halted(fixture_vms,
                                                                        stopping):
    """B93: its watcher removed it between the tool's lookup and the shutdown."""
    from qubes.ops.lifecycle import shutdown_vms
    from qubes.util.host import LocalHost
    stopping.running["work"] = running()
    left = shutdown_vms(str(fixture_vms), LocalHost(str(fixture_vms)), stopping,
                        ["disp7", "work"], wait=True, timeout=5)
    assert left == []
    assert actions(stopping) == [("shutdown", ("work",))]


def test_shutdown_all_skips_halted_and_excluded_vms(fixture_vms, stopping, run):
    stopping.running.update(work=running(), personal=running(6), firewallvm=running(7))
    code, _out, err = run(qvm_shutdown, "--all", "--wait", "--exclude", "firewallvm")
    assert (code, err) == (0, "")
    assert actions(stopping) == [("shutdown", ("work",)), ("shutdown", ("personal",))]
    assert list(stopping.running) == ["firewallvm"]


def test_killing_a_halted_vm_is_an_error_even_if_the_hypervisor_shrugs(fixture_vms, stopping,
                                                                        run):
    """B95: the hypervisor treats 'already off' as done; the command still says so."""
    for _ in range(2):
        assert run(qvm_kill, "work") == (1, "", "ERROR: VM 'work' is not running\n")
    assert actions(stopping) == []
    stopping.running["work"] = running()
    assert run(qvm_kill, "work") == (0, "", "")
    assert actions(stopping) == [("kill", ("work",))]


def test_shutdown_wait_of_a_paused_vm_is_refused_at_once_b94(fixture_vms, stopping, run):
    """B94: --wait must not sit out its timeout and then kill a VM the user paused; the
    whole command is refused before anything is sent, running VMs named with it included."""
    import time
    stopping.running["work"] = DomainInfo(DomainState.PAUSED, 7, 400 * 1024)
    stopping.running["personal"] = running(6)
    for argv in (["--wait", "--timeout", "30", "work"],
                 ["--wait", "--timeout", "30", "personal", "work"]):
        started = time.monotonic()
        code, out, err = run(qvm_shutdown, *argv)
        assert time.monotonic() - started < 10  # refused, not waited out
        assert (code, out, err) == (
            1, "", "ERROR: work is paused; unpause it first or use qvm-kill\n"), argv
    assert actions(stopping) == []
    assert stopping.running["work"].state is DomainState.PAUSED
    assert run(qvm_kill, "work") == (0, "", "")
    assert actions(stopping) == [("kill", ("work",))]


# --- the real LibvirtHypervisor, test driver: the VM stops after the check -------

def racing_hypervisor():
    """libvirt's test driver, whose first state answer says 'running' for every VM.

    The test driver has no domain of those names: as for a guest that powered
    off (a DisposableVM is even undefined) right after the core looked.
    """
    pytest.importorskip("libvirt")
    from qubes.vmm.libvirt import LibvirtHypervisor

    class Racing(LibvirtHypervisor):
        answered = False

        def domain_states(self, names):
            if self.answered:
                return super().domain_states(names)
            self.answered = True
            return {n: DomainInfo(DomainState.RUNNING, 7, 400 * 1024) for n in names}
    return Racing("test:///default")


@pytest.mark.parametrize("wait", [[], ["--wait"]], ids=["no-wait", "wait"])
def test_a_vm_that_halts_after_the_check_is_shut_down(fixture_vms, monkeypatch, run, wait):
    monkeypatch.setattr(_cli, "hypervisor_factory", lambda _args: racing_hypervisor())
    code, _out, err = run(qvm_shutdown, *wait, "work")
    assert (code, err) == (0, "")


def test_a_vm_that_halts_after_the_check_is_killed(fixture_vms, monkeypatch, run):
    monkeypatch.setattr(_cli, "hypervisor_factory", lambda _args: racing_hypervisor())
    assert run(qvm_kill, "work") == (0, "", "")
