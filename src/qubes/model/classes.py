"""The VM classes of the core2 schema and their differences (QUBES-XML.md §4, §7)."""
from __future__ import annotations

import os

from qubes.model.vm import (QubesVM, check_netvm, check_services, convert_drive,
                             convert_timezone)
from qubes.props import Property, non_negative_int, to_bool

_HVM_ONLY = frozenset({"drive", "timezone", "qrexec_installed", "guiagent_installed",
                       "seamless_gui_mode"})
_KERNEL_PROPS = frozenset({"kernel", "kernelopts"})


def _netid_convert(_vm, value):
    n = non_negative_int(_vm, value)
    if n > 253:
        raise ValueError("netid must be in 0..253")
    return n


class AppVM(QubesVM):
    TYPE = "AppVM"
    XML_TAG = "QubesAppVm"
    is_appvm = True
    UNAVAILABLE = _HVM_ONLY | {"netid", "dispid"}


class TemplateVM(QubesVM):
    TYPE = "TemplateVM"
    XML_TAG = "QubesTemplateVm"
    LOAD_ORDER = 50
    DIR_SUBDIR = "vm-templates"
    DEFAULT_LABEL = "black"
    TEMPLATE_TYPE = None
    is_template = True
    UNAVAILABLE = _HVM_ONLY | {"netid", "dispid", "template"}

    @property
    def rootcow_img(self) -> str:
        return os.path.join(self.dir_path, "root-cow.img")


class NetVM(QubesVM):
    TYPE = "NetVM"
    XML_TAG = "QubesNetVm"
    LOAD_ORDER = 70
    DIR_SUBDIR = "servicevms"
    DEFAULT_MEMORY = 300
    HAS_NETVM = False
    provides_network = True
    UNAVAILABLE = _HVM_ONLY | {"dispid", "netvm"}

    netid = Property(default=0, convert=_netid_convert, order=30)

    @property
    def gateway_address(self) -> str:
        return f"10.137.{self.netid}.1"

    @property
    def secondary_dns_address(self) -> str:
        return f"10.137.{self.netid}.254"

    @property
    def netprefix(self) -> str:
        return f"10.137.{self.netid}."


class ProxyVM(NetVM):
    TYPE = "ProxyVM"
    XML_TAG = "QubesProxyVm"
    HAS_NETVM = True
    is_proxyvm = True
    UNAVAILABLE = _HVM_ONLY | {"dispid"}

    netvm = Property(default=lambda vm: vm.collection.default_fw_netvm,
                     convert=check_netvm, order=20)


class AdminVM(NetVM):
    """dom0: qid 0, name dom0, netid 0, always running."""

    TYPE = "AdminVM"
    XML_TAG = "QubesAdminVm"
    LOAD_ORDER = 10
    DEFAULT_LABEL = "black"
    TEMPLATE_TYPE = None
    is_adminvm = True
    UNAVAILABLE = _HVM_ONLY | {"dispid", "netvm", "template", "name"}

    def __init__(self, collection):
        super().__init__(collection, 0, "dom0")

    @property
    def dir_path(self):  # not a real directory
        return os.path.join(self.collection.base_dir, "servicevms", "dom0")

    @property
    def ip(self) -> str:
        return "10.137.0.2"

    @property
    def updateable(self) -> bool:
        return True


class HVM(QubesVM):
    TYPE = "HVM"
    XML_TAG = "QubesHVm"
    DEFAULT_MEMORY = 512
    TEMPLATE_TYPE = "TemplateHVM"
    HAS_KERNEL = False
    is_appvm = True
    is_hvm = True
    UNAVAILABLE = _KERNEL_PROPS | {"netid", "dispid", "maxmem"}

    drive = Property(default=None, convert=convert_drive)
    timezone = Property(default="localtime", convert=convert_timezone)
    qrexec_installed = Property(default=False, convert=to_bool)
    guiagent_installed = Property(default=False, convert=to_bool)
    seamless_gui_mode = Property(default=False, convert=to_bool)
    services = Property(default=lambda vm: {"meminfo-writer": False},
                        convert=check_services)

    def default_maxmem(self):
        return self.memory

    def default_mac(self) -> str:
        if self.template is not None:
            return self.template.mac
        return super().default_mac()


class TemplateHVM(HVM):
    TYPE = "TemplateHVM"
    XML_TAG = "QubesTemplateHVm"
    LOAD_ORDER = 50
    DIR_SUBDIR = "vm-templates"
    DEFAULT_LABEL = "black"
    TEMPLATE_TYPE = None
    is_template = True
    is_appvm = False
    UNAVAILABLE = _KERNEL_PROPS | {"netid", "dispid", "maxmem", "template"}


class DisposableVM(QubesVM):
    TYPE = "DisposableVM"
    XML_TAG = "QubesDisposableVm"
    LOAD_ORDER = 120
    is_disposablevm = True
    UNAVAILABLE = _HVM_ONLY | {"netid"}

    dispid = Property(default=0, convert=non_negative_int)
    include_in_backups = Property(default=False, read_only=True)

    @property
    def dir_path(self):
        """Its files live beside the AppVMs' while it runs (never saved in qubes.xml)."""
        return os.path.join(self.collection.base_dir, self.DIR_SUBDIR, self.name)

    @property
    def ip(self):
        if self.netvm is None:
            return None
        return f"10.138.{self.netvm.netid}.{self.dispid % 254 + 1}"


VM_CLASSES: dict[str, type[QubesVM]] = {
    cls.TYPE: cls
    for cls in (AdminVM, TemplateVM, TemplateHVM, NetVM, ProxyVM, AppVM, HVM, DisposableVM)
}
BY_XML_TAG = {cls.XML_TAG: cls for cls in VM_CLASSES.values()}
BY_XML_TAG["QubesDom0NetVm"] = AdminVM  # element name before 2013-11-29


def vm_class(untrusted_type: str) -> type[QubesVM]:
    cls = VM_CLASSES.get(untrusted_type)
    if cls is None:
        raise ValueError(f"unknown VM class '{untrusted_type}'; "
                         f"known: {', '.join(sorted(VM_CLASSES))}")
    return cls
