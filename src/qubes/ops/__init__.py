"""Actions that span the store, storage, backup and the hypervisor.

create, clone, remove and rename VMs; run a backup or a restore.

Each takes plain option values, holds the qubes.xml write lock only for the
metadata update (never during an image copy, CASES.md B64), and leaves no
half-made VM behind on failure.
"""
from __future__ import annotations

from qubes.errors import QubesError
from qubes.vmm.base import DomainState


def ensure_halted(hypervisor, vms, action: str, message: str | None = None) -> None:
    """Refuse `action` unless every one of `vms` is halted (one bulk state query).

    Paused, crashed or suspended domains still hold their disks: they count as live.
    """
    states = hypervisor.domain_states([vm.name for vm in vms])
    live = [vm.name for vm in vms if states[vm.name].state is not DomainState.HALTED]
    if live:
        raise QubesError(message or
                         f"Cannot {action} a running VM ({', '.join(live)}), stop it first")
