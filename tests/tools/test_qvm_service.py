"""qvm-service (TOOLS.md §6)."""
from __future__ import annotations

import pytest
from tools_helpers import xml_bytes

from qubes.tools import qvm_service


def test_list_enable_disable_default(fixture_vms, run):
    # the loader adds meminfo-writer (True without PCI devices), as R2 does
    assert run(qvm_service, "standalone") == (0, "meminfo-writer: Enabled\n", "")
    assert run(qvm_service, "standalone", "-e", "cups") == (0, "", "")
    assert run(qvm_service, "standalone", "-d", "network-manager") == (0, "", "")
    assert run(qvm_service, "standalone", "-l") == (
        0, "cups           : Enabled\nmeminfo-writer : Enabled\nnetwork-manager: Disabled\n", "")
    assert run(qvm_service, "standalone", "-D", "cups") == (0, "", "")
    assert run(qvm_service, "standalone", "-D", "meminfo-writer") == (0, "", "")
    assert run(qvm_service, "standalone", "-D", "never-set") == (0, "", "")
    assert run(qvm_service, "standalone") == (
        0, "meminfo-writer : Enabled\nnetwork-manager: Disabled\n", "")
    assert b"'network-manager': False" in xml_bytes(fixture_vms)
    assert b"'cups'" not in xml_bytes(fixture_vms)


def test_hvm_default_services(fixture_vms, run):
    assert run(qvm_service, "win7") == (0, "meminfo-writer: Disabled\n", "")


def test_invalid_service_name_leaves_xml(fixture_vms, run):
    before = xml_bytes(fixture_vms)
    code, out, err = run(qvm_service, "work", "-e", "a b")
    assert (code, out) == (1, "") and err.startswith("ERROR: Invalid value for services")
    assert xml_bytes(fixture_vms) == before


@pytest.mark.parametrize("argv", [[], ["work", "-e"], ["work", "-e", "a", "-d", "b"]])
def test_usage_errors(fixture_vms, run, argv):
    code, _out, err = run(qvm_service, *argv)
    assert code == 2 and err.startswith("usage:")


def test_unknown_vm(fixture_vms, run):
    assert run(qvm_service, "nosuch", "-e", "x") == (
        1, "", "ERROR: A VM with the name 'nosuch' does not exist in the system.\n")
