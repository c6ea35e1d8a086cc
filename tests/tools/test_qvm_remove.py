"""qvm-remove (TOOLS.md §7)."""
from __future__ import annotations

import os

from tools_helpers import running, xml_bytes

from qubes.store.access import modify_collection
from qubes.tools import qvm_check, qvm_prefs, qubes_prefs, qvm_remove


def test_removes_entry_and_files(fixture_vms, run):
    vm_dir = os.path.join(str(fixture_vms), "appvms", "work")
    assert os.path.isdir(vm_dir)
    assert run(qvm_remove, "work") == (0, "VM 'work' removed.\n", "")
    assert not os.path.exists(vm_dir)
    assert run(qvm_check, "-q", "work")[0] == 1


def test_quiet(fixture_vms, run):
    assert run(qvm_remove, "-q", "work") == (0, "", "")


def test_just_db_keeps_files(fixture_vms, run):
    vm_dir = os.path.join(str(fixture_vms), "appvms", "work")
    assert run(qvm_remove, "-q", "--just-db", "work") == (0, "", "")
    assert os.path.isfile(os.path.join(vm_dir, "private.img"))
    assert b'name="work"' not in xml_bytes(fixture_vms)


def test_refuses_template_with_dependents(fixture_vms, run):
    before = xml_bytes(fixture_vms)
    code, out, err = run(qvm_remove, "fedora-20-x64")
    assert (code, out) == (1, "")
    assert err == ("ERROR: The following AppVMs use 'fedora-20-x64' as a template:\n"
                   "netvm        (qid=2)\n"
                   "firewallvm   (qid=3)\n"
                   "work         (qid=4)\n"
                   "personal     (qid=6)\n"
                   "Please remove those VMs first.\n")
    assert xml_bytes(fixture_vms) == before
    assert os.path.isfile(os.path.join(str(fixture_vms), "vm-templates", "fedora-20-x64",
                                       "root.img"))


def test_refuses_running(fixture_vms, run, fake_hv):
    fake_hv.running["work"] = running()
    before = xml_bytes(fixture_vms)
    code, _out, err = run(qvm_remove, "work")
    assert code == 1 and err.startswith("ERROR: Cannot remove a running VM")
    assert xml_bytes(fixture_vms) == before


def test_refuses_rpm_unless_just_db(fixture_vms, run):
    with modify_collection(str(fixture_vms)) as app:
        app["standalone"].installed_by_rpm = True
    assert run(qvm_remove, "standalone") == (
        1, "", "ERROR: This VM has been installed by RPM, use rpm -e <pkg name> to remove it!\n")
    assert run(qvm_remove, "-q", "--just-db", "standalone") == (0, "", "")


def test_clears_global_defaults(fixture_vms, run):
    assert run(qvm_prefs, "-s", "personal", "netvm", "none")[0] == 0
    assert run(qubes_prefs, "updatevm", "personal")[0] == 0
    assert run(qvm_remove, "-q", "personal")[0] == 0
    assert run(qubes_prefs, "updatevm") == (0, "\n", "")


def test_dom0_and_unknown(fixture_vms, run):
    assert run(qvm_remove, "dom0") == (1, "", "ERROR: dom0 cannot be removed\n")
    assert run(qvm_remove, "nosuch") == (
        1, "", "ERROR: A VM with the name 'nosuch' does not exist in the system.\n")


def test_file_removal_problem_only_warns(fixture_vms, run, monkeypatch):
    from qubes.storage import file as storage
    monkeypatch.setattr(storage, "remove_dir", lambda path: f"cannot remove {path}: busy")
    code, out, err = run(qvm_remove, "-q", "work")
    assert (code, out) == (0, "")
    assert err.startswith("WARNING: cannot remove ") and err.count("\n") == 1
    assert b'name="work"' not in xml_bytes(fixture_vms)
