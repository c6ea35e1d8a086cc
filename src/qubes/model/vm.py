"""QubesVM: the properties every VM class shares (QUBES-XML.md §6).

Class differences are class attributes and a few overrides in
`model/classes.py`; values reach the VM as typed values or strings and
are validated here at set time.
"""
from __future__ import annotations

import ast
import os
import re
import uuid as uuidlib

from qubes.errors import PropertyNotAvailableError
from qubes.model.labels import get_label
from qubes.props import (Property, PropertyHolder, non_negative_int, positive_int,
                         to_bool, to_str)
from qubes.util.names import validate_vm_name

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_BDF = re.compile(r"[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
_KERNEL = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_SERVICE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_USER = re.compile(r"[a-z_][a-z0-9_-]*")
_DRIVE = re.compile(r"(hd|cdrom):[A-Za-z][A-Za-z0-9_-]*:/.+")


# --- converters that need the VM -------------------------------------------

def bounded_str(limit: int):
    def convert(vm, value) -> str:
        text = to_str(vm, value)
        if len(text) > limit:
            raise ValueError(f"at most {limit} characters are allowed ({len(text)} given)")
        return text
    return convert


def _convert_name(vm, value) -> str:
    name = validate_vm_name(value)
    other = vm.collection.get(name) if vm.collection is not None else None
    if other is not None and other is not vm:
        raise ValueError(f"a VM with the name '{name}' already exists")
    return name


def _convert_uuid(_vm, value) -> str:
    return str(uuidlib.UUID(str(value)))


def _resolve(vm, value):
    """A VM object for a VM, a name or a qid; None for None/'none'."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    if isinstance(value, QubesVM):
        target = value
    else:
        target = vm.collection.get(value)
        if target is None:
            raise ValueError(f"no such VM: '{value}'")
    return target


def _convert_template(vm, value):
    target = _resolve(vm, value)
    if target is None:
        raise ValueError("a VM based on a template cannot be made standalone")
    if vm.TEMPLATE_TYPE is None:
        raise ValueError(f"a {vm.TYPE} cannot be based on a template")
    if vm.template is None:
        raise ValueError("Cannot set template for standalone VM")
    if target.TYPE != vm.TEMPLATE_TYPE:
        raise ValueError(f"'{target.name}' is a {target.TYPE}, a {vm.TYPE} needs a {vm.TEMPLATE_TYPE}")
    return target


def check_netvm(vm, value):
    target = _resolve(vm, value)
    if not vm.HAS_NETVM:
        raise PropertyNotAvailableError("netvm")
    if target is None:
        return None
    if not target.provides_network:
        raise ValueError(f"VM '{target.name}' is not a NetVM")
    probe = target
    while probe is not None:
        if probe is vm:
            raise ValueError(f"'{target.name}' would make a loop of network VMs")
        probe = probe.netvm
    return target


def _convert_memory(what):
    base = positive_int(what)

    def convert(vm, value):
        mb = base(vm, value)
        host = vm.collection.host if vm.collection is not None else None
        if host is not None and mb > host.memory_total_mb:
            raise ValueError(f"This host has only {host.memory_total_mb} MB of RAM")
        return mb
    return convert


def _convert_vcpus(vm, value):
    n = positive_int("vcpus")(vm, value)
    host = vm.collection.host if vm.collection is not None else None
    if host is not None and n > host.cpus:
        raise ValueError(f"This host has only {host.cpus} cpus")
    return n


def check_kernel_name(untrusted) -> str | None:
    """A kernel version that is safe as a directory name, or None."""
    if untrusted is None or (isinstance(untrusted, str) and untrusted.lower() == "none"):
        return None
    if not isinstance(untrusted, str) or not _KERNEL.fullmatch(untrusted) or ".." in untrusted:
        raise ValueError(f"'{untrusted}' is not a valid kernel version")
    return untrusted


def _convert_kernel(vm, value):
    version = check_kernel_name(value)
    host = vm.collection.host if vm.collection is not None else None
    if version is not None and host is not None and not host.kernel_installed(version):
        raise ValueError(f"Kernel version {version} not installed")
    return version


def _convert_mac(_vm, value):
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise ValueError(f"'{value}' is not a MAC address of the form XX:XX:XX:XX:XX:XX (hex digits)")
    return value.upper()


MAX_LITERAL = 16384


def parse_literal(untrusted: str, what: str):
    """A Python literal from qubes.xml or the command line; never `eval`, bounded cost."""
    if len(untrusted) > MAX_LITERAL:
        raise ValueError(f"{what} is longer than {MAX_LITERAL} characters")
    try:
        return ast.literal_eval(untrusted)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        shown = untrusted if len(untrusted) <= 60 else untrusted[:57] + "..."
        raise ValueError(f"'{shown}' is not {what}") from None


def check_pcidevs(_vm, value) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if "[" in text:
            value = parse_literal(text, "a list of PCI devices")
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"'{value}' is not a list of PCI devices")
    for dev in value:
        if not isinstance(dev, str) or not _BDF.fullmatch(dev):
            raise ValueError(f"'{dev}' is not a PCI device of the form BB:DD.F")
    return [d.lower() for d in value]


def check_services(_vm, value) -> dict[str, bool]:
    if isinstance(value, str):
        value = parse_literal(value, "a dictionary of services")
    if not isinstance(value, dict):
        raise ValueError("services must be a dictionary of name: True/False")
    for name, on in value.items():
        if not isinstance(name, str) or not _SERVICE.fullmatch(name) or not isinstance(on, bool):
            raise ValueError(f"invalid service entry {name!r}: {on!r}")
    return dict(value)


def _convert_user(_vm, value):
    if not isinstance(value, str) or not _USER.fullmatch(value) or len(value) > 32:
        raise ValueError(f"'{value}' is not a valid user name")
    return value


def convert_drive(_vm, value):
    if value is None or value in ("", "none", "None"):
        return None
    if not isinstance(value, str) or not _DRIVE.fullmatch(value):
        raise ValueError(f"'{value}' is not of the form hd:|cdrom: VM : /absolute/path")
    return value


def convert_timezone(_vm, value):
    text = str(value).strip()
    if text == "localtime" or re.fullmatch(r"-?[0-9]+", text):
        return text
    raise ValueError(f"'{value}' is not 'localtime' or an offset in seconds")


def _optional_timestamp(_vm, value):
    if value in (None, "", "None", "none"):
        return None
    return non_negative_int(_vm, value)


def _in_dir(filename):
    return lambda vm: os.path.join(vm.dir_path, filename)


class QubesVM(PropertyHolder):
    """Common base; concrete classes live in `model/classes.py`."""

    TYPE = "VM"
    XML_TAG = ""
    LOAD_ORDER = 100
    DIR_SUBDIR = "appvms"
    DEFAULT_LABEL = "red"
    DEFAULT_MEMORY = 400
    TEMPLATE_TYPE: str | None = "TemplateVM"
    HAS_NETVM = True
    HAS_KERNEL = True
    is_template = False
    provides_network = False
    is_proxyvm = False
    is_appvm = False
    is_disposablevm = False
    is_adminvm = False
    is_hvm = False
    UNAVAILABLE: frozenset[str] = frozenset()

    qid = Property(read_only=True, order=0)
    uuid = Property(convert=_convert_uuid, order=0)
    name = Property(convert=_convert_name, order=1)
    dir_path = Property(default=lambda vm: os.path.join(
        vm.collection.base_dir, vm.DIR_SUBDIR, vm.name), convert=to_str, order=2)
    conf_file = Property(default=lambda vm: os.path.join(vm.dir_path, vm.name + ".conf"),
                         convert=to_str, order=3)
    root_img = Property(default=lambda vm: vm.template.root_img if vm.template is not None
                        else os.path.join(vm.dir_path, "root.img"), convert=to_str, order=10)
    private_img = Property(default=_in_dir("private.img"), convert=to_str, order=10)
    volatile_img = Property(default=_in_dir("volatile.img"), convert=to_str, order=10)
    template = Property(default=None, convert=_convert_template, order=10)
    netvm = Property(default=lambda vm: vm.collection.default_netvm if vm.HAS_NETVM else None,
                     convert=check_netvm, order=20)
    label = Property(default=lambda vm: get_label(vm.DEFAULT_LABEL),
                     convert=lambda vm, v: get_label(v), order=20)
    memory = Property(default=lambda vm: vm.DEFAULT_MEMORY, convert=_convert_memory("memory"), order=20)
    maxmem = Property(default=lambda vm: vm.default_maxmem(), convert=_convert_memory("maxmem"), order=25)
    vcpus = Property(default=lambda vm: vm.collection.host.cpus if vm.collection.host else None,
                     convert=_convert_vcpus, order=25)
    pcidevs = Property(default=lambda vm: [], convert=check_pcidevs, order=25)
    internal = Property(default=False, convert=to_bool)
    installed_by_rpm = Property(default=False, convert=to_bool, order=10)
    kernel = Property(default=lambda vm: vm.collection.default_kernel, convert=_convert_kernel, order=31)
    kernelopts = Property(default=lambda vm: "nopat iommu=soft swiotlb=4096" if vm.pcidevs else "nopat",
                          convert=bounded_str(1024), order=31)
    mac = Property(default=lambda vm: vm.default_mac(), convert=_convert_mac)
    services = Property(default=lambda vm: {}, convert=check_services)
    include_in_backups = Property(default=True, convert=to_bool)
    debug = Property(default=False, convert=to_bool)
    default_user = Property(default=lambda vm: vm.template.default_user if vm.template is not None
                            else "user", convert=_convert_user)
    qrexec_timeout = Property(default=60, convert=positive_int("qrexec_timeout"))
    autostart = Property(default=False, convert=to_bool)
    backup_content = Property(default=False, convert=to_bool)
    backup_size = Property(default=0, convert=non_negative_int)
    backup_path = Property(default="", convert=to_str)
    backup_timestamp = Property(default=None, convert=_optional_timestamp)

    def __init__(self, collection, qid: int, name: str):
        super().__init__()
        self.collection = collection
        self.set_raw("qid", qid)
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.TYPE} {self.qid} {self.name}>"

    # --- availability ---------------------------------------------------------
    def has_property(self, name: str) -> bool:
        return self.get_property(name) is not None and name not in self.UNAVAILABLE

    def set_prop(self, name: str, untrusted_value) -> None:
        """Set a property by name, refusing ones this class does not have."""
        if not self.has_property(name):
            raise PropertyNotAvailableError(name)
        setattr(self, name, untrusted_value)

    def reset_prop(self, name: str) -> None:
        if not self.has_property(name):
            raise PropertyNotAvailableError(name)
        delattr(self, name)

    # --- derived values (never saved) -----------------------------------------
    @property
    def updateable(self) -> bool:
        return self.template is None

    def default_maxmem(self):
        host = self.collection.host if self.collection is not None else None
        if host is None:
            return None
        return min(host.memory_total_mb // 2, 10 * self.memory)

    def default_mac(self) -> str:
        return "00:16:3E:5E:6C:%02X" % (self.qid % 256)

    @property
    def ip(self) -> str | None:
        if self.netvm is None:
            return None
        return f"10.137.{self.netvm.netid}.{self.qid % 253 + 2}"

    @property
    def gateway(self) -> str | None:
        return None if self.netvm is None else self.netvm.gateway_address

    @property
    def secondary_dns(self) -> str | None:
        return None if self.netvm is None else self.netvm.secondary_dns_address

    netmask = "255.255.255.0"

    @property
    def firewall_conf(self) -> str:
        return os.path.join(self.dir_path, "firewall.xml")

    @property
    def icon_path(self) -> str:
        return os.path.join(self.dir_path, "icon.png")

    @property
    def kernels_dir(self) -> str | None:
        if self.kernel is None:
            return os.path.join(self.dir_path, "kernels")
        return os.path.join(self.collection.base_dir, "vm-kernels", self.kernel)

