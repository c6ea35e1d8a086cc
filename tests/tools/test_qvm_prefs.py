"""qvm-prefs (TOOLS.md §4, §15; CASES.md B79-B84, B89)."""
from __future__ import annotations

import os

import pytest
from tools_helpers import KERNEL, make_template, running, xml_bytes

from qubes.tools import qvm_create, qvm_prefs


def _get(run, vm, prop):
    code, out, err = run(qvm_prefs, "-g", vm, prop)
    assert (code, err) == (0, ""), err
    return out.rstrip("\n")


def test_list_appvm_exact(fixture_vms, run):
    b = str(fixture_vms)
    code, out, err = run(qvm_prefs, "work")
    assert (code, err) == (0, "")
    assert out == f"""\
name               : work
label              : blue
type               : AppVM
template           : fedora-20-x64
netvm              : firewallvm
updateable         : False
autostart          : False
installed_by_rpm   : False
include_in_backups : True
last_backup        : None
dir                : {b}/appvms/work
config             : {b}/appvms/work/work.conf
pcidevs            : []
root_img           : {b}/vm-templates/fedora-20-x64/root.img
root_volatile_img  : {b}/appvms/work/volatile.img
private_img        : {b}/appvms/work/private.img
vcpus              : 4
memory             : 400
maxmem             : 4000
MAC                : 00:16:3E:5E:6C:04 (auto)
kernel             : None (default)
kernelopts         : nopat (default)
debug              : off
default_user       : user
qrexec_timeout     : 60
internal           : False
"""
    assert run(qvm_prefs, "-l", "work")[1] == out


def test_list_hvm_keys(fixture_vms, run):
    _code, out, _err = run(qvm_prefs, "-l", "win7")
    keys = [line.split(":")[0].rstrip() for line in out.splitlines()]
    assert keys == ["name", "label", "type", "netvm", "updateable", "autostart",
                    "installed_by_rpm", "include_in_backups", "last_backup", "dir", "config",
                    "pcidevs", "root_img", "root_volatile_img", "private_img", "vcpus", "memory",
                    "MAC", "debug", "default_user", "qrexec_installed", "qrexec_timeout",
                    "guiagent_installed", "seamless_gui_mode", "drive", "timezone", "internal"]
    assert "drive              : None\n" in out
    assert "timezone           : localtime\n" in out
    assert f"root_img           : {fixture_vms}/appvms/win7/root.img\n" in out


def test_list_template_and_netvm(fixture_vms, run):
    _code, out, _err = run(qvm_prefs, "fedora-20-x64")
    assert f"root_cow_img       : {fixture_vms}/vm-templates/fedora-20-x64/root-cow.img\n" in out
    assert "template " not in out
    _code, out, _err = run(qvm_prefs, "netvm")
    assert "\nnetvm " not in out and "type               : NetVM\n" in out


def test_get(fixture_vms, run):
    assert _get(run, "work", "label") == "blue"
    assert _get(run, "work", "template") == "fedora-20-x64"
    assert _get(run, "work", "MAC") == "00:16:3E:5E:6C:04 (auto)"
    assert _get(run, "work", "mac") == "00:16:3E:5E:6C:04 (auto)"
    assert _get(run, "work", "kernelopts") == "nopat (default)"
    assert _get(run, "work", "ip") == "10.137.2.6"
    assert _get(run, "work", "gateway") == "10.137.2.1"
    assert _get(run, "work", "qid") == "4"
    assert _get(run, "work", "dir_path") == f"{fixture_vms}/appvms/work"
    assert _get(run, "standalone", "template") == "None"
    assert _get(run, "win7", "drive") == "None"
    # without -g, VM PROP gets
    assert run(qvm_prefs, "work", "memory")[1] == "400\n"


@pytest.mark.parametrize("vm,prop,message", [
    ("work", "nosuch", "ERROR: Wrong property name: 'nosuch'\n"),
    ("win7", "kernel", "ERROR: Property 'kernel' not available for this VM\n"),
    ("fedora-20-x64", "template", "ERROR: Property 'template' not available for this VM\n"),
    ("nosuch", "label", "ERROR: A VM with the name 'nosuch' does not exist in the system.\n"),
])
def test_get_errors(fixture_vms, run, vm, prop, message):
    assert run(qvm_prefs, "-g", vm, prop) == (1, "", message)


@pytest.mark.parametrize("argv", [[], ["-g", "work"], ["-g", "work", "label", "x"],
                                  ["-l", "work", "label"], ["--bogus", "work"]])
def test_usage_errors(fixture_vms, run, argv):
    code, _out, err = run(qvm_prefs, *argv)
    assert code == 2 and err.startswith("usage:")


def test_list_and_set_together(fixture_vms, run):
    assert run(qvm_prefs, "-l", "-s", "work", "label", "red") == (
        1, "", "ERROR: You cannot provide -l and -s at the same time!\n")


def test_set_without_property_lists_settable(fixture_vms, run):
    code, out, err = run(qvm_prefs, "-s", "win7")
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[0].startswith("ERROR: ")
    assert "--> 'drive'" in lines and "--> 'label'" in lines
    assert "--> 'kernel'" not in lines  # not available for an HVM


@pytest.mark.parametrize("prop,message", [
    ("netvm", "Missing netvm name argument!"),
    ("label", "Missing label name argument!"),
    ("memory", "Missing memory size argument!"),
    ("kernelopts", "Missing kernelopts value argument!"),
])
def test_missing_value(fixture_vms, run, prop, message):
    assert run(qvm_prefs, "-s", "work", prop) == (1, "", f"ERROR: {message}\n")


# --- values that are accepted ------------------------------------------------

@pytest.mark.parametrize("vm,prop,value,shown", [
    ("work", "label", "Green", "green"),
    ("work", "include_in_backups", "false", "False"),
    ("work", "internal", "TRUE", "True"),
    ("work", "autostart", "True", "True"),
    ("win7", "qrexec_installed", "true", "True"),
    ("win7", "guiagent_installed", "True", "True"),
    ("win7", "seamless_gui_mode", "true", "True"),
    ("work", "debug", "on", "on"),
    ("work", "debug", "True", "on"),
    ("work", "memory", "1024", "1024"),
    ("work", "maxmem", "8000", "8000"),
    ("work", "vcpus", "2", "2"),
    ("work", "kernel", KERNEL, KERNEL),
    ("work", "kernel", "none", "None"),
    ("work", "kernelopts", "nopat quiet", "nopat quiet"),
    ("work", "mac", "00:16:3e:5e:6c:00", "00:16:3E:5E:6C:00"),  # B83, second input
    ("work", "netvm", "netvm", "netvm"),
    ("work", "netvm", "none", "None"),
    ("work", "default_user", "alice", "alice"),
    ("work", "qrexec_timeout", "120", "120"),
    ("work", "pcidevs", "['00:19.0', '03:00.1']", "['00:19.0', '03:00.1']"),
    ("work", "pcidevs", "[]", "[]"),
    ("win7", "drive", "cdrom:dom0:/home/user/win7.iso", "cdrom:dom0:/home/user/win7.iso"),
    ("win7", "drive", "none", "None"),
    ("win7", "timezone", "3600", "3600"),
    ("win7", "timezone", "localtime", "localtime"),
])
def test_set_accepted_and_saved(fixture_vms, run, vm, prop, value, shown):
    code, out, err = run(qvm_prefs, "-s", vm, prop, value)
    assert (code, out, err) == (0, "", "")
    assert _get(run, vm, prop) == shown


def test_only_kernel_dirs_with_a_vmlinuz_can_be_chosen_b89(fixture_vms, run, monkeypatch):
    """B89: the host's real kernel list (LocalHost, not the fixed one of these tests): an
    empty directory or one without vmlinuz is no installed kernel and is refused."""
    from qubes.tools import _cli, qubes_prefs
    monkeypatch.setattr(_cli, "host_factory", None)  # LocalHost(<base>)
    kernels = fixture_vms / "vm-kernels"
    (kernels / "6.1.0").mkdir(parents=True)
    (kernels / "6.1.0" / "vmlinuz").write_bytes(b"kernel")
    (kernels / "5.10.0").mkdir()
    (kernels / "6.0.0").mkdir()
    (kernels / "6.0.0" / "initramfs").write_bytes(b"initramfs only")
    (kernels / "6.2.0" / "vmlinuz").mkdir(parents=True)  # a directory named vmlinuz
    for version in ("5.10.0", "6.0.0", "6.2.0"):
        before = xml_bytes(fixture_vms)
        assert run(qvm_prefs, "-s", "work", "kernel", version) == (
            1, "", f"ERROR: Invalid value for kernel: Kernel version {version} not installed\n")
        assert xml_bytes(fixture_vms) == before
        assert run(qubes_prefs, "-s", "default-kernel", version) == (
            1, "", f"ERROR: Invalid value for default-kernel: Kernel version {version} "
                   "not installed\n")
    assert run(qvm_prefs, "-s", "work", "kernel", "6.1.0") == (0, "", "")
    assert _get(run, "work", "kernel") == "6.1.0"
    assert run(qubes_prefs, "-s", "default-kernel", "6.1.0") == (0, "", "")


def test_set_by_argument_count(fixture_vms, run):
    assert run(qvm_prefs, "work", "kernelopts", "a", "b") == (0, "", "")
    assert _get(run, "work", "kernelopts") == "a b"


def test_defaults_come_back(fixture_vms, run):
    for prop, value in (("netvm", "netvm"), ("kernel", KERNEL), ("kernelopts", "x"),
                        ("mac", "00:16:3E:00:00:01")):
        assert run(qvm_prefs, "-s", "work", prop, value)[0] == 0
    assert run(qvm_prefs, "-s", "work", "netvm", "default")[0] == 0
    assert run(qvm_prefs, "-s", "work", "kernel", "default")[0] == 0
    assert run(qvm_prefs, "-s", "work", "kernelopts", "default")[0] == 0
    assert run(qvm_prefs, "-s", "work", "mac", "auto")[0] == 0
    assert _get(run, "work", "netvm") == "firewallvm"
    assert _get(run, "work", "kernel") == "None (default)"
    assert _get(run, "work", "kernelopts") == "nopat (default)"
    assert _get(run, "work", "MAC") == "00:16:3E:5E:6C:04 (auto)"
    xml = xml_bytes(fixture_vms).decode()
    work = next(line for line in xml.splitlines() if 'name="work"' in line)
    assert 'uses_default_netvm="True"' in work and 'uses_default_kernel="True"' in work
    assert "mac=" not in work


def test_netvm_none_is_not_default(fixture_vms):
    assert qvm_prefs.main(["-s", "work", "netvm", "none"]) == 0
    work = next(line for line in xml_bytes(fixture_vms).decode().splitlines()
                if 'name="work"' in line)
    assert 'netvm_qid="none"' in work and 'uses_default_netvm="False"' in work


def test_template_change(fixture_vms, run):
    make_template(fixture_vms, "fedora-21", size=1 << 20)
    assert run(qvm_prefs, "-s", "work", "template", "fedora-21") == (0, "", "")
    assert _get(run, "work", "root_img") == f"{fixture_vms}/vm-templates/fedora-21/root.img"


def test_maxmem_below_memory_only_warns(fixture_vms, run):
    code, out, err = run(qvm_prefs, "-s", "work", "maxmem", "200")
    assert (code, out) == (0, "")
    assert err.startswith("WARNING: ") and "200" in err and "400" in err
    assert _get(run, "work", "maxmem") == "200"


def test_memory_limits_work_offline(fixture_vms, run):
    """Host limits come from the host object, not the hypervisor (§4.3)."""
    assert run(qvm_prefs, "-s", "work", "memory", "16384")[0] == 0
    assert run(qvm_prefs, "-s", "work", "vcpus", "4")[0] == 0
    assert run(qvm_prefs, "-s", "work", "vcpus", "5") == (
        1, "", "ERROR: Invalid value for vcpus: This host has only 4 cpus\n")


# --- rejected values: message says why, exit 1, qubes.xml byte-identical -------

REJECTED = [
    # B79
    (["work", "netvm", "nosuchvm"], "Invalid value for netvm: no such VM: 'nosuchvm'"),
    # B80
    (["work", "vcpus", "x"], "Invalid value for vcpus: 'x' is not an integer; "
                             "vcpus must be a positive integer"),
    (["work", "vcpus", "0"], "Invalid value for vcpus: A vcpus count must be positive."),
    (["work", "vcpus", "-1"], "Invalid value for vcpus: A vcpus count must be positive."),
    (["work", "memory", "99999999999"],
     "Invalid value for memory: This host has only 16384 MB of RAM"),
    (["work", "memory", "0"], "Invalid value for memory: Memory size must be positive"),
    (["work", "maxmem", "16385"], "Invalid value for maxmem: This host has only 16384 MB of RAM"),
    (["work", "netvm", "ä"], "Invalid value for netvm: no such VM: 'ä'"),
    # B82: one level of quoting
    (["work", "template", "does-not-exist"],
     "Invalid value for template: no such VM: 'does-not-exist'"),
    # B83
    (["work", "mac", "zz:zz:zz"], "Invalid value for mac: 'zz:zz:zz' is not a MAC address "
                                  "of the form XX:XX:XX:XX:XX:XX (hex digits)"),
    (["work", "mac", "autoX"], "Invalid value for mac: 'autoX' is not a MAC address "
                               "of the form XX:XX:XX:XX:XX:XX (hex digits)"),
    (["work", "mac", "00:16:3E:5E:6C:00:11"], "Invalid value for mac: '00:16:3E:5E:6C:00:11' "
                                              "is not a MAC address of the form "
                                              "XX:XX:XX:XX:XX:XX (hex digits)"),
    (["work", "netvm", "work"], "Invalid value for netvm: VM 'work' is not a NetVM"),
    (["work", "label", "pink"], "Invalid value for label: no such label 'pink'; valid labels: "
                                "red, orange, yellow, green, gray, blue, purple, black"),
    (["work", "include_in_backups", "1"],
     "Invalid value for include_in_backups: '1' is not a boolean (use True or False)"),
    (["work", "debug", "maybe"],
     "Invalid value for debug: 'maybe' is not a boolean (use True, False, on or off)"),
    (["work", "kernel", "9.9.9"], "Invalid value for kernel: Kernel version 9.9.9 not installed"),
    (["work", "kernel", "../../etc"],
     "Invalid value for kernel: '../../etc' is not a valid kernel version"),
    (["work", "template", "netvm"],
     "Invalid value for template: 'netvm' is a NetVM, a AppVM needs a TemplateVM"),
    (["work", "template", "none"],
     "Invalid value for template: a VM based on a template cannot be made standalone"),
    (["standalone", "template", "fedora-20-x64"],
     "Invalid value for template: Cannot set template for standalone VM"),
    (["work", "pcidevs", "__import__('os')"],
     "Invalid value for pcidevs: '__import__('os')' is not a PCI device of the form BB:DD.F"),
    (["work", "pcidevs", "[__import__('os')]"],
     "Invalid value for pcidevs: '[__import__('os')]' is not a list of PCI devices"),
    (["work", "pcidevs", "['zz']"],
     "Invalid value for pcidevs: 'zz' is not a PCI device of the form BB:DD.F"),
    (["win7", "timezone", "Europe/Berlin"],
     "Invalid value for timezone: 'Europe/Berlin' is not 'localtime' or an offset in seconds"),
    (["win7", "drive", "floppy:/x"],
     "Invalid value for drive: 'floppy:/x' is not of the form hd:|cdrom: VM : /absolute/path"),
    (["work", "qrexec_timeout", "0"],
     "Invalid value for qrexec_timeout: qrexec_timeout must be a positive integer, not '0'"),
    # availability and names
    (["work", "nosuch", "1"], "Wrong property name: 'nosuch'"),
    (["win7", "kernel", "default"], "Property 'kernel' not available for this VM"),
    (["win7", "maxmem", "1000"], "Property 'maxmem' not available for this VM"),
    (["work", "drive", "none"], "Property 'drive' not available for this VM"),
    (["netvm", "netvm", "firewallvm"], "Property 'netvm' not available for this VM"),
    (["fedora-20-x64", "template", "fedora-20-x64"],
     "Property 'template' not available for this VM"),
    (["dom0", "name", "foo"], "Property 'name' not available for this VM"),
    (["work", "services", "{}"], "Property 'services' cannot be set with qvm-prefs; "
                                 "use qvm-service"),
]


@pytest.mark.parametrize("argv,message", REJECTED, ids=[" ".join(a) for a, _m in REJECTED])
def test_rejected_leaves_xml_identical(fixture_vms, run, argv, message):
    before = xml_bytes(fixture_vms)
    assert run(qvm_prefs, "-s", *argv) == (1, "", f"ERROR: {message}\n")
    assert xml_bytes(fixture_vms) == before


@pytest.mark.parametrize("prop", ["ip", "gateway", "type", "updateable", "qid", "netmask",
                                  "visible_gateway", "secondary_dns", "dir", "config",
                                  "root_img", "private_img", "last_backup", "uuid",
                                  "installed_by_rpm", "netid", "xid"])
def test_b81_read_only(fixture_vms, run, prop):
    before = xml_bytes(fixture_vms)
    code, out, err = run(qvm_prefs, "-s", "firewallvm", prop, "10.0.0.1")
    assert (code, out) == (1, "")
    assert err == f"ERROR: Property '{prop}' is read-only\n"
    assert err.lower() == f"error: property '{prop}' is read-only\n"
    assert xml_bytes(fixture_vms) == before


def test_pcidevs_refused_while_running(fixture_vms, run, fake_hv):
    fake_hv.running["work"] = running()
    before = xml_bytes(fixture_vms)
    assert run(qvm_prefs, "-s", "work", "pcidevs", "['00:19.0']") == (
        1, "", "ERROR: Cannot modify PCI devices of running VM, use qvm-pci instead\n")
    assert xml_bytes(fixture_vms) == before


def test_memory_set_does_not_ask_the_hypervisor(fixture_vms, run, fake_hv):
    assert run(qvm_prefs, "-s", "work", "memory", "800")[0] == 0
    assert fake_hv.calls == []


# --- name (B84) ------------------------------------------------------------------

def test_rename_moves_directory(fixture_vms, run):
    assert run(qvm_prefs, "-s", "work", "name", "ok-name_1") == (0, "", "")
    assert os.path.isdir(os.path.join(str(fixture_vms), "appvms", "ok-name_1"))
    assert not os.path.exists(os.path.join(str(fixture_vms), "appvms", "work"))
    assert _get(run, "ok-name_1", "dir") == f"{fixture_vms}/appvms/ok-name_1"
    assert run(qvm_prefs, "-g", "work", "name")[0] == 1


def test_rename_refused_while_running(fixture_vms, run, fake_hv):
    fake_hv.running["work"] = running()
    code, _out, err = run(qvm_prefs, "-s", "work", "name", "other")
    assert code == 1 and "running" in err and err.startswith("ERROR: ")


B84_NAMES = [
    ("_", "must start with a letter"),
    ("-h", "must start with a letter"),
    ("1abc", "must start with a letter"),
    ("fooßbar", "is not allowed"),
    ("a" * 32, "at most 31"),
    ("none", "reserved"),
]


@pytest.mark.parametrize("name,rule", B84_NAMES, ids=[n for n, _r in B84_NAMES])
def test_b84_names_prefs(fixture_vms, run, name, rule):
    before = xml_bytes(fixture_vms)
    code, out, err = run(qvm_prefs, "-s", "work", "name", "--", name)
    assert (code, out) == (1, "")
    assert err.startswith("ERROR: ") and rule in err and err.count("\n") == 1
    assert xml_bytes(fixture_vms) == before


@pytest.mark.parametrize("name,rule", B84_NAMES, ids=[n for n, _r in B84_NAMES])
def test_b84_names_create(fixture_vms, run, name, rule):
    before = xml_bytes(fixture_vms)
    code, out, err = run(qvm_create, "-l", "red", "--", name)
    assert (code, out) == (1, "")
    assert err.startswith("ERROR: ") and rule in err and err.count("\n") == 1
    assert xml_bytes(fixture_vms) == before


def test_b84_existing_name(fixture_vms, run):
    assert run(qvm_prefs, "-s", "work", "name", "dom0") == (
        1, "", "ERROR: Invalid value for name: a VM with the name 'dom0' already exists\n")
    assert run(qvm_create, "-l", "red", "dom0") == (
        1, "", "ERROR: A VM with the name 'dom0' already exists in the system.\n")


def test_b84_ok_name_create(fixture_vms, run):
    assert run(qvm_create, "-q", "-l", "red", "ok-name_1")[0] == 0
    assert _get(run, "ok-name_1", "name") == "ok-name_1"
