"""Actions that span the store, storage and the hypervisor (create, clone, remove, rename).

Each takes plain option values, holds the qubes.xml write lock only for the
metadata update (never during an image copy, CASES.md B64), and leaves no
half-made VM behind on failure.
"""
from __future__ import annotations

from qubes.errors import QubesError


def ensure_halted(hypervisor, vms, action: str) -> None:
    """Refuse `action` if any of `vms` runs (one bulk state query)."""
    states = hypervisor.domain_states([vm.name for vm in vms])
    running = [vm.name for vm in vms if states[vm.name].state.is_running]
    if running:
        raise QubesError(f"Cannot {action} a running VM ({', '.join(running)}), stop it first")
