"""qubes.xml is the authority; libvirt and the VM directories follow it (issue 4 §10).

`check` lists where they disagree; `repair` brings them back in line, never
touching what qubes.xml says and never a domain of another collection.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from qubes.ops import dispvm, domain, network, templates
from qubes.store.access import read_collection
from qubes.vmm.base import DomainState


@dataclass(frozen=True)
class Problem:
    kind: str       # orphan-domain, stale-definition, leftover-dispvm, leftover-overlay,
                    # orphan-network
    name: str
    text: str
    repair: str


def check(base_dir: str, host, hv) -> list[Problem]:
    owner = domain.owner_tag(base_dir)
    defined = hv.owned_domains(owner)
    problems = []
    with read_collection(base_dir, host) as app:
        for name, (state, uuid) in sorted(defined.items()):
            vm = app.get(name)
            if vm is None:
                problems.append(Problem(
                    "orphan-domain", name, f"libvirt has a domain '{name}' ({state.value}) "
                    "that qubes.xml does not know", "destroy and undefine it"))
            elif uuid != domain.domain_uuid(vm, base_dir) and state is DomainState.HALTED:
                problems.append(Problem(
                    "stale-definition", name, f"the libvirt definition of '{name}' has uuid "
                    f"{uuid}, qubes.xml says {domain.domain_uuid(vm, base_dir)}",
                    "undefine it (the next start defines it again)"))
        for name in dispvm.stale(app, hv):
            problems.append(Problem("leftover-dispvm", name, f"the DisposableVM '{name}' is "
                                    "registered but not running", "remove it and its files"))
        mine = network.prefix(base_dir)
        for net in hv.networks(mine):
            vm = app.get(net[len(mine):])
            if vm is None or not vm.provides_network:
                problems.append(Problem("orphan-network", net, f"libvirt has the network "
                                        f"'{net}' of a netvm qubes.xml does not know",
                                        "remove it and its bridge"))
        states = hv.domain_states([vm.name for vm in app])
        for vm in app:
            overlay = os.path.join(vm.dir_path, domain.APPVM_OVERLAY)
            if states[vm.name].state is DomainState.HALTED and os.path.exists(overlay) \
                    and not vm.is_disposablevm:
                problems.append(Problem("leftover-overlay", vm.name, f"'{vm.name}' is halted "
                                        f"but its root overlay {overlay} is still there",
                                        "delete it"))
    return problems


def repair(base_dir: str, host, hv, problems: list[Problem]) -> list[str]:
    """Fix each problem; returns what was done."""
    owner = domain.owner_tag(base_dir)
    done = []
    for p in problems:
        if p.kind in ("orphan-domain", "stale-definition"):
            hv.undefine(p.name, owner)
        elif p.kind == "orphan-network":
            hv.remove_network(p.name)
        elif p.kind == "leftover-dispvm":
            if not dispvm.remove_if_stopped(base_dir, host, hv, p.name):
                continue
        elif p.kind == "leftover-overlay":
            with read_collection(base_dir, host) as app:
                vm = app.get(p.name)
                if vm is None or hv.domain_states([p.name])[p.name].state \
                        is not DomainState.HALTED:
                    continue
                templates.discard_run_data(vm)
        done.append(f"{p.name}: {p.repair}")
    return done
