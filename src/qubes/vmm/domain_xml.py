"""libvirt domain XML from a DomainSpec (VMM.md §4, §11.3); pure, no libvirt import.

Why these choices:
- `<acpi/>`: without it the guest cannot power the domain off, and the ACPI
  power button that a clean shutdown presses does not exist.
- on_poweroff/reboot/crash = destroy: a stopped VM is gone from the running
  list at once; restarting is the core's decision, not QEMU's.
- serial 0 is written to console.log (the ready line lands there); serial 1
  is the command channel to the guest, a unix socket QEMU listens on.
- a CD-ROM (an HVM's installer, B90) is read-only, on the bus the machine
  type has built in, and boots before the disk, as an installer needs; the
  disk (tried next) boots alone at the next start without one.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from qubes.vmm.base import CdromSpec, DomainSpec, NicSpec

NAMESPACE = "https://qubes-core.invalid/libvirt/1"
MACHINE = "pc"
# Where a CD-ROM goes on each machine type: i440FX ('pc') has IDE and no SATA
# controller; Q35 has SATA (AHCI) and no IDE.
CDROM_TARGET = {"pc": ("hdc", "ide"), "q35": ("sda", "sata")}


def _sub(parent, tag: str, text: str | None = None, **attrs) -> ET.Element:
    node = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        node.text = text
    return node


def nic_xml(nic: NicSpec) -> str:
    return ET.tostring(_nic(None, nic), encoding="unicode")


def network_xml(network: str, bridge: str) -> str:
    """A libvirt network over an existing bridge: no DHCP, no NAT, no host address."""
    net = ET.Element("network")
    _sub(net, "name", network)
    _sub(net, "forward", mode="bridge")
    _sub(net, "bridge", name=bridge)
    return ET.tostring(net, encoding="unicode")


def bridge_of(network_xml_text: str) -> str | None:
    """The bridge a network's XML names (a network of ours: see network_xml)."""
    node = ET.fromstring(network_xml_text).find("bridge")
    return None if node is None else node.get("name")


def _nic(parent, nic: NicSpec) -> ET.Element:
    node = ET.Element("interface", type="network") if parent is None \
        else _sub(parent, "interface", type_="network")
    _sub(node, "source", network=nic.network)
    _sub(node, "mac", address=nic.mac.lower())
    _sub(node, "model", type_="virtio")
    return node


def _cdrom(devices, cdrom: CdromSpec) -> ET.Element:
    node = _sub(devices, "disk", type_="block" if cdrom.block else "file", device="cdrom")
    _sub(node, "driver", name="qemu", type_="raw")
    source = _sub(node, "source", **{"dev" if cdrom.block else "file": cdrom.path})
    # The image is the user's, not ours: libvirt would chown it to QEMU's user and,
    # the disk being read-only, never give it back.
    _sub(source, "seclabel", model="dac", relabel="no")
    dev, bus = CDROM_TARGET[MACHINE]
    _sub(node, "target", dev=dev, bus=bus)
    _sub(node, "readonly")
    return node


def render(spec: DomainSpec) -> str:
    dom = ET.Element("domain", type=spec.accel)
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", spec.uuid)
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{NAMESPACE}}}vm", owner=spec.owner)
    # No balloon driver in the guest yet: the VM gets `memory`, maxmem waits for one.
    _sub(dom, "memory", str(spec.memory_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_ = _sub(dom, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=MACHINE)
    if spec.kernel is not None:
        _sub(os_, "kernel", spec.kernel)
        if spec.initramfs is not None:
            _sub(os_, "initrd", spec.initramfs)
        _sub(os_, "cmdline", spec.cmdline)
    else:
        if spec.cdrom is not None:
            _sub(os_, "boot", dev="cdrom")
        _sub(os_, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    devices = _sub(dom, "devices")
    for disk in spec.disks:
        node = _sub(devices, "disk", type_="file", device="disk")
        _sub(node, "driver", name="qemu", type_=disk.fmt)
        _sub(node, "source", file=disk.path)
        _sub(node, "target", dev=disk.target, bus="virtio")
        if disk.readonly:
            _sub(node, "readonly")
    if spec.cdrom is not None:
        _cdrom(devices, spec.cdrom)
    for nic in spec.nics:
        _nic(devices, nic)
    serial = _sub(devices, "serial", type_="file")
    _sub(serial, "source", path=spec.console_log)
    _sub(serial, "target", port="0")
    agent = _sub(devices, "serial", type_="unix")
    _sub(agent, "source", mode="bind", path=spec.agent_socket)
    _sub(agent, "target", port="1")
    _sub(devices, "memballoon", model="none")
    ET.register_namespace("qubes", NAMESPACE)
    return ET.tostring(dom, encoding="unicode")


def owner_of(domain_xml: str) -> str | None:
    """The owner recorded in a domain's XML, or None for domains that are not ours."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    node = root.find(f"metadata/{{{NAMESPACE}}}vm")
    return None if node is None else node.get("owner")
