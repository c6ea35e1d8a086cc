"""core2 qubes.xml: every class and attribute round-trips; damaged files give clear errors."""
from __future__ import annotations

import pytest

from qubes.errors import StoreError
from qubes.model.host import FixedHost
from qubes.store.codec import dump_collection, load_collection

# Written for these tests in the R2 layout of QUBES-XML.md §15 (own values).
R2_XML = b"""<?xml version='1.0' encoding='UTF-8'?>
<QubesVmCollection default_template="1" default_netvm="3" default_fw_netvm="2" updatevm="3" clockvm="2" default_kernel="4.19.0">
  <QubesAppVm qid="4" name="work" label="blue" template_qid="1" netvm_qid="3" uses_default_netvm="True" dir_path="/var/lib/qubes/appvms/work" conf_file="work.conf" root_img="root.img" private_img="private.img" volatile_img="volatile.img" memory="500" maxmem="3000" vcpus="2" pcidevs="[]" internal="False" installed_by_rpm="False" uses_default_kernel="True" kernel="4.19.0" uses_default_kernelopts="True" kernelopts="nopat" services="{'meminfo-writer': True, 'cups': True}" include_in_backups="True" debug="False" default_user="user" qrexec_timeout="60" autostart="False" backup_content="True" backup_size="2147483648" backup_path="appvms/work" backup_timestamp="1409000000"/>
  <QubesTemplateVm qid="1" name="fedora" label="black" template_qid="none" netvm_qid="3" uses_default_netvm="True" dir_path="/var/lib/qubes/vm-templates/fedora" conf_file="fedora.conf" memory="400" pcidevs="[]" internal="False" installed_by_rpm="True" uses_default_kernel="True" kernel="4.19.0" uses_default_kernelopts="True" kernelopts="nopat" services="{'meminfo-writer': True}" include_in_backups="True" debug="False" default_user="user" qrexec_timeout="60" autostart="False" backup_content="False" backup_size="0" backup_path=""/>
  <QubesNetVm qid="2" name="netvm" netid="1" label="red" template_qid="1" dir_path="/var/lib/qubes/servicevms/netvm" conf_file="netvm.conf" memory="300" pcidevs="['00:19.0']" internal="False" installed_by_rpm="False" uses_default_kernel="True" kernel="4.19.0" uses_default_kernelopts="True" kernelopts="nopat iommu=soft swiotlb=4096" services="{'ntpd': False}" include_in_backups="True" debug="False" default_user="user" qrexec_timeout="60" autostart="False" backup_content="False" backup_size="0" backup_path=""/>
  <QubesProxyVm qid="3" name="firewallvm" netid="2" netvm_qid="2" label="green" template_qid="1" dir_path="/var/lib/qubes/servicevms/firewallvm" memory="300" pcidevs="[]" services="{}" include_in_backups="True" backup_content="False" backup_size="0" backup_path=""/>
  <QubesHVm qid="6" name="win7" label="purple" template_qid="none" netvm_qid="3" uses_default_netvm="True" dir_path="/var/lib/qubes/appvms/win7" memory="512" vcpus="2" pcidevs="[]" internal="False" installed_by_rpm="False" services="{'meminfo-writer': False}" include_in_backups="True" debug="False" default_user="user" qrexec_timeout="60" autostart="False" drive="cdrom:dom0:/home/user/win7.iso" timezone="localtime" qrexec_installed="False" guiagent_installed="False" seamless_gui_mode="False" backup_content="False" backup_size="0" backup_path=""/>
  <QubesAppVm qid="7" name="vault" label="black" template_qid="1" netvm_qid="none" uses_default_netvm="False" dir_path="/var/lib/qubes/appvms/vault" uses_default_kernel="False" kernel="4.14.0" uses_default_kernelopts="False" kernelopts="nopat quiet" mac="00:16:3E:5E:6C:99"/>
  <QubesDisposableVm qid="8" name="disp1" dispid="1" template_qid="1" label="red" firewall_conf="firewall.xml" netvm_qid="3"/>
  <QubesAdminVm qid="0" name="dom0" netid="0" label="black" template_qid="none" backup_content="True" backup_size="734003200" backup_path="dom0-home/user"/>
</QubesVmCollection>
"""


def load(data=R2_XML, **kw):
    return load_collection(data, "/var/lib/qubes", host=FixedHost(kernels=["4.19.0"]), **kw)


def test_r2_file_loads_whatever_the_element_order():
    app = load()
    assert [vm.name for vm in app] == ["dom0", "fedora", "netvm", "firewallvm", "work", "win7",
                                       "vault", "disp1"]
    work = app["work"]
    assert work.template is app["fedora"] and work.netvm is app["firewallvm"]
    assert work.is_default("netvm") and work.label.name == "blue" and work.memory == 500
    assert work.ip == "10.137.2.6" and work.mac == "00:16:3E:5E:6C:04"
    assert work.backup_timestamp == 1409000000 and work.services["cups"] is True
    assert app["firewallvm"].netvm is app["netvm"]
    assert app["vault"].netvm is None and not app["vault"].is_default("netvm")
    assert app["vault"].kernel == "4.14.0" and app["vault"].mac == "00:16:3E:5E:6C:99"
    assert app["netvm"].services["meminfo-writer"] is False  # PCI devices force it off
    assert app["win7"].drive == "cdrom:dom0:/home/user/win7.iso"
    assert app["disp1"].dispid == 1 and app.default_kernel == "4.19.0"
    assert app.dom0.backup_path == "dom0-home/user"


def test_dump_and_reload_is_stable():
    first = dump_collection(load())
    second = dump_collection(load(first))
    assert first == second
    again = load(first)
    assert again["vault"].kernel == "4.14.0" and again["vault"].netvm is None


def test_disposable_vm_saves_only_its_short_list():
    text = dump_collection(load()).decode()
    line = next(ln for ln in text.splitlines() if "QubesDisposableVm" in ln)
    assert "dir_path" not in line and 'dispid="1"' in line and "memory" not in line


@pytest.mark.parametrize("cut", [200, 1500, len(R2_XML) - 40])
def test_truncated_file_names_file_and_position(cut):
    with pytest.raises(StoreError) as err:
        load(R2_XML[:cut], source="/x/qubes.xml")
    assert "/x/qubes.xml" in str(err.value) and "line" in str(err.value)


def test_one_bad_value_warns_and_loads_the_rest():
    bad = R2_XML.replace(b'memory="500"', b'memory="lots"').replace(b'label="green"', b'label="pink"')
    app = load(bad)
    assert app["work"].memory == 400 and app["firewallvm"].label.name == "red"
    assert len(app.warnings) == 2 and any("VM 'work'" in w for w in app.warnings)


def test_strict_mode_refuses_hostile_values():
    bad = R2_XML.replace(b'name="vault"', b'name="../../etc"')
    with pytest.raises(StoreError, match=r"\.\./\.\./etc"):
        load(bad, strict=True)
    app = load(bad)  # the live store only warns and skips
    assert app.get("../../etc") is None


def test_dispvm_without_dir_path_and_absent_dom0():
    data = R2_XML.replace(b'<QubesAdminVm qid="0" name="dom0" netid="0" label="black" '
                          b'template_qid="none" backup_content="True" backup_size="734003200" '
                          b'backup_path="dom0-home/user"/>', b"")
    app = load(data)
    assert app.dom0.name == "dom0" and app.get("disp1") is not None


def test_literals_are_never_evaluated():
    evil = R2_XML.replace(b"services=\"{'meminfo-writer': True, 'cups': True}\"",
                          b"services=\"__import__('os').system('false')\"")
    app = load(evil)
    assert app["work"].services == {"meminfo-writer": True}
    assert any("services" in w for w in app.warnings)


def test_document_type_declarations_are_refused():
    evil = R2_XML.replace(b"<QubesVmCollection", b'<!DOCTYPE q [<!ENTITY a "ork">]>\n'
                          b"<QubesVmCollection", 1)
    with pytest.raises(StoreError, match="document type declaration"):
        load(evil)


def test_entries_that_cannot_be_loaded_survive_a_save():
    data = R2_XML.replace(b"</QubesVmCollection>",
                          b'<QubesFooVm qid="40" name="future"/>\n'
                          b'<QubesAppVm qid="41" name="orphan" template_qid="99"/>\n'
                          b"</QubesVmCollection>")
    app = load(data)
    assert app.get("orphan") is None and len(app.warnings) == 2
    saved = dump_collection(app)
    assert b'name="future"' in saved and b'name="orphan"' in saved
    assert app.new_qid() not in (40, 41)
