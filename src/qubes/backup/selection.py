"""Which VMs and which files go into a backup (BACKUP-FORMAT.md §3, §4.1).

Works on model objects; it only looks at which files exist and their
allocated sizes. The caller checks running state and disk space.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from qubes.backup.hometree import HomeTree
from qubes.errors import NoSuchVMError, QubesError
from qubes.util.sizes import disk_usage


@dataclass(frozen=True)
class Item:
    """One inner archive: `source` (file or directory) stored as `<subdir><base>`.

    `links`: keep symbolic and hard links as links (dom0 home) instead of
    storing what they point to (VM files).
    """

    vm: str
    source: str
    subdir: str
    base: str
    links: bool = False

    @property
    def name(self) -> str:
        return self.subdir + self.base


@dataclass(frozen=True)
class BackupPlan:
    vms: tuple[str, ...]
    items: tuple[Item, ...]
    sizes: dict
    skipped: tuple[str, ...]
    home: HomeTree | None = None

    @property
    def total_size(self) -> int:
        return sum(self.sizes.values())


def default_selection(app) -> list:
    """VMs with include_in_backups: non-internal AppVMs/HVMs, net VMs, templates."""
    chosen = []
    for vm in app:
        if vm.is_adminvm or vm.is_disposablevm or not vm.include_in_backups:
            continue
        if vm.is_appvm and vm.internal:
            continue
        chosen.append(vm)
    return chosen


def backup_path(vm, hide_names: bool) -> str:
    if hide_names:
        return f"vm{vm.qid}"
    return f"{vm.DIR_SUBDIR}/{vm.name}"


def vm_items(vm, subdir: str) -> list[Item]:
    """The R3 item list of one VM, in archive order."""
    d = vm.dir_path
    if vm.is_template:
        return [Item(vm.name, d, subdir, ".")]
    items = [Item(vm.name, vm.private_img, subdir, "private.img")]
    optional = ["icon.png"]
    if vm.updateable:
        optional.append("apps.templates" if os.path.exists(os.path.join(d, "apps.templates"))
                        else "apps")
        optional.append("kernels")
    optional += ["firewall.xml", "whitelisted-appmenus.list"]
    for name in optional:
        path = os.path.join(d, name)
        if os.path.exists(path):  # follows links: a dangling icon link is no data
            items.append(Item(vm.name, path, subdir, name))
    if vm.updateable:
        items.append(Item(vm.name, vm.root_img, subdir, "root.img"))
    return items


DOM0_HOME = "dom0-home"


def home_item(home: str, user: str) -> Item:
    return Item("dom0", home, f"{DOM0_HOME}/", user, links=True)


def make_plan(app, names: list[str] | None, exclude: list[str], hide_names: bool,
              home: HomeTree | None = None) -> BackupPlan:
    """Select VMs, check their data exists (B25, B40), and list the items.

    `home` adds dom0's home as the last item.
    """
    if names:
        vms = []
        for name in names:
            vm = app.get(name)
            if vm is None:
                raise NoSuchVMError(name)
            if vm.is_adminvm or vm.is_disposablevm:
                raise QubesError(f"'{name}' cannot be backed up as a VM")
            vms.append(vm)
    else:
        vms = default_selection(app)
    for name in exclude:
        if app.get(name) is None:
            raise NoSuchVMError(name)
    vms = [vm for vm in vms if vm.name not in exclude]
    if not vms and home is None:
        raise QubesError("No VMs selected for backup")
    templates = [vm for vm in vms if vm.is_template]
    others = [vm for vm in vms if not vm.is_template]
    items, sizes = [], {}
    for vm in others + templates:
        subdir = backup_path(vm, hide_names) + "/"
        for item in vm_items(vm, subdir):
            if not os.path.exists(item.source):
                raise QubesError(f"VM '{vm.name}': {item.source} is missing; "
                                 "nothing was written")
            items.append(item)
        sizes[vm.name] = disk_usage(vm.dir_path)
    if home is not None:
        sizes["dom0"] = home.size  # walks it once, naming anything unreadable (B39)
        items.append(home_item(home.directory, home.user))
    skipped = tuple(vm.name for vm in app if vm not in vms and not vm.is_adminvm)
    return BackupPlan(tuple(vm.name for vm in others + templates), tuple(items), sizes, skipped,
                      home)


def mark_collection(app, plan: BackupPlan, hide_names: bool) -> None:
    """Set backup_content/path/size as R3 does (BACKUP-FORMAT.md §4.1)."""
    for vm in app:
        vm.backup_content = False
        vm.backup_path = ""
        vm.backup_size = 0
    for name in plan.vms:
        vm = app[name]
        vm.backup_content = True
        vm.backup_path = backup_path(vm, hide_names)
        vm.backup_size = plan.sizes[name]
    if plan.home is not None:
        app.dom0.backup_content = True
        app.dom0.backup_path = f"{DOM0_HOME}/{plan.home.user}"
        app.dom0.backup_size = plan.sizes["dom0"]


def archived_vms(app, plan: BackupPlan) -> list:
    """The selected VMs plus the VMs they reference (B42: nothing else)."""
    keep = [app.dom0] + [app[name] for name in plan.vms]
    i = 0
    while i < len(keep):
        vm = keep[i]
        for dep in (vm.template, vm.netvm if vm.HAS_NETVM else None):
            if dep is not None and dep not in keep:
                keep.append(dep)
        i += 1
    return keep
