"""DisposableVMs: made from a template for one run, gone with every trace after it.

`dispN` names come from a counter kept beside qubes.xml, so a name is never
handed out twice (B103); a DisposableVM is registered while it runs and
removed (entry, directory, libvirt definition) when it stops, by whichever of
the tool or the watcher sees the stop first (B93, B99, B100).
"""
from __future__ import annotations

import os
import re

from qubes.errors import QubesError
from qubes.ops.domain import owner_tag
from qubes.storage import file as storage
from qubes.store.access import modify_collection
from qubes.vmm.base import DomainState

COUNTER = ".dispid"
RESERVED = re.compile(r"disp[0-9]+")


def _next_dispid(app, base_dir: str) -> int:
    path = os.path.join(base_dir, COUNTER)
    try:
        with open(path, encoding="ascii") as f:
            last = int(f.read().strip() or 0)
    except (OSError, ValueError):
        last = 0
    used = [vm.dispid for vm in app if vm.is_disposablevm]
    n = max([last] + used) + 1
    while app.get(f"disp{n}") is not None:
        n += 1
    with open(path + ".tmp", "w", encoding="ascii") as f:
        f.write(f"{n}\n")
    os.replace(path + ".tmp", path)
    return n


def create(base_dir: str, host, template_name: str) -> str:
    """Register a new DisposableVM on `template_name` and make its files; returns its name."""
    with modify_collection(base_dir, host) as app:
        template = app[template_name]
        if not template.is_template or template.is_hvm:
            raise QubesError(f"'{template_name}' is not a TemplateVM; a DisposableVM needs one")
        n = _next_dispid(app, base_dir)
        vm = app.add_new_vm("DisposableVM", f"disp{n}", template=template, dispid=n)
        # A copy of the template's private image: sparse, so it costs its data only.
        source = template.private_img if os.path.exists(template.private_img) \
            else storage.PRIVATE_IMG_SIZE
        tmp = storage.build_dir(vm.dir_path, {"private.img": source})
        try:
            storage.commit_dir(tmp, vm.dir_path)
        except BaseException:
            storage.discard_dir(tmp)
            raise
        return vm.name


def remove_if_stopped(base_dir: str, host, hv, name: str) -> bool:
    """Remove a halted DisposableVM completely; False if it runs or is not one."""
    with modify_collection(base_dir, host) as app:
        vm = app.get(name)
        if vm is None or not vm.is_disposablevm:
            return False
        if hv.domain_states([name])[name].state is not DomainState.HALTED:
            return False
        dir_path = vm.dir_path
        app.remove(vm)
    if not hv.offline:
        hv.undefine(name, owner_tag(base_dir))
    storage.remove_dir(dir_path)
    return True


def stale(app, hv) -> list[str]:
    """DisposableVMs registered but not running: left by a crash or power loss (B99)."""
    names = [vm.name for vm in app if vm.is_disposablevm]
    states = hv.domain_states(names)
    return [n for n in names if states[n].state is DomainState.HALTED]
