"""VMCollection: the VMs by qid, the global defaults, id allocation (QUBES-XML.md §9, §10)."""
from __future__ import annotations

from qubes.errors import InvalidValueError, NoSuchVMError, QubesError, VMExistsError
from qubes.model.classes import AdminVM, vm_class
from qubes.model.vm import QubesVM, check_kernel_name

MAX_QID = 254
MAX_NETID = 254
GLOBAL_VM_REFS = ("default_template", "default_netvm", "default_fw_netvm", "updatevm", "clockvm")


class VMCollection:
    """A mapping qid -> VM with the six root settings of qubes.xml."""

    def __init__(self, base_dir: str, host=None):
        self.base_dir = base_dir
        self.host = host
        self._vms: dict[int, QubesVM] = {}
        self.default_template: QubesVM | None = None
        self.default_netvm: QubesVM | None = None
        self.default_fw_netvm: QubesVM | None = None
        self.updatevm: QubesVM | None = None
        self.clockvm: QubesVM | None = None
        self.default_kernel: str | None = None
        self.warnings: list[str] = []
        self._rollback: list = []
        # VM entries the store could not load, kept verbatim so a save does not drop them
        self.preserved: list[tuple[int | None, str | None, bytes]] = []

    def on_rollback(self, undo) -> None:
        """Register `undo()` to run if the transaction changing this collection fails."""
        self._rollback.append(undo)

    def rollback(self) -> None:
        while self._rollback:
            self._rollback.pop()()

    # --- mapping --------------------------------------------------------------
    def __iter__(self):
        return iter(sorted(self._vms.values(), key=lambda vm: vm.qid))

    def __len__(self) -> int:
        return len(self._vms)

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def get(self, key) -> QubesVM | None:
        """Look up by qid (int) or name (str)."""
        if isinstance(key, int) and not isinstance(key, bool):
            return self._vms.get(key)
        for vm in self._vms.values():
            if vm.name == key:
                return vm
        return None

    def __getitem__(self, key) -> QubesVM:
        vm = self.get(key)
        if vm is None:
            raise NoSuchVMError(str(key))
        return vm

    @property
    def dom0(self) -> QubesVM:
        return self._vms[0]

    def insert(self, vm: QubesVM) -> None:
        if vm.qid in self._vms:
            raise QubesError(f"qid {vm.qid} is already used by '{self._vms[vm.qid].name}'")
        if self.get(vm.name) is not None:
            raise VMExistsError(vm.name)
        self._vms[vm.qid] = vm

    def ensure_dom0(self) -> None:
        if 0 not in self._vms:
            self._vms[0] = AdminVM(self)

    # --- ids ------------------------------------------------------------------
    def new_qid(self) -> int:
        reserved = {qid for qid, _name, _raw in self.preserved}
        for qid in range(1, MAX_QID):
            if qid not in self._vms and qid not in reserved:
                return qid
        raise QubesError(f"no free qid left (at most {MAX_QID - 1} VMs)")

    def new_netid(self) -> int:
        used = {vm.netid for vm in self._vms.values() if vm.provides_network}
        for netid in range(1, MAX_NETID):
            if netid not in used:
                return netid
        raise QubesError("no free netid left")

    # --- create and remove ----------------------------------------------------
    def add_new_vm(self, class_name: str, name: str, *, template=None, **props) -> QubesVM:
        """Create, validate and register a VM; applies the first-of-a-kind defaults."""
        try:
            cls = vm_class(class_name)
        except ValueError as exc:
            raise QubesError(str(exc)) from None
        if cls is AdminVM:
            raise QubesError("dom0 cannot be created")
        if self.get(name) is not None or any(n == name for _q, n, _r in self.preserved):
            raise VMExistsError(name)
        vm = cls(self, self.new_qid(), name)
        if template is not None:
            if cls.TEMPLATE_TYPE is None:
                raise QubesError("Template VM cannot be based on another template")
            target = self.get(template) if not isinstance(template, QubesVM) else template
            if target is None:
                raise NoSuchVMError(str(template))
            if target.TYPE != cls.TEMPLATE_TYPE:
                raise QubesError(f"'{target.name}' is not a {cls.TEMPLATE_TYPE}; "
                                 f"an {cls.TYPE} needs one as its template"
                                 if cls.TYPE[0] in "AEIOU" else
                                 f"'{target.name}' is not a {cls.TEMPLATE_TYPE}; "
                                 f"a {cls.TYPE} needs one as its template")
            vm.set_raw("template", target)
        if vm.provides_network:
            vm.set_raw("netid", self.new_netid())
        for prop, value in props.items():
            if value is not None:
                vm.set_prop(prop, value)
        self.insert(vm)
        self._first_of_kind_defaults(vm)
        return vm

    def _first_of_kind_defaults(self, vm: QubesVM) -> None:
        kinds = [v for v in self if v.TYPE == vm.TYPE]
        if len(kinds) != 1:
            return
        if vm.TYPE == "NetVM":
            self.default_fw_netvm = self.default_fw_netvm or vm
            self.clockvm = self.clockvm or vm
        elif vm.TYPE == "ProxyVM":
            self.default_netvm = self.default_netvm or vm
            self.updatevm = self.updatevm or vm
        elif vm.TYPE == "TemplateVM":
            self.default_template = self.default_template or vm

    def remove(self, vm: QubesVM) -> list[str]:
        """Unregister; clears references to it. Refuses dom0 and used templates.

        Returns what else changed (unset globals, VMs left without network).
        """
        if vm.qid == 0:
            raise QubesError("dom0 cannot be removed")
        users = self.vms_based_on(vm)
        if users:
            raise QubesError(
                f"The following AppVMs use '{vm.name}' as a template:\n"
                + "".join(f"{u.name:<12} (qid={u.qid})\n" for u in users)
                + "Please remove those VMs first.")
        changes = []
        offline = [o.name for o in self if o is not vm and o.HAS_NETVM and o.netvm is vm]
        for attr in GLOBAL_VM_REFS:
            if getattr(self, attr) is vm:
                setattr(self, attr, None)
                changes.append(f"the global setting {attr.replace('_', '-')} is now unset")
        for other in self:
            if other is not vm and not other.is_default("netvm") and other.netvm is vm:
                other.set_raw("netvm", None)
        if offline:
            changes.append(f"these VMs used '{vm.name}' for their network and now have none: "
                           + ", ".join(offline))
        del self._vms[vm.qid]
        return changes

    # --- lookups --------------------------------------------------------------
    def vms_based_on(self, template: QubesVM) -> list[QubesVM]:
        return [vm for vm in self if vm.template is template]

    # --- globals --------------------------------------------------------------
    def set_global(self, name: str, untrusted_value) -> None:
        """Set one of the six root settings, validating like the tools must (B79)."""
        if name == "default_kernel":
            try:
                version = check_kernel_name(untrusted_value)
            except ValueError as exc:
                raise InvalidValueError(name, str(exc)) from None
            if version is None:
                raise InvalidValueError(name, "the default kernel cannot be unset")
            if self.host is not None and not self.host.kernel_installed(version):
                raise InvalidValueError(name, f"Kernel version {version} not installed")
            self.default_kernel = version
            return
        if name not in GLOBAL_VM_REFS:
            raise QubesError(f"no such global property '{name}'")
        if untrusted_value is None or (isinstance(untrusted_value, str)
                                       and untrusted_value.lower() in ("none", "")):
            setattr(self, name, None)
            return
        vm = untrusted_value if isinstance(untrusted_value, QubesVM) else self.get(untrusted_value)
        if vm is None:
            raise InvalidValueError(name, f"no such VM: '{untrusted_value}'")
        if name == "default_template" and not vm.is_template:
            raise InvalidValueError(name, f"VM '{vm.name}' is not a template")
        if name in ("default_netvm", "default_fw_netvm") and not vm.provides_network:
            raise InvalidValueError(name, f"VM '{vm.name}' is not a NetVM")
        setattr(self, name, vm)
