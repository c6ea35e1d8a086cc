"""core2 (R2/R3) qubes.xml <-> model (QUBES-XML.md §3-§8)."""
from __future__ import annotations

import os

from lxml import etree

from qubes.errors import QubesError, StoreError
from qubes.model.classes import BY_XML_TAG, VM_CLASSES, AdminVM
from qubes.model.collection import GLOBAL_VM_REFS, VMCollection
from qubes.model.vm import QubesVM, check_kernel_name

ROOT_TAG = "QubesVmCollection"
ROOT_ATTRS = GLOBAL_VM_REFS + ("default_kernel",)
PATH_ATTRS = ("conf_file", "root_img", "private_img", "volatile_img")
_BOOLS = ("internal", "installed_by_rpm", "include_in_backups", "debug", "autostart",
          "backup_content", "qrexec_installed", "guiagent_installed", "seamless_gui_mode")
_SIMPLE = ("label", "memory", "maxmem", "vcpus", "pcidevs", "services", "default_user",
           "qrexec_timeout", "mac", "backup_size", "backup_path", "backup_timestamp",
           "netid", "dispid", "drive", "timezone", "uuid") + _BOOLS
DISPVM_ATTRS = ("qid", "name", "dispid", "template_qid", "label", "firewall_conf", "netvm_qid")
MAX_XML_SIZE = 16 * 1024 * 1024


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           remove_comments=True, load_dtd=False)


def _is_none(value: str | None) -> bool:
    return value is None or value.strip().lower() == "none"


def _qid(value: str | None) -> int | None:
    if _is_none(value):
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"'{value}' is not a qid")
    return int(text)


# --- loading ----------------------------------------------------------------

def parse_document(data: bytes, source: str):
    """The root element, or StoreError naming file, line and column (B60)."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise StoreError(f"{source}: a document type declaration is not allowed in qubes.xml",
                         source)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line, col = exc.position if exc.position else (0, 0)
        raise StoreError(f"{source} is damaged: line {line}, column {col}: {exc.msg}",
                         source) from None
    if root.tag != ROOT_TAG:
        raise StoreError(f"{source}: root element is <{root.tag}>, expected <{ROOT_TAG}>", source)
    return root


def load_collection(data: bytes, base_dir: str, *, host=None, source: str = "qubes.xml",
                    strict: bool = False) -> VMCollection:
    """Build the collection from core2 XML.

    A bad value of one VM warns and falls back to the default (B61); with
    `strict` (untrusted input such as a backup) it raises instead.
    """
    root = parse_document(data, source)
    app = VMCollection(base_dir, host)
    loader = _Loader(app, source, strict)
    loader.load(root)
    return app


class _Loader:
    def __init__(self, app: VMCollection, source: str, strict: bool):
        self.app = app
        self.source = source
        self.strict = strict

    def warn(self, message: str, fallback: str = "") -> None:
        """`fallback` says what happens instead; strict loading refuses, so it is left out."""
        if self.strict:
            raise StoreError(f"{self.source}: {message}", self.source)
        self.app.warnings.append(f"{self.source}: {message}{fallback}")

    def load(self, root) -> None:
        elements = []
        for cls in sorted(set(BY_XML_TAG.values()), key=lambda c: c.LOAD_ORDER):
            tags = [t for t, c in BY_XML_TAG.items() if c is cls]
            found = [el for el in root if el.tag in tags]
            found.sort(key=lambda el: not _is_none(el.get("template_qid")))
            elements.extend((cls, el) for el in found)
        known = set(BY_XML_TAG)
        for el in root:
            if isinstance(el.tag, str) and el.tag not in known:
                self.app.warnings.append(f"{self.source}: unknown element <{el.tag}> ignored "
                                         "(kept in the file unchanged)")
                el.tail = None
                self.app.preserved.append((None, None, etree.tostring(el)))
        loaded = []
        for cls, el in elements:
            vm = self._construct(cls, el)
            if vm is not None:
                loaded.append((vm, el))
        self.app.ensure_dom0()
        self._globals(root)
        for vm, el in loaded:
            self._network(vm, el)
        self._clockvm(root)

    def _construct(self, cls, el) -> QubesVM | None:
        try:
            if cls is AdminVM:
                if self.app.get(0) is not None:
                    raise ValueError("a second dom0 element")
                vm = AdminVM(self.app)
            else:
                qid = _qid(el.get("qid"))
                if qid is None or not 0 < qid < 254:
                    raise ValueError(f"invalid qid '{el.get('qid')}'")
                vm = cls(self.app, qid, el.get("name"))
            self._template(vm, el)
            self.app.insert(vm)
        except (ValueError, QubesError) as exc:
            what = f"VM element <{el.tag} name='{el.get('name')}'> not loaded"
            if self.strict and cls.is_disposablevm:  # never backed up: nothing lost (B44)
                self.app.warnings.append(f"{self.source}: {what} (a DisposableVM carries no "
                                         f"data): {exc}")
                return None
            self.warn(f"{what} (kept in the file unchanged): {exc}")
            try:
                qid = _qid(el.get("qid"))
            except ValueError:
                qid = None
            el.tail = None
            self.app.preserved.append((qid, el.get("name"), etree.tostring(el)))
            return None
        self._attributes(vm, el)
        return vm

    def _template(self, vm, el) -> None:
        tqid = _qid(el.get("template_qid"))
        if tqid is None:
            if vm.is_disposablevm:
                raise ValueError("a DisposableVM without template")
            return
        if vm.TEMPLATE_TYPE is None:
            raise ValueError("a template cannot have a template")
        template = self.app.get(tqid)
        if template is None or template.TYPE != vm.TEMPLATE_TYPE:
            raise ValueError(f"template qid {tqid} is not a loaded {vm.TEMPLATE_TYPE}")
        vm.set_raw("template", template)

    def _set(self, vm, prop: str, raw: str, *, keep_default: bool = False) -> None:
        """Set a loaded value; with `keep_default` a value equal to the default stays default."""
        try:
            value = vm.get_property(prop).check(vm, raw)
        except QubesError as exc:
            self.warn(f"VM '{vm.name}': {exc}", "; using the default")
            return
        if not (keep_default and value == getattr(vm, prop)):
            vm.set_raw(prop, value)

    def _attributes(self, vm, el) -> None:
        attrs = el.attrib
        if "dir_path" in attrs and not vm.is_disposablevm and not vm.is_adminvm:
            self._set(vm, "dir_path", attrs["dir_path"], keep_default=True)
        for name in PATH_ATTRS:
            raw = attrs.get(name)
            if name == "root_img" and vm.template is not None:
                continue  # a template-based VM always uses its template's root
            if not _is_none(raw) and not vm.is_adminvm and not vm.is_disposablevm:
                self._set(vm, name, os.path.join(vm.dir_path, raw), keep_default=True)
        for name in _SIMPLE:
            raw = attrs.get(name)
            if raw is None or not vm.has_property(name):
                continue
            if _is_none(raw) and name not in ("drive", "backup_timestamp"):
                continue
            if name == "timezone" and raw == "":
                continue
            self._set(vm, name, raw)
        self._kernel(vm, attrs)
        if vm.pcidevs:
            vm.services = {**vm.services, "meminfo-writer": False}
        elif "meminfo-writer" not in vm.services and not vm.is_disposablevm:
            vm.set_raw("services", {**vm.services, "meminfo-writer": True})

    def _kernel(self, vm, attrs) -> None:
        if not vm.HAS_KERNEL:
            return
        if attrs.get("uses_default_kernel", "True").lower() == "false" and "kernel" in attrs:
            try:
                vm.set_raw("kernel", check_kernel_name(attrs["kernel"]))
            except ValueError as exc:
                self.warn(f"VM '{vm.name}': {exc}", "; using the default kernel")
        if attrs.get("uses_default_kernelopts", "True").lower() == "false" and "kernelopts" in attrs:
            self._set(vm, "kernelopts", attrs["kernelopts"])

    def _globals(self, root) -> None:
        for name in GLOBAL_VM_REFS:
            raw = root.get(name)
            try:
                qid = _qid(raw)
            except ValueError:
                self.warn(f"root attribute {name}='{raw}' is not a qid", "; unset")
                continue
            if qid is not None:
                vm = self.app.get(qid)
                if vm is None:
                    self.warn(f"root attribute {name} names qid {qid}, which does not exist",
                              "; unset")
                    continue
                try:
                    self.app.set_global(name, vm)
                except QubesError as exc:
                    self.warn(f"{exc}", "; unset")
        kernel = root.get("default_kernel")
        if not _is_none(kernel):
            try:
                self.app.default_kernel = check_kernel_name(kernel)
            except ValueError as exc:
                self.warn(f"default_kernel: {exc}", "; unset")

    def _network(self, vm, el) -> None:
        if not vm.HAS_NETVM:
            return
        uses_default = el.get("uses_default_netvm")
        if vm.is_proxyvm and uses_default is None and "netvm_qid" in el.attrib:
            uses_default = "False"
        if uses_default is None or uses_default.lower() != "false":
            return
        try:
            qid = _qid(el.get("netvm_qid"))
            target = None if qid is None else self.app.get(qid)
            vm.set_raw("netvm", vm.get_property("netvm").check(vm, target))
        except (ValueError, QubesError) as exc:
            self.warn(f"VM '{vm.name}': netvm: {exc}", "; no network")
            vm.set_raw("netvm", None)

    def _clockvm(self, root) -> None:
        if "clockvm" not in root.attrib:
            probe = self.app.default_netvm
            while probe is not None and probe.netvm is not None:
                probe = probe.netvm
            self.app.clockvm = probe
        clock = self.app.clockvm
        if clock is not None and clock.services.get("ntpd") is not False:
            clock.set_raw("services", {**clock.services, "ntpd": False})


# --- saving -----------------------------------------------------------------

def _ref(vm) -> str:
    return "none" if vm is None else str(vm.qid)


def _rel(vm, path: str) -> str:
    prefix = vm.dir_path.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def vm_attributes(vm: QubesVM) -> dict[str, str]:
    """The attributes R2 writes for one VM, as strings."""
    if vm.is_disposablevm:
        full = _common_attributes(vm)
        return {k: full[k] for k in DISPVM_ATTRS if k in full}
    return _common_attributes(vm)


def _common_attributes(vm: QubesVM) -> dict[str, str]:
    a: dict[str, str] = {"qid": str(vm.qid), "name": vm.name}
    if vm.uuid is not None:
        a["uuid"] = vm.uuid
    a["label"] = vm.label.name
    a["template_qid"] = _ref(vm.template)
    if vm.HAS_NETVM:
        a["netvm_qid"] = _ref(vm.netvm)
        if not vm.provides_network and not vm.is_disposablevm:
            a["uses_default_netvm"] = str(vm.is_default("netvm"))
    if vm.provides_network:
        a["netid"] = str(vm.netid)
    if vm.is_disposablevm:
        a["dispid"] = str(vm.dispid)
        a["firewall_conf"] = "firewall.xml"
        return a
    a["dir_path"] = vm.dir_path
    for name in PATH_ATTRS:
        a[name] = _rel(vm, getattr(vm, name))
    a["memory"] = str(vm.memory)
    if vm.has_property("maxmem") and not vm.is_default("maxmem"):
        a["maxmem"] = str(vm.maxmem)
    if not vm.is_default("vcpus"):
        a["vcpus"] = str(vm.vcpus)
    a["pcidevs"] = repr(vm.pcidevs)
    if vm.HAS_KERNEL:
        a["uses_default_kernel"] = str(vm.is_default("kernel"))
        a["kernel"] = str(vm.kernel)
        a["uses_default_kernelopts"] = str(vm.is_default("kernelopts"))
        a["kernelopts"] = vm.kernelopts
    if not vm.is_default("mac"):
        a["mac"] = vm.mac
    a["services"] = repr(vm.services)
    for name in ("internal", "installed_by_rpm", "include_in_backups", "debug", "default_user",
                 "qrexec_timeout", "autostart"):
        a[name] = str(getattr(vm, name))
    if vm.has_property("drive"):
        a["drive"] = str(vm.drive)
        for name in ("timezone", "qrexec_installed", "guiagent_installed", "seamless_gui_mode"):
            a[name] = str(getattr(vm, name))
    a["backup_content"] = str(vm.backup_content)
    a["backup_size"] = str(vm.backup_size)
    a["backup_path"] = vm.backup_path
    if vm.backup_timestamp is not None:
        a["backup_timestamp"] = str(vm.backup_timestamp)
    return a


def stub_attributes(vm: QubesVM) -> dict[str, str]:
    """Only what names a VM that others refer to (a backup's dependencies, B42)."""
    a = {"qid": str(vm.qid), "name": vm.name, "label": vm.label.name,
         "template_qid": _ref(vm.template), "backup_content": str(vm.backup_content)}
    if vm.backup_content:  # dom0 carrying its home
        a["backup_path"] = vm.backup_path
        a["backup_size"] = str(vm.backup_size)
    if vm.provides_network:
        a["netid"] = str(vm.netid)
    return a


def dump_collection(app: VMCollection, vms=None, stubs=()) -> bytes:
    """Serialise the collection, or only `vms` (+ `stubs` by name), as a backup does."""
    root = etree.Element(ROOT_TAG)
    listed = None if vms is None else set(vms) | set(stubs)
    for name in GLOBAL_VM_REFS:
        vm = getattr(app, name)
        root.set(name, "None" if vm is None or (listed is not None and vm not in listed)
                 else str(vm.qid))
    root.set("default_kernel", str(app.default_kernel))
    for vm in app:
        if listed is not None and vm not in listed:
            continue
        el = etree.SubElement(root, vm.XML_TAG)
        attrs = stub_attributes(vm) if vm in stubs and vm not in vms else vm_attributes(vm)
        for key, value in attrs.items():
            el.set(key, value)
    if vms is None:
        for _qid, _name, raw in app.preserved:
            root.append(etree.fromstring(raw, _parser()))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


__all__ = ["load_collection", "dump_collection", "parse_document", "vm_attributes",
           "VM_CLASSES", "MAX_XML_SIZE"]
