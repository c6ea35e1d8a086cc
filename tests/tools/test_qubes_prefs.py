"""qubes-prefs (TOOLS.md §5; CASES.md B79, B85)."""
from __future__ import annotations

import pytest
from tools_helpers import KERNEL, xml_bytes

from qubes.tools import qubes_prefs

VALID = "".join(f"--> '{p}'\n" for p in ("clockvm", "default-fw-netvm", "default-kernel",
                                          "default-netvm", "default-template", "updatevm"))


def test_list(fixture_vms, run):
    code, out, err = run(qubes_prefs)
    assert (code, err) == (0, "")
    assert out == """\
clockvm           : netvm
default-fw-netvm  : netvm
default-kernel    : 
default-netvm     : firewallvm
default-template  : fedora-20-x64
updatevm          : firewallvm
"""
    assert run(qubes_prefs, "-l")[1] == out


def test_get(fixture_vms, run):
    assert run(qubes_prefs, "default-template") == (0, "fedora-20-x64\n", "")
    assert run(qubes_prefs, "-g", "updatevm") == (0, "firewallvm\n", "")
    assert run(qubes_prefs, "-g", "default-kernel") == (0, "\n", "")


def test_set_and_unset(fixture_vms, run):
    assert run(qubes_prefs, "-s", "default-netvm", "netvm") == (0, "", "")
    assert run(qubes_prefs, "default-netvm") == (0, "netvm\n", "")
    assert run(qubes_prefs, "clockvm", "none") == (0, "", "")
    assert run(qubes_prefs, "clockvm") == (0, "\n", "")
    assert run(qubes_prefs, "default-kernel", KERNEL) == (0, "", "")
    assert run(qubes_prefs, "default-kernel") == (0, f"{KERNEL}\n", "")
    assert b'default_kernel="3.12.1-1"' in xml_bytes(fixture_vms)
    assert run(qubes_prefs, "updatevm", "work") == (0, "", "")


def test_underscore_names_accepted(fixture_vms, run):
    assert run(qubes_prefs, "default_template") == (0, "fedora-20-x64\n", "")


def test_b85_same_result_twice(fixture_vms, run):
    first = run(qubes_prefs, "default_netvm", "netvm")
    assert first == run(qubes_prefs, "default_netvm", "netvm") == (0, "", "")
    bad = run(qubes_prefs, "default_netvm", "work")
    assert bad == run(qubes_prefs, "default_netvm", "work")
    assert bad[0] == 1


@pytest.mark.parametrize("argv,message", [
    (["updatevm", "nosuchvm"], "Invalid value for updatevm: no such VM: 'nosuchvm'"),  # B79
    (["default-netvm", "work"], "Invalid value for default-netvm: VM 'work' is not a NetVM"),
    (["default-fw-netvm", "work"],
     "Invalid value for default-fw-netvm: VM 'work' is not a NetVM"),
    (["default-template", "work"],
     "Invalid value for default-template: VM 'work' is not a template"),
    (["default-kernel", "9.9"], "Invalid value for default-kernel: Kernel version 9.9 "
                                "not installed"),
    (["default-kernel", "none"],
     "Invalid value for default-kernel: the default kernel cannot be unset"),
])
def test_set_errors_leave_xml_identical(fixture_vms, run, argv, message):
    before = xml_bytes(fixture_vms)
    assert run(qubes_prefs, *argv) == (1, "", f"ERROR: {message}\n")
    assert xml_bytes(fixture_vms) == before


@pytest.mark.parametrize("argv,first", [
    (["nosuch"], "ERROR: Wrong property name: 'nosuch'"),
    (["-s", "nosuch", "x"], "ERROR: Wrong property name: 'nosuch'"),
    (["-s", "updatevm"], "ERROR: Missing value argument for 'updatevm'!"),
    (["-s"], "ERROR: Missing property name argument!"),
])
def test_unknown_or_missing_lists_properties(fixture_vms, run, argv, first):
    assert run(qubes_prefs, *argv) == (1, "", f"{first}\nValid properties:\n{VALID}")


def test_only_one_action(fixture_vms, run):
    assert run(qubes_prefs, "-l", "-s", "updatevm", "netvm") == (
        1, "", "ERROR: You can provide only one action at once!\n")


@pytest.mark.parametrize("argv", [["a", "b", "c"], ["-l", "updatevm"], ["-g", "updatevm", "x"]])
def test_usage_errors(fixture_vms, run, argv):
    code, _out, err = run(qubes_prefs, *argv)
    assert code == 2 and err.startswith("usage:")


def test_never_touches_the_hypervisor(fixture_vms, run, fake_hv, monkeypatch):
    monkeypatch.delenv("QUBES_OFFLINE")
    assert run(qubes_prefs)[0] == 0
    assert run(qubes_prefs, "updatevm", "netvm")[0] == 0
    assert fake_hv.calls == []
