"""qvm-remove and renaming: metadata under the lock, file removal after it."""
from __future__ import annotations

import os

from qubes.errors import QubesError
from qubes.ops import ensure_halted, network
from qubes.ops.domain import owner_tag
from qubes.storage import file as storage
from qubes.store.access import modify_collection


def remove_vm(base_dir: str, host, hypervisor, name: str, just_db: bool = False) -> list[str]:
    """Unregister `name`, then delete its directory; returns warnings."""
    with modify_collection(base_dir, host) as app:
        vm = app[name]
        if vm.is_adminvm:
            raise QubesError("dom0 cannot be removed")
        ensure_halted(hypervisor, [vm], "remove")
        if vm.installed_by_rpm and not just_db:
            raise QubesError("This VM has been installed by RPM, use rpm -e <pkg name> to remove it!")
        dir_path = vm.dir_path
        # a netvm takes its network and bridge with it (its clients lose network)
        own_network = network.network_of(base_dir, vm) if vm.provides_network else None
        warnings = app.remove(vm)
        if not hypervisor.offline:
            hypervisor.undefine(name, owner_tag(base_dir))
            if own_network is not None:
                hypervisor.remove_network(*own_network)
    if just_db:
        return warnings
    warning = storage.remove_dir(dir_path)
    return warnings + ([warning] if warning else [])


def rename_vm(app, hypervisor, vm, untrusted_new_name: str) -> None:
    """Rename inside an open write transaction: moves the directory and config file."""
    if vm.is_adminvm:
        raise QubesError("dom0 cannot be renamed")
    if vm.installed_by_rpm:
        raise QubesError(f"Cannot rename '{vm.name}': it was installed by RPM")
    ensure_halted(hypervisor, [vm], "rename")
    old_dir, old_conf, followed = vm.dir_path, vm.conf_file, vm.is_default("dir_path")
    old_name = vm.name
    vm.name = untrusted_new_name
    if not hypervisor.offline:  # the next start defines it under the new name
        hypervisor.undefine(old_name, owner_tag(app.base_dir))
    if not followed:
        return
    new_dir = vm.dir_path
    if os.path.isdir(old_dir):
        storage.move_dir(old_dir, new_dir)
        app.on_rollback(lambda: storage.move_dir(new_dir, old_dir))
        moved_conf = os.path.join(new_dir, os.path.basename(old_conf))
        if vm.is_default("conf_file") and os.path.exists(moved_conf):
            os.rename(moved_conf, vm.conf_file)
            app.on_rollback(lambda: os.rename(vm.conf_file, moved_conf))
    elif os.path.lexists(new_dir):
        vm.name = old_name
        raise QubesError(f"{new_dir} already exists")
