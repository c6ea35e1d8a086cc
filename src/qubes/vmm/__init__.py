"""The hypervisor seam: `connect()` picks libvirt or offline, nothing connects at import.

`vmm.base` is the protocol the rest of the package uses; `vmm.libvirt` is the
only module that imports libvirt, and only when a connection is first needed.
"""
from __future__ import annotations

import os

from qubes.vmm.base import Hypervisor

DEFAULT_URI = "qemu:///system"


def offline_requested(flag: bool | None = None) -> bool:
    """`--offline-mode`, `QUBES_OFFLINE=1`, or root inside a chroot (the R4 rule)."""
    if flag:
        return True
    if os.environ.get("QUBES_OFFLINE", "") not in ("", "0"):
        return True
    return _in_chroot()


def _in_chroot() -> bool:
    try:
        return os.geteuid() == 0 and os.stat("/") != os.stat("/proc/1/root/.")
    except OSError:
        return False


def connect(offline: bool | None = None, uri: str | None = None) -> Hypervisor:
    """The hypervisor object for this process; lazy: no connection is made here."""
    if offline_requested(offline):
        from qubes.vmm.offline import OfflineHypervisor
        return OfflineHypervisor()
    from qubes.vmm.libvirt import LibvirtHypervisor
    return LibvirtHypervisor(uri or os.environ.get("QUBES_VMM_URI") or DEFAULT_URI)
