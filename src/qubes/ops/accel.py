"""KVM or software emulation (TCG): decided by booting, never by /dev/kvm alone.

VMM.md §10: /dev/kvm and libvirt's capabilities can both promise KVM on a
host where no ordinary guest runs under it. So the first start boots a probe
guest with KVM; if it prints its line within PROBE_TIMEOUT the host uses KVM,
otherwise TCG. The answer is cached per host; `QUBES_ACCEL=kvm|tcg` overrides.
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid as uuidlib

from qubes.errors import QubesError
from qubes.ops import domain
from qubes.vmm.base import DomainSpec, DomainState

PROBE_TIMEOUT = 10.0
PROBE_OWNER = "accelerator-probe"
_DOMAIN_TYPE = {"kvm": "kvm", "tcg": "qemu"}


def cache_path() -> str:
    if os.geteuid() == 0:
        return "/var/cache/qubes-core/accelerator"
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(home, "qubes-core", "accelerator")


def cached() -> str | None:
    """"kvm" or "tcg" as decided earlier on this host (or forced), else None."""
    forced = os.environ.get("QUBES_ACCEL", "").lower()
    if forced:
        if forced not in _DOMAIN_TYPE:
            raise QubesError(f"QUBES_ACCEL must be kvm or tcg, not '{forced}'")
        return forced
    try:
        with open(cache_path(), encoding="ascii") as f:
            value = f.read().strip()
    except OSError:
        return None
    return value if value in _DOMAIN_TYPE else None


def choose(hv, vm) -> str:
    """The libvirt domain type for starting `vm`, probing once per host."""
    known = cached()
    if known is not None:
        return _DOMAIN_TYPE[known]
    kernel = domain.kernel_files(vm)
    if kernel is None:
        return _DOMAIN_TYPE["tcg"]  # nothing to probe with: decide at a kernel VM's start
    found = probe(hv, *kernel)
    path = cache_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="ascii") as f:
        f.write(found + "\n")
    os.replace(path + ".tmp", path)
    return _DOMAIN_TYPE[found]


def probe(hv, vmlinuz: str, initramfs: str | None, timeout: float = PROBE_TIMEOUT) -> str:
    """"kvm" if the kernel boots under KVM within `timeout`, else "tcg"."""
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    return "kvm" if boots(hv, vmlinuz, initramfs, "kvm", timeout) else "tcg"


def boots(hv, vmlinuz: str, initramfs: str | None, domain_type: str, timeout: float) -> bool:
    """Whether a throw-away guest of `domain_type` prints its probe line; leaves no domain."""
    with tempfile.TemporaryDirectory(prefix="qubes-accel-") as tmp:
        log = os.path.join(tmp, "console.log")
        name = f"qubes-accel-probe-{os.getpid()}"
        spec = DomainSpec(name=name, uuid=str(uuidlib.uuid4()), owner=PROBE_OWNER,
                          memory_mb=256, maxmem_mb=256, vcpus=1, disks=(), console_log=log,
                          agent_socket=os.path.join(tmp, "agent"), kernel=vmlinuz,
                          initramfs=initramfs, cmdline="console=ttyS0 panic=-1 qubes.probe=1",
                          accel=domain_type)
        try:
            hv.start(spec)
        except QubesError:
            hv.undefine(name, PROBE_OWNER)
            return False
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                stopped = hv.domain_states([name])[name].state in (
                    DomainState.HALTED, DomainState.PAUSED, DomainState.CRASHED)
                if b"QUBES-PROBE-OK" in domain.read_log(log):
                    return True
                if stopped:
                    return False  # stopped or paused without a word: cannot run it
                time.sleep(0.1)
            return False
        finally:
            hv.undefine(name, PROBE_OWNER)
