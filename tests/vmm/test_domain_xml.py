"""Domain XML from a DomainSpec (pure; VMM.md §4, §11.3)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from qubes.vmm import domain_xml
from qubes.vmm.base import CdromSpec, DiskSpec, DomainSpec, NicSpec


def spec(**kw) -> DomainSpec:
    base = dict(name="work", uuid="6f1c8c9e-4c1a-4a57-9d3e-3b8f0d2f4b11", owner="/var/lib/qubes",
                memory_mb=400, maxmem_mb=4000, vcpus=2,
                disks=(DiskSpec("/v/root.qcow2", "vda", "qcow2"), DiskSpec("/v/private.img", "vdb")),
                console_log="/v/console.log", agent_socket="/run/x.agent",
                kernel="/k/vmlinuz", initramfs="/k/initramfs", cmdline="console=ttyS0 qubes.name=work")
    base.update(kw)
    return DomainSpec(**base)


def test_a_pv_style_vm_boots_its_kernel_with_acpi_and_logs_its_console():
    root = ET.fromstring(domain_xml.render(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.findtext("os/cmdline") == "console=ttyS0 qubes.name=work"
    assert root.find("features/acpi") is not None  # without it there is no power button
    assert root.findtext("on_poweroff") == "destroy"
    assert [(d.find("source").get("file"), d.find("driver").get("type"))
            for d in root.iter("disk")] == [("/v/root.qcow2", "qcow2"), ("/v/private.img", "raw")]
    serials = root.findall("devices/serial")
    assert serials[0].find("source").get("path") == "/v/console.log"
    assert serials[1].get("type") == "unix"
    assert root.findtext("memory") == "400"


def test_an_hvm_boots_from_its_disk_and_without_netvm_has_no_interface():
    """B91: netvm none means no <interface> at all."""
    root = ET.fromstring(domain_xml.render(spec(kernel=None, initramfs=None, cmdline="")))
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("devices/interface") is None


def test_interfaces_carry_the_spec_mac_on_the_netvm_network():
    xml = domain_xml.render(spec(nics=(NicSpec("qubes-ab-net", "00:16:3E:5E:6C:05"),)))
    nic = ET.fromstring(xml).find("devices/interface")
    assert nic.get("type") == "network"
    assert nic.find("source").get("network") == "qubes-ab-net"
    assert nic.find("mac").get("address") == "00:16:3e:5e:6c:05"


def test_the_owner_is_recorded_and_read_back():
    xml = domain_xml.render(spec(owner="/srv/collection-a"))
    assert domain_xml.owner_of(xml) == "/srv/collection-a"
    assert domain_xml.owner_of("<domain><name>x</name></domain>") is None
    assert domain_xml.owner_of("not xml") is None


def test_names_and_paths_are_escaped():
    xml = domain_xml.render(spec(cmdline="a<b & c", console_log="/v/it's.log"))
    root = ET.fromstring(xml)
    assert root.findtext("os/cmdline") == "a<b & c"


def test_a_cdrom_is_a_readonly_ide_disk_booted_before_the_hard_disk():
    """B90: the machine type is i440FX ('pc'), whose built-in bus is IDE (no SATA)."""
    root = ET.fromstring(domain_xml.render(spec(kernel=None, initramfs=None, cmdline="",
                                                cdrom=CdromSpec("/isos/it's & <x>.iso"))))
    cds = [d for d in root.iter("disk") if d.get("device") == "cdrom"]
    assert len(cds) == 1
    cd = cds[0]
    assert cd.get("type") == "file"
    assert cd.find("source").get("file") == "/isos/it's & <x>.iso"
    assert cd.find("driver").get("type") == "raw"
    assert (cd.find("target").get("dev"), cd.find("target").get("bus")) == ("hdc", "ide")
    assert root.find("os/type").get("machine") == "pc"
    assert cd.find("readonly") is not None
    # The user's file: libvirt must not chown it (it would not give a read-only one back).
    assert cd.find("source/seclabel").attrib == {"model": "dac", "relabel": "no"}
    assert [b.get("dev") for b in root.findall("os/boot")] == ["cdrom", "hd"]
    # The VM's own disks are unchanged beside it.
    assert [d.find("target").get("dev") for d in root.iter("disk")
            if d.get("device") == "disk"] == ["vda", "vdb"]


def test_a_block_device_cdrom_uses_a_block_source():
    root = ET.fromstring(domain_xml.render(spec(kernel=None, initramfs=None, cmdline="",
                                                cdrom=CdromSpec("/dev/sr0", block=True))))
    cd = next(d for d in root.iter("disk") if d.get("device") == "cdrom")
    assert cd.get("type") == "block"
    assert cd.find("source").get("dev") == "/dev/sr0"
    assert cd.find("source").get("file") is None
    assert cd.find("readonly") is not None


def test_without_a_cdrom_there_is_none_and_only_the_disk_boots():
    root = ET.fromstring(domain_xml.render(spec(kernel=None, initramfs=None, cmdline="")))
    assert [d.get("device") for d in root.iter("disk")] == ["disk", "disk"]
    assert [b.get("dev") for b in root.findall("os/boot")] == ["hd"]


def test_every_machine_type_has_a_cdrom_bus():
    assert domain_xml.MACHINE in domain_xml.CDROM_TARGET
    assert domain_xml.CDROM_TARGET["q35"][1] == "sata"  # Q35 has no IDE
