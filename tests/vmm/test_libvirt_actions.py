"""LibvirtHypervisor actions against libvirt's test driver (CASES.md B87, B92, B93).

A guest may stop, and a DisposableVM's definition vanish, between the core's
state check and the libvirt call; proxies around real test-driver objects
play those races with real libvirt errors.
"""
from __future__ import annotations

import re
import uuid

import pytest

from qubes import vmm
from qubes.errors import VMMError
from qubes.vmm.base import DiskSpec, DomainSpec

libvirt = pytest.importorskip("libvirt")

OWNER = "/tmp/qubes-test-owner"


@pytest.fixture
def hv():
    hv = vmm.connect(offline=False, uri="test:///default")
    yield hv
    hv.close()


def uniq(prefix: str) -> str:
    """test:///default may be shared by the process's connections: never reuse a name."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def define(hv, name: str, *, start: bool = False):
    conn = hv.conn
    xml = re.sub(r"<uuid>.*</uuid>", "", conn.lookupByName("test").XMLDesc(0))
    dom = conn.defineXML(xml.replace("<name>test</name>", f"<name>{name}</name>"))
    if start:
        dom.create()
    return dom


class Proxy:
    """Passes everything to a real object except what a test overrides."""

    def __init__(self, real, **overrides):
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, attr):
        return getattr(self._real, attr)


def with_lookup(hv, wrap):
    """Make hv's lookups answer `wrap(real domain)`."""
    conn = hv.conn
    hv._conn = Proxy(conn, lookupByName=lambda name: wrap(conn.lookupByName(name)))
    return conn


def no_domain_error(conn, name: str):
    """A genuine libvirt 'no domain' error, as after the domain was undefined."""
    try:
        conn.lookupByName(f"{name}-undefined-meanwhile")
    except libvirt.libvirtError as exc:
        return exc
    raise AssertionError("the test driver found a domain it should not have")


@pytest.mark.parametrize("action", ["shutdown", "kill"])
def test_stopping_a_domain_that_is_already_off_is_done(hv, action):
    """The VM halted after the caller's check: off is what was asked for."""
    off = uniq("off")
    define(hv, off)
    getattr(hv, action)(off)
    getattr(hv, action)(uniq("never-defined"))  # a DisposableVM's definition is removed on stop


@pytest.mark.parametrize("action", ["shutdown", "kill"])
def test_stopping_a_domain_undefined_during_the_call_is_done(hv, action):
    """Looked up, then undefined (a DispVM's watcher) before isActive(): no libvirt error."""
    disp = uniq("disp")
    define(hv, disp, start=True)

    def vanishing(dom):
        def gone():
            raise no_domain_error(conn, disp)
        return Proxy(dom, isActive=gone)
    conn = with_lookup(hv, vanishing)
    getattr(hv, action)(disp)
    hv._conn = conn


def test_a_domain_that_stops_during_shutdown_is_done(hv):
    """shutdown() itself fails because the guest powered off a moment before."""
    racy = uniq("racy")
    dom = define(hv, racy, start=True)

    def stopping(real):
        def shutdown():
            real.destroy()
            real.shutdown()  # now fails for real: the domain is not running
        return Proxy(real, shutdown=shutdown)
    conn = with_lookup(hv, stopping)
    hv.shutdown(racy)
    assert not dom.isActive()
    hv._conn = conn


def test_pausing_a_domain_that_is_off_is_still_an_error(hv):
    off = uniq("off")
    define(hv, off)
    with pytest.raises(VMMError, match=f"VM '{off}' is not running"):
        hv.pause(off)
    with pytest.raises(VMMError, match="VM 'absent' is not running"):
        hv.unpause("absent")


def test_a_real_failure_of_a_running_domain_is_reported(hv):
    stuck = uniq("stuck")
    define(hv, stuck, start=True)

    def refusing(real):
        def shutdown():
            raise no_domain_error(conn, "other")  # any libvirt error while it still runs
        return Proxy(real, shutdown=shutdown)
    conn = with_lookup(hv, refusing)
    with pytest.raises(VMMError, match=f"shutting down '{stuck}' failed: Domain not found"):
        hv.shutdown(stuck)
    hv._conn = conn


# --- a failed create leaves nothing defined (B87) -------------------------------

def spec(name: str) -> DomainSpec:
    return DomainSpec(name=name, uuid=str(uuid.uuid4()),
                      owner=OWNER, memory_mb=128, maxmem_mb=128, vcpus=1,
                      disks=(DiskSpec("/nonexistent/root.img", "vda"),),
                      console_log="/nonexistent/console.log", agent_socket="/nonexistent/a")


def failing_create(hv, *, started: bool):
    """defineXML answers a domain whose create() fails, before or after it started."""
    conn = hv.conn

    def define_xml(xml):
        real = conn.defineXML(xml)

        def create():
            if started:
                real.create()
                real.create()  # fails for real: already running
            raise no_domain_error(conn, "qemu-died")
        return Proxy(real, create=create)
    hv._conn = Proxy(conn, defineXML=define_xml)
    return conn


@pytest.mark.parametrize("started", [False, True], ids=["never-ran", "ran-then-failed"])
def test_a_failed_create_undefines_the_domain(hv, started):
    work = uniq("work")
    conn = failing_create(hv, started=started)
    with pytest.raises(VMMError, match=f"starting '{work}' failed: "):
        hv.start(spec(work))
    assert work not in conn.listDefinedDomains()
    assert work not in [conn.lookupByID(i).name() for i in conn.listDomainsID()]
    hv._conn = conn


def test_an_interrupted_start_undefines_the_domain(hv):
    conn = hv.conn

    def define_xml(xml):
        real = conn.defineXML(xml)

        def create():
            real.create()
            raise KeyboardInterrupt
        return Proxy(real, create=create)
    hv._conn = Proxy(conn, defineXML=define_xml)
    ctrlc = uniq("ctrlc")
    with pytest.raises(KeyboardInterrupt):
        hv.start(spec(ctrlc))
    assert ctrlc not in conn.listDefinedDomains()
    assert ctrlc not in [conn.lookupByID(i).name() for i in conn.listDomainsID()]
    hv._conn = conn


def test_a_successful_start_stays_defined_and_runs(hv):
    fine = uniq("fine")
    hv.start(spec(fine))
    assert hv.conn.lookupByName(fine).isActive()


# --- memory assigned to running domains (B86, B87) -----------------------------

def test_assigned_memory_counts_every_running_domain(hv):
    """The test driver's 'test' domain runs with 2 GiB; getFreeMemory would say 3 GiB free."""
    before = hv.host_memory()
    assert before.total_mb == hv.host_memory_mb()
    define(hv, uniq("big"), start=True)  # a copy of 'test': 2 GiB more
    define(hv, uniq("halted"))           # defined only: assigns nothing
    after = hv.host_memory()
    assert after.assigned_mb - before.assigned_mb == 2048
    assert after.domains - before.domains == 1


# --- a CD-ROM for one start (B90) ------------------------------------------------

def test_libvirt_accepts_the_cdrom_and_the_next_definition_drops_it(hv):
    """The rendered CD-ROM parses for libvirt as a read-only IDE cdrom; the next start's
    spec, without one, replaces the definition (a start defines from the spec)."""
    import dataclasses
    import xml.etree.ElementTree as ET

    from qubes.vmm.base import CdromSpec
    win = uniq("win")
    first = dataclasses.replace(spec(win), cdrom=CdromSpec("/nonexistent/x.iso"))
    hv.start(first)

    def cds():
        root = ET.fromstring(hv.conn.lookupByName(win).XMLDesc(0))
        return [(d.find("source").get("file"), d.find("target").get("bus"),
                 d.find("readonly") is not None)
                for d in root.iter("disk") if d.get("device") == "cdrom"]
    assert cds() == [("/nonexistent/x.iso", "ide", True)]
    hv.kill(win)
    hv.start(dataclasses.replace(first, cdrom=None))
    assert cds() == []
    hv.kill(win)
    hv.undefine(win, OWNER)
