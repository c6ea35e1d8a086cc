"""The restore plan: which VMs come back, under which names, with which template and netvm.

Made from the backup's qubes.xml and the target collection before anything is
written (CASES.md B26-B32). Rules:

- a VM whose name exists on the target is skipped and the target's VM of that
  name serves its dependents (B26); with `rename_conflicting` it comes back as
  `<name>1`, `<name>2`, ... (the first free name within 31 characters), and
  every restored VM that referred to it follows the new name (B29);
- only selected VMs are restored, never their dependencies (B27);
- a template or netvm is taken from the restore set (under its final name), else
  from the target by name; `replace_template OLD:NEW` applies first (B32);
- a missing dependency is an error listing all of them, unless `skip_broken`
  (the VM is skipped) or `ignore_missing` (the target's default template or
  netvm is used and the plan says so; with no default to use, the VM is an error
  naming the way out, B30, B31).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from qubes.backup.errors import BackupError
from qubes.errors import QubesError
from qubes.util.names import MAX_NAME_LENGTH

_BACKUP_PATH = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class PlanOptions:
    vms: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    verify_only: bool = False
    skip_broken: bool = False
    ignore_missing: bool = False
    rename_conflicting: bool = False
    replace_template: tuple[tuple[str, str], ...] = ()


@dataclass
class VMPlan:
    """One VM of the backup; `failed` and `items` are filled in while restoring."""

    name: str
    vm: object
    path: str
    target_name: str = ""
    template: str | None = None
    netvm: str | None = None
    netvm_default: bool = True
    skip: str | None = None
    notes: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    files: set = field(default_factory=set)
    failed: str | None = None


def backed_up_vms(collection) -> list:
    return [vm for vm in collection if vm.backup_content and not vm.is_adminvm]


def check_backup_paths(vms) -> None:
    """Safe, distinct, not nested: each item then belongs to exactly one VM."""
    seen: dict[str, str] = {}
    for vm in vms:
        path = vm.backup_path
        if not _BACKUP_PATH.fullmatch(path) or {".", ".."} & set(path.split("/")) \
                or path.startswith("dom0-home"):
            raise BackupError(f"VM '{vm.name}': unsafe backup_path '{path}' in qubes.xml")
        for other, owner in seen.items():
            if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                raise BackupError(f"VMs '{owner}' and '{vm.name}' have overlapping backup paths "
                                  f"'{other}' and '{path}' in qubes.xml")
        seen[path] = vm.name


def _free_name(name: str, taken) -> str:
    for n in range(1, 1000):
        suffix = str(n)
        candidate = name[: MAX_NAME_LENGTH - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    raise QubesError(f"no free name for '{name}'")


def make_plan(collection, target, options: PlanOptions) -> list[VMPlan]:
    """Plans in restore order; raises listing every problem when nothing can be decided."""
    candidates = {vm.name: vm for vm in backed_up_vms(collection)}
    check_backup_paths(list(candidates.values()))
    names = list(dict.fromkeys(options.vms)) or list(candidates)  # a name given twice: once
    unknown = [n for n in names + list(options.exclude) if n not in candidates]
    if unknown:
        raise QubesError(f"not in this backup: {', '.join(unknown)} "
                         f"(the backup holds: {', '.join(candidates) or 'no VM'})")
    both = [n for n in options.vms if n in options.exclude]
    if both:
        raise QubesError(f"both asked for and excluded (-x): {', '.join(dict.fromkeys(both))}")
    plans = [VMPlan(n, candidates[n], candidates[n].backup_path, target_name=n)
             for n in names if n not in options.exclude]
    for plan in plans:
        vm = plan.vm
        plan.template = vm.template.name if vm.template is not None else None
        plan.netvm_default = vm.is_default("netvm")
        plan.netvm = vm.netvm.name if vm.HAS_NETVM and vm.netvm is not None else None
    if options.verify_only or target is None:
        return _dependency_order(plans)
    _names(plans, target, options)
    problems = _dependencies(plans, target, options)
    if problems:
        raise QubesError("cannot restore:\n  " + "\n  ".join(problems) +
                         "\n(use --ignore-missing to substitute the defaults, --skip-broken to "
                         "leave those VMs out, or --replace-template OLD:NEW)")
    return _dependency_order(plans)


def _names(plans: list[VMPlan], target, options: PlanOptions) -> None:
    taken = {vm.name for vm in target}
    for plan in plans:
        if plan.name not in taken:
            continue
        if options.rename_conflicting:
            plan.target_name = _free_name(plan.name, taken | {p.target_name for p in plans})
            plan.notes.append(f"restored as '{plan.target_name}': '{plan.name}' already exists")
        else:
            plan.skip = f"a VM named '{plan.name}' already exists on this system"


def _dependencies(plans: list[VMPlan], target, options: PlanOptions) -> list[str]:
    """Resolve template and netvm names on the target; returns what cannot be resolved."""
    replace = dict(options.replace_template)
    problems: list[str] = []
    for _round in range(len(plans) + 1):  # a skipped template can break its dependents
        skipped = {p.name for p in plans if p.skip}
        coming = {p.name: _Coming(p.target_name, p.vm.TYPE) for p in plans if not p.skip}
        problems = []
        for plan in plans:
            if plan.skip:
                continue
            problems += _resolve_template(plan, target, coming, replace, options)
            problems += _resolve_netvm(plan, target, coming, options)
        if {p.name for p in plans if p.skip} == skipped:
            break
    return problems


class _Coming(NamedTuple):
    """A VM of the restore set, as its dependents see it."""
    target_name: str
    type: str


def _resolve_template(plan, target, coming, replace, options) -> list[str]:
    wanted = plan.vm.template.name if plan.vm.template is not None else None
    if wanted is None:
        return []
    replaced = wanted in replace
    wanted = replace.get(wanted, wanted)
    host = target.get(wanted)
    if wanted in coming:
        kind = coming[wanted].type
    elif host is not None:
        kind = host.TYPE
    else:
        kind = None
    if replaced and kind is not None and kind != plan.vm.TEMPLATE_TYPE:
        return [f"VM '{plan.name}': --replace-template names '{wanted}', which is not a "
                f"{plan.vm.TEMPLATE_TYPE}"]
    if wanted in coming:  # loaded from the backup's qubes.xml: checked to be a template
        plan.template = coming[wanted].target_name
        return []
    if host is not None and host.TYPE == plan.vm.TEMPLATE_TYPE:
        plan.template = wanted
        return []
    return _missing(plan, "template", wanted, target.default_template
                    if target.default_template is not None
                    and target.default_template.TYPE == plan.vm.TEMPLATE_TYPE else None, options)


def _resolve_netvm(plan, target, coming, options) -> list[str]:
    if plan.netvm_default or plan.vm.netvm is None:
        return []
    wanted = plan.vm.netvm.name
    if wanted in coming:
        plan.netvm = coming[wanted].target_name
        return []
    host = target.get(wanted)
    if host is not None and host.provides_network:
        plan.netvm = wanted
        return []
    return _missing(plan, "netvm", wanted, target.default_netvm, options, none_ok=True)


def _missing(plan, what: str, wanted: str, default, options, none_ok: bool = False) -> list[str]:
    if options.skip_broken:
        plan.skip = f"its {what} '{wanted}' is neither restored nor on this system"
        return []
    if options.ignore_missing and (default is not None or none_ok):
        substitute = default.name if default is not None else None
        setattr(plan, what, substitute)
        if what == "netvm" and substitute is not None:
            plan.netvm_default = True
        plan.notes.append(f"{what} '{wanted}' is missing: using "
                          + (f"the default '{substitute}'" if substitute else "no network"))
        return []
    if options.ignore_missing:
        return [f"VM '{plan.name}': template '{wanted}' is missing and this system has no "
                f"default template to substitute; use --replace-template {wanted}:NEW"]
    return [f"VM '{plan.name}': {what} '{wanted}' is neither in the restore set nor on "
            "this system"]


def _dependency_order(plans: list[VMPlan]) -> list[VMPlan]:
    """Templates first, then network providers along their chain, then the rest."""
    def rank(p: VMPlan):
        depth, vm = 0, p.vm
        while vm.HAS_NETVM and vm.netvm is not None and depth < 300:
            vm, depth = vm.netvm, depth + 1
        if p.vm.is_template:
            return (0, 0, p.vm.qid)
        if p.vm.provides_network:
            return (1, depth, p.vm.qid)
        return (2, 0, p.vm.qid)
    return sorted(plans, key=rank)
