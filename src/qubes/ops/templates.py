"""Template roots: pending changes live in the template's overlay until committed.

A template runs on `root-cow.qcow2` over its `root.img`; VMs based on it run on
their own overlays over `root.img`. Writing the template's changes into
`root.img` while such a VM runs would change a disk under a running guest, so
a commit waits until no VM based on the template runs (CASES.md B96).
"""
from __future__ import annotations

import os

from qubes.errors import NoSuchVMError, QubesError
from qubes.ops import domain
from qubes.ops.runlock import run_lock
from qubes.storage import file as storage
from qubes.store.access import read_collection
from qubes.vmm.base import DomainState


def _busy(app, hv, template) -> list[str]:
    names = [template.name] + [v.name for v in app.vms_based_on(template)]
    states = hv.domain_states(names)
    return [n for n in names if states[n].state is not DomainState.HALTED]


def has_pending_changes(template) -> bool:
    return storage.overlay_has_changes(domain.template_overlay(template))


def commit(app, hv, template) -> bool:
    """Write the template's pending changes into root.img; False when there were none."""
    if not template.is_template:
        raise QubesError(f"A VM '{template.name}' is not template.")
    busy = _busy(app, hv, template)
    if template.name in busy:
        raise QubesError(f"{template.name} is running; shut it down first")
    if busy:
        raise QubesError(f"VM(s) based on '{template.name}' are running: {', '.join(busy)}")
    if not has_pending_changes(template):
        return False
    storage.commit_overlay(domain.template_overlay(template))
    return True


def commit_if_possible(app, hv, template) -> bool:
    """The automatic commit when the template or its last running child stops."""
    if _busy(app, hv, template) or not has_pending_changes(template):
        return False
    storage.commit_overlay(domain.template_overlay(template))
    return True


def revert(app, hv, template) -> bool:
    """Drop the template's pending changes; False when there were none."""
    if not template.is_template:
        raise QubesError(f"A VM '{template.name}' is not template.")
    if template.name in _busy(app, hv, template):
        raise QubesError(f"{template.name} is running; shut it down first")
    if not has_pending_changes(template):
        return False
    storage.new_overlay(domain.template_overlay(template), template.root_img)
    return True


def discard_run_data(vm) -> None:
    """What only lived for one run: a template-based VM's root changes, the volatile disk."""
    paths = [vm.volatile_img] if vm.HAS_KERNEL else []
    if vm.template is not None:
        paths.append(os.path.join(vm.dir_path, domain.APPVM_OVERLAY))
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def commit_named(base_dir: str, host, hv, name: str) -> bool:
    return _in_turn(commit, base_dir, host, hv, name)


def revert_named(base_dir: str, host, hv, name: str) -> bool:
    return _in_turn(revert, base_dir, host, hv, name)


def _in_turn(action, base_dir: str, host, hv, name: str) -> bool:
    """`action` in its turn with starts and after-stop clean-ups (ops/runlock.py): a
    watcher's automatic commit never meets a revert halfway."""
    with run_lock(base_dir), read_collection(base_dir, host) as app:
        vm = app.get(name)
        if vm is None:
            raise NoSuchVMError(name)
        return action(app, hv, vm)
