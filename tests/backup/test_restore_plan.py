"""The restore plan (CASES.md B26-B32), from in-memory collections: no I/O needed."""
from __future__ import annotations

import pytest

from qubes.backup.plan import PlanOptions, make_plan
from qubes.errors import QubesError
from qubes.model.collection import VMCollection
from qubes.model.host import FixedHost


def collection(*specs, default_template=None, default_netvm=None):
    """specs: (class, name, template, netvm or 'default', backed up?)"""
    app = VMCollection("/b", FixedHost())
    app.ensure_dom0()
    for cls, name, template, netvm, *rest in specs:
        vm = app.add_new_vm(cls, name, template=template)
        if netvm != "default" and vm.HAS_NETVM:
            vm.netvm = netvm
        backed = rest[0] if rest else True
        vm.backup_content = backed
        vm.backup_path = f"vm{vm.qid}"
    app.default_template = app.get(default_template) if default_template else None
    app.default_netvm = app.get(default_netvm) if default_netvm else None
    return app


def by_name(plans):
    return {p.name: p for p in plans}


def test_b26_conflict_skipped_by_default_and_renamed_on_request():
    backup = collection(("TemplateVM", "fedora-23", None, None), ("AppVM", "work", "fedora-23", None))
    host = collection(("TemplateVM", "fedora-23", None, None, False))
    plans = by_name(make_plan(backup, host, PlanOptions()))
    assert plans["fedora-23"].skip and plans["work"].template == "fedora-23"
    plans = by_name(make_plan(backup, host, PlanOptions(rename_conflicting=True)))
    assert plans["fedora-23"].target_name == "fedora-231"
    assert plans["work"].template == "fedora-231"


def test_b27_only_selected_vms_are_planned():
    backup = collection(("TemplateVM", "t", None, None), ("AppVM", "bt-1", "t", None),
                        ("AppVM", "bt-2", "t", None))
    host = collection(("TemplateVM", "t", None, None, False), ("AppVM", "bt-1", "t", None, False),
                      ("AppVM", "bt-2", "t", None, False))
    plans = make_plan(backup, host, PlanOptions(vms=("bt-1",), rename_conflicting=True))
    assert [(p.name, p.target_name, p.template) for p in plans] == [("bt-1", "bt-11", "t")]


def test_b28_dependency_not_restored_maps_to_the_existing_vm():
    backup = collection(("TemplateVM", "t", None, None), ("NetVM", "sys-vpn", "t", None),
                        ("AppVM", "app-vm", "t", "sys-vpn"))
    host = collection(("TemplateVM", "t", None, None, False), ("NetVM", "sys-vpn", "t", None, False))
    plans = make_plan(backup, host, PlanOptions(vms=("app-vm",)))
    assert [(p.name, p.netvm) for p in plans] == [("app-vm", "sys-vpn")]


def test_b29_every_vm_follows_a_renamed_template():
    backup = collection(("TemplateVM", "debian-9", None, None), ("AppVM", "a", "debian-9", None),
                        ("AppVM", "b", "debian-9", None))
    host = collection(("TemplateVM", "debian-9", None, None, False))
    plans = by_name(make_plan(backup, host, PlanOptions(rename_conflicting=True)))
    assert plans["a"].template == plans["b"].template == "debian-91"


def test_b30_ignore_missing_without_default_template_names_the_way_out():
    backup = collection(("TemplateVM", "VM-templ", None, None, False), ("AppVM", "VM", "VM-templ", None))
    host = collection()
    with pytest.raises(QubesError, match="no default template to substitute.*--replace-template"):
        make_plan(backup, host, PlanOptions(ignore_missing=True))
    host = collection(("TemplateVM", "other", None, None, False), default_template="other")
    plan, = make_plan(backup, host, PlanOptions(ignore_missing=True))
    assert plan.template == "other" and "missing" in plan.notes[0]


def test_b31_missing_netvm_refused_up_front_or_substituted():
    backup = collection(("TemplateVM", "t", None, None, False), ("NetVM", "sys-whonix", "t", None, False),
                        ("AppVM", "anon", "t", "sys-whonix"), ("AppVM", "anon2", "t", "sys-whonix"))
    host = collection(("TemplateVM", "t", None, None, False), ("NetVM", "net", "t", None, False),
                      default_netvm="net")
    with pytest.raises(QubesError) as err:
        make_plan(backup, host, PlanOptions())
    assert "anon'" in str(err.value) and "anon2" in str(err.value)  # every missing one listed
    plans = make_plan(backup, host, PlanOptions(ignore_missing=True))
    assert all(p.netvm == "net" and p.notes for p in plans)
    plans = make_plan(backup, host, PlanOptions(skip_broken=True))
    assert all(p.skip for p in plans)


def test_b32_replace_template_has_an_effect():
    backup = collection(("TemplateVM", "old", None, None, False), ("AppVM", "w", "old", None))
    host = collection(("TemplateVM", "new", None, None, False))
    plan, = make_plan(backup, host, PlanOptions(replace_template=(("old", "new"),)))
    assert plan.template == "new"


def test_skipped_template_breaks_its_dependents_with_skip_broken():
    backup = collection(("TemplateVM", "t", None, None), ("AppVM", "w", "t", None),
                        ("NetVM", "gone", "t", None, False), ("AppVM", "x", "t", "gone"))
    host = collection()
    plans = by_name(make_plan(backup, host, PlanOptions(skip_broken=True)))
    assert not plans["t"].skip and not plans["w"].skip and plans["x"].skip


def test_unknown_names_and_excludes():
    backup = collection(("TemplateVM", "t", None, None))
    with pytest.raises(QubesError, match="not in this backup: nope"):
        make_plan(backup, collection(), PlanOptions(vms=("nope",)))
    assert make_plan(backup, collection(), PlanOptions(exclude=("t",))) == []
