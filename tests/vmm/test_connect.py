"""The hypervisor seam: lazy, offline mode refuses, libvirt's test driver answers states."""
from __future__ import annotations

import subprocess
import sys

import pytest

from qubes import vmm
from qubes.errors import OfflineError, VMMError
from qubes.vmm.base import DomainState


def test_import_and_connect_do_not_touch_libvirt():
    code = ("import sys, qubes.vmm; h = qubes.vmm.connect(offline=False, uri='test:///default');"
            "print('libvirt' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_offline_answers_halted_and_refuses_runtime(monkeypatch):
    monkeypatch.setenv("QUBES_OFFLINE", "1")
    hv = vmm.connect()
    assert hv.offline
    assert hv.domain_states(["a"])["a"].state is DomainState.HALTED
    with pytest.raises(OfflineError, match="VMM operations disabled in offline mode"):
        hv.host_cpus()


def test_libvirt_test_driver_states_in_one_listing(monkeypatch):
    pytest.importorskip("libvirt")
    monkeypatch.delenv("QUBES_OFFLINE", raising=False)
    hv = vmm.connect(offline=False, uri="test:///default")
    states = hv.domain_states(["test", "absent"])
    assert states["test"].state is DomainState.RUNNING and states["test"].xid > 0
    assert states["absent"].state is DomainState.HALTED
    assert hv.host_cpus() > 0 and hv.host_memory_mb() > 0
    hv.close()


def test_unreachable_hypervisor_is_a_clear_error(monkeypatch):
    pytest.importorskip("libvirt")
    hv = vmm.connect(offline=False, uri="qemu+unix:///system?socket=/nonexistent/sock")
    with pytest.raises(VMMError, match="cannot connect to the hypervisor at qemu"):
        hv.domain_states(["x"])


class CountingConn:
    """Wraps a libvirt connection; counts every call made on it."""

    def __init__(self, conn):
        self._conn = conn
        self.calls = []

    def __getattr__(self, attr):
        target = getattr(self._conn, attr)
        if not callable(target):
            return target

        def counted(*args, **kw):
            self.calls.append(attr)
            return target(*args, **kw)
        return counted


def test_states_of_300_vms_take_one_libvirt_call(monkeypatch):
    """B76: the listing costs one call however many VMs there are."""
    pytest.importorskip("libvirt")
    hv = vmm.connect(offline=False, uri="test:///default")
    conn = hv.conn
    template = conn.lookupByName("test").XMLDesc(0)
    import re
    for i in range(300):
        xml = re.sub(r"<uuid>.*</uuid>", "", template).replace("<name>test</name>",
                                                                f"<name>vm{i}</name>")
        dom = conn.defineXML(xml)
        if i % 3 == 0:
            dom.create()
    counting = CountingConn(conn)
    hv._conn = counting
    states = hv.domain_states([f"vm{i}" for i in range(300)])
    assert counting.calls == ["getAllDomainStats"]
    assert sum(s.state is DomainState.RUNNING for s in states.values()) == 100
    assert states["vm1"].state is DomainState.HALTED
    hv._conn = conn
    hv.close()


class StaleActive:
    """A domain proxy whose first isActive() answer is out of date: the guest powered off."""

    def __init__(self, dom):
        self._dom = dom
        self._asked = False

    def isActive(self):
        if not self._asked:
            self._asked = True
            return True
        return self._dom.isActive()

    def __getattr__(self, attr):
        return getattr(self._dom, attr)


def test_undefine_copes_with_a_guest_that_powered_off_meanwhile():
    """A probe guest may power off between isActive() and destroy(): still removed."""
    pytest.importorskip("libvirt")
    import re
    hv = vmm.connect(offline=False, uri="test:///default")
    conn = hv.conn
    xml = re.sub(r"<uuid>.*</uuid>", "", conn.lookupByName("test").XMLDesc(0))
    xml = xml.replace("<name>test</name>",
                      "<name>gone</name><metadata><q:vm xmlns:q='%s' owner='me'/></metadata>"
                      % vmm.domain_xml.NAMESPACE)
    conn.defineXML(xml)  # defined, never started: destroy() would fail
    real_lookup = conn.lookupByName
    hv._conn = CountingConn(conn)
    hv._conn.lookupByName = lambda name: StaleActive(real_lookup(name))
    hv.undefine("gone", "me")
    assert "gone" not in conn.listDefinedDomains()
    hv._conn = conn
    hv.close()
