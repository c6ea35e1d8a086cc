"""Checks made before anything is defined in libvirt, and what a failed start leaves
(CASES.md B86, B87, B95, B102)."""
from __future__ import annotations

import os

import pytest

from qubes.errors import QubesError, StorageError, VMMError
from qubes.ops import domain
from qubes.ops.lifecycle import start_dispvm, start_vm
from qubes.store.access import read_collection
from qubes.util.host import LocalHost
from qubes.vmm.base import DomainInfo, DomainState, HostMemory
from tests.conftest import run


class FakeHypervisor:
    """Every VM halted; host memory as given; start() records, or fails as told."""

    offline = False
    uri = "fake:///"

    def __init__(self, total_mb: int = 16384, assigned_mb: int = 0, domains: int = 0,
                 free_mb: int | None = None, start_error: Exception | None = None):
        self.memory = HostMemory(total_mb, assigned_mb, domains)
        self.free_mb = total_mb if free_mb is None else free_mb
        self.start_error = start_error
        self.started = []
        self.undefined = []

    def domain_states(self, names):
        return {n: DomainInfo(DomainState.HALTED) for n in names}

    def host_memory(self):
        return self.memory

    def host_free_memory_mb(self):
        return self.free_mb  # what getFreeMemory says: lazily allocated guests look free

    def start(self, spec):
        if self.start_error is not None:
            raise self.start_error
        self.started.append(spec.name)

    def undefine(self, name, owner):
        self.undefined.append(name)


@pytest.fixture
def tpl(base):
    (base / "vm-templates" / "t").mkdir(parents=True)
    (base / "vm-templates" / "t" / "root.img").write_bytes(b"\0" * 65536)
    run("qvm-add-template", "t")
    return base


@pytest.fixture
def work(tpl, monkeypatch):
    """AppVM `work` on `t`, with a kernel file, ready to be started against a fake."""
    monkeypatch.setenv("QUBES_ACCEL", "tcg")
    run("qvm-create", "-l", "red", "work")
    with read_collection(str(tpl), LocalHost(str(tpl))) as app:
        kdir = app["work"].kernels_dir
    os.makedirs(kdir)
    with open(os.path.join(kdir, "vmlinuz"), "wb") as f:
        f.write(b"kernel")
    return tpl


def run_files(base) -> list[str]:
    vm_dir = base / "appvms" / "work"
    return sorted(p for p in (domain.APPVM_OVERLAY, "volatile.img") if (vm_dir / p).exists())


def test_not_enough_memory_is_refused_naming_both_sizes(tpl):
    run("qvm-create", "-l", "red", "win7")
    run("qvm-prefs", "-s", "win7", "memory", "4096")
    hv = FakeHypervisor(total_mb=8192, assigned_mb=6000, domains=2, free_mb=7000)
    with pytest.raises(QubesError, match=r"not enough memory to start 'win7': 4160 MiB needed "
                                         r"\(64 MiB of it for QEMU\), 2064 MiB available"):
        start_vm(str(tpl), LocalHost(str(tpl)), hv, "win7")
    assert hv.started == []


def test_memory_promised_to_running_guests_counts_though_it_looks_free(tpl):
    """B86/B87: QEMU allocates lazily; getFreeMemory() would let this start through."""
    run("qvm-create", "-l", "red", "win7")
    run("qvm-prefs", "-s", "win7", "memory", "4096")
    hv = FakeHypervisor(total_mb=16384, assigned_mb=12288, domains=3, free_mb=15000)
    with pytest.raises(QubesError, match=r"4160 MiB needed .*, 3904 MiB available"):
        start_vm(str(tpl), LocalHost(str(tpl)), hv, "win7")
    assert hv.started == []


def test_a_failed_create_leaves_no_overlay_or_volatile(work):
    hv = FakeHypervisor(start_error=VMMError("starting 'work' failed: QEMU died"))
    with pytest.raises(VMMError, match="QEMU died"):
        start_vm(str(work), LocalHost(str(work)), hv, "work")
    assert run_files(work) == []


def test_a_start_failing_while_preparing_disks_leaves_no_overlay(work, monkeypatch):
    """The overlay is made, then the volatile image cannot be: neither stays."""
    def no_space(path, *_args):
        raise StorageError(f"cannot create {path}: No space left on device")
    monkeypatch.setattr(domain.storage, "fresh_volatile", no_space)
    hv = FakeHypervisor()
    with pytest.raises(StorageError, match="No space left"):
        start_vm(str(work), LocalHost(str(work)), hv, "work")
    assert hv.started == []
    assert run_files(work) == []


def test_a_dispvm_short_of_memory_leaves_nothing_registered(tpl):
    """B102: the DispVM made for the start is removed with its files and definition."""
    hv = FakeHypervisor(total_mb=1024, assigned_mb=900, domains=1)
    with pytest.raises(QubesError, match=r"not enough memory to start 'disp1'"):
        start_dispvm(str(tpl), LocalHost(str(tpl)), hv, "t")
    with read_collection(str(tpl), LocalHost(str(tpl))) as app:
        assert [vm.name for vm in app if vm.is_disposablevm] == []
    assert not (tpl / "appvms" / "disp1").exists()
    assert hv.undefined == ["disp1"] and hv.started == []


def test_dom0_cannot_be_started(base):
    with pytest.raises(QubesError, match="dom0 is always running"):
        start_vm(str(base), LocalHost(str(base)), FakeHypervisor(), "dom0")


def test_the_watcher_of_an_earlier_run_leaves_a_starting_run_alone(work, monkeypatch):
    """Stop, then start at once: the old run's watcher wakes up while the new start
    prepares its disks. It must not remove the new run's volatile image and overlay."""
    import threading

    from qubes.ops import watch
    monkeypatch.setattr(watch, "spawn", lambda *_args: None)
    host = LocalHost(str(work))

    class Restarting(FakeHypervisor):
        def __init__(self):
            super().__init__()
            self.up = set()

        def domain_states(self, names):
            return {n: DomainInfo(DomainState.RUNNING if n in self.up else DomainState.HALTED)
                    for n in names}

        def start(self, spec):
            self.watcher = threading.Thread(target=watch.after_stop,
                                            args=(str(work), host, self, spec.name))
            self.watcher.start()
            self.watcher.join(0.5)  # it may run now, while the domain is not up yet
            self.up.add(spec.name)

    hv = Restarting()
    start_vm(str(work), host, hv, "work", wait=False)
    hv.watcher.join(10)
    assert run_files(work) == [domain.APPVM_OVERLAY, "volatile.img"]


def test_two_starts_at_once_that_only_fit_alone_one_gets_the_memory_error(work, monkeypatch):
    """B87(b): each start's memory check and its domain creation go together; were they
    interleaved, both would see the memory free and the host would be overcommitted."""
    import threading
    import time

    from qubes.ops import watch
    monkeypatch.setattr(watch, "spawn", lambda *_args: None)
    run("qvm-create", "-l", "red", "other")
    host = LocalHost(str(work))
    with read_collection(str(work), host) as app:
        kdir = app["other"].kernels_dir
    os.makedirs(kdir)
    with open(os.path.join(kdir, "vmlinuz"), "wb") as f:
        f.write(b"kernel")
    for name in ("work", "other"):
        run("qvm-prefs", "-s", name, "memory", "3000")

    class Filling(FakeHypervisor):
        """A started domain is assigned its memory; creating one takes a while."""

        def __init__(self):
            super().__init__(total_mb=5000)
            self.lock = threading.Lock()

        def domain_states(self, names):
            with self.lock:
                return {n: DomainInfo(DomainState.RUNNING if n in self.started
                                      else DomainState.HALTED) for n in names}

        def host_memory(self):
            with self.lock:
                return HostMemory(5000, 3000 * len(self.started), len(self.started))

        def start(self, spec):
            time.sleep(0.5)  # the other start's check runs meanwhile, unless it waits
            with self.lock:
                self.started.append(spec.name)

    hv = Filling()
    errors = {}

    def start(name):
        try:
            start_vm(str(work), host, hv, name, wait=False)
        except QubesError as exc:
            errors[name] = str(exc)
    threads = [threading.Thread(target=start, args=(n,)) for n in ("work", "other")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(hv.started) == 1
    (failed, message), = errors.items()
    assert failed not in hv.started
    assert message == (f"not enough memory to start '{failed}': 3064 MiB needed (64 MiB of it "
                       "for QEMU), 1936 MiB available")
    vm_dir = work / "appvms" / failed
    assert not (vm_dir / domain.APPVM_OVERLAY).exists()
    assert not (vm_dir / "volatile.img").exists()
