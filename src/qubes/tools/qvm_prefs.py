"""qvm-prefs: list, get and set the properties of one VM (TOOLS.md §4, §15).

`-l` prints the R2 listing; `-g VM PROP` prints one value the same way (our
addition); `-s VM PROP VALUE...` validates the value at set time and saves
qubes.xml only when everything succeeded, so a failed set leaves the file
byte-identical. Without `-l/-g/-s` the action follows the argument count:
VM -> list, VM PROP -> get, VM PROP VALUE... -> set.
"""
from __future__ import annotations

import re
import sys
import time

from qubes.errors import (ExitCode, InvalidValueError, NoSuchPropertyError,
                          PropertyNotAvailableError, QubesError, ReadOnlyPropertyError)
from qubes.ops import ensure_halted, network
from qubes.tools import _cli

_FMT = "{0:<19}: {1}"
_INT = re.compile(r"[+-]?[0-9]+")

#: Settable with -s (TOOLS.md §4.2), in the order `--> '<p>'` lists them.
SETTABLE = ("autostart", "debug", "default_user", "drive", "guiagent_installed",
            "include_in_backups", "internal", "kernel", "kernelopts", "label", "mac",
            "maxmem", "memory", "name", "netvm", "pcidevs", "qrexec_installed",
            "qrexec_timeout", "seamless_gui_mode", "template", "timezone", "vcpus")

#: Known but not settable with qvm-prefs: derived, saved-by-the-system, or
#: shown by -l. Setting one says "read-only", never "wrong name" (B81).
READ_ONLY = frozenset({
    "qid", "type", "updateable", "ip", "gateway", "netmask", "secondary_dns", "xid",
    "dir", "dir_path", "config", "conf_file", "root_img", "root_cow_img", "rootcow_img",
    "root_volatile_img", "volatile_img", "private_img", "last_backup", "backup_timestamp",
    "backup_content", "backup_size", "backup_path", "uuid", "netid", "dispid",
    "installed_by_rpm", "firewall_conf", "icon_path", "kernels_dir", "visible_ip",
    "visible_gateway", "visible_netmask", "state", "klass", "class"})

#: Values of -g that are not list keys but can be read.
_DERIVED = ("ip", "gateway", "netmask", "secondary_dns", "updateable", "firewall_conf",
            "icon_path", "kernels_dir")

#: Property name -> list key, so that -g accepts both.
_KEY_OF = {"dir_path": "dir", "conf_file": "config", "volatile_img": "root_volatile_img",
           "rootcow_img": "root_cow_img", "backup_timestamp": "last_backup", "mac": "MAC"}

_MISSING = {"netvm": "Missing netvm name argument!", "label": "Missing label name argument!",
            "template": "Missing template name argument!", "name": "Missing new name argument!",
            "kernel": "Missing kernel version argument!",
            "memory": "Missing memory size argument!", "maxmem": "Missing maxmem size argument!",
            "vcpus": "Missing vcpus count argument!", "pcidevs": "Missing pcidevs argument!",
            "mac": "Missing MAC address argument!"}


def build_parser():
    p = _cli.make_parser("qvm-prefs", "List, get or set the properties of a VM.",
                         force_root=True)
    p.add_argument("-l", "--list", dest="do_list", action="store_true",
                   help="list the properties (default)")
    p.add_argument("-g", "--get", dest="do_get", action="store_true",
                   help="print the value of PROPERTY")
    p.add_argument("-s", "--set", dest="do_set", action="store_true",
                   help="set PROPERTY to VALUE")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("vm", metavar="VM")
    p.add_argument("prop", metavar="PROPERTY", nargs="?")
    p.add_argument("value", metavar="VALUE", nargs="*")
    return p


# --- rendering ---------------------------------------------------------------

def _with_default(vm, prop: str, value) -> str:
    return f"{value} (default)" if vm.is_default(prop) else str(value)


def _image_entries(vm) -> list[tuple[str, object]]:
    if vm.is_adminvm:
        return []
    out: list[tuple[str, object]] = [("root_img", vm.root_img)]
    if vm.is_template:
        out.append(("root_cow_img", getattr(vm, "rootcow_img", None)
                    or vm.dir_path.rstrip("/") + "/root-cow.img"))
    if vm.volatile_img:
        out.append(("root_volatile_img", vm.volatile_img))
    if vm.private_img:
        out.append(("private_img", vm.private_img))
    return out


def _last_backup(vm) -> str:
    if vm.backup_timestamp is None:
        return "None"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(vm.backup_timestamp))


def list_entries(vm) -> list[tuple[str, object]]:
    """(key, rendered value) in the order of TOOLS.md §4.1, conditional keys skipped."""
    out: list[tuple[str, object]] = [("name", vm.name), ("label", vm.label.name),
                                     ("type", vm.TYPE)]
    if vm.has_property("template") and vm.template is not None:
        out.append(("template", vm.template.name))
    if vm.has_property("netvm") and vm.netvm is not None:
        out.append(("netvm", vm.netvm.name))
    out += [("updateable", vm.updateable), ("autostart", vm.autostart),
            ("installed_by_rpm", vm.installed_by_rpm),
            ("include_in_backups", vm.include_in_backups),
            ("last_backup", _last_backup(vm)), ("dir", vm.dir_path),
            ("config", vm.conf_file), ("pcidevs", repr(vm.pcidevs))]
    out += _image_entries(vm)
    out += [("vcpus", vm.vcpus), ("memory", vm.memory)]
    if vm.has_property("maxmem"):
        out.append(("maxmem", vm.maxmem))
    out.append(("MAC", f"{vm.mac} (auto)" if vm.is_default("mac") else vm.mac))
    if vm.has_property("kernel"):
        out.append(("kernel", _with_default(vm, "kernel", vm.kernel)))
        out.append(("kernelopts", _with_default(vm, "kernelopts", vm.kernelopts)))
    out += [("debug", "on" if vm.debug else "off"), ("default_user", vm.default_user)]
    hvm = vm.has_property("drive")
    if hvm:
        out.append(("qrexec_installed", vm.qrexec_installed))
    out.append(("qrexec_timeout", vm.qrexec_timeout))
    if hvm:
        out += [("guiagent_installed", vm.guiagent_installed),
                ("seamless_gui_mode", vm.seamless_gui_mode),
                ("drive", vm.drive), ("timezone", vm.timezone)]
    out.append(("internal", vm.internal))
    return out


def _render(value) -> str:
    name = getattr(value, "name", None)
    if isinstance(name, str):  # a VM or a Label
        return name
    return str(value)


def get_value(vm, prop: str) -> str:
    """The text -g prints for `prop`, rendered as -l renders it."""
    entries = dict(list_entries(vm))
    key = _KEY_OF.get(prop, prop)
    if key in entries:
        return _render(entries[key])
    if vm.get_property(prop) is not None:
        if not vm.has_property(prop):
            raise PropertyNotAvailableError(prop)
        return _render(getattr(vm, prop))
    if prop in _DERIVED:
        return _render(getattr(vm, prop, None))
    if prop in SETTABLE or prop in READ_ONLY:
        raise PropertyNotAvailableError(prop)
    raise NoSuchPropertyError(prop)


# --- value parsing -------------------------------------------------------------

def _parse_bool(prop: str, value: str, on_off: bool = False) -> bool:
    """`True`/`False` in any case (plus `on`/`off` when `on_off`); no eval (§15)."""
    low = value.strip().lower()
    if low == "true" or (on_off and low == "on"):
        return True
    if low == "false" or (on_off and low == "off"):
        return False
    choices = "True, False, on or off" if on_off else "True or False"
    raise InvalidValueError(prop, f"'{value}' is not a boolean (use {choices})")


def _parse_int(prop: str, value: str) -> int:
    text = value.strip()
    if not (text.isascii() and _INT.fullmatch(text)):
        raise InvalidValueError(prop, f"'{value}' is not an integer; "
                                      f"{prop} must be a positive integer")
    return int(text)


# --- setters: (ctx, app, vm, prop, value) ------------------------------------

def _set_bool(_ctx, _app, vm, prop, value):
    vm.set_prop(prop, _parse_bool(prop, value))


def _set_debug(_ctx, _app, vm, prop, value):
    vm.set_prop(prop, _parse_bool(prop, value, on_off=True))


def _set_plain(_ctx, _app, vm, prop, value):
    vm.set_prop(prop, value)


def _set_memory(ctx, _app, vm, prop, value):
    mb = _parse_int(prop, value)
    if mb <= 0:
        raise InvalidValueError(prop, "Memory size must be positive")
    vm.set_prop(prop, mb)
    if vm.has_property("maxmem") and vm.maxmem is not None and vm.maxmem < vm.memory:
        ctx.warn(f"maxmem ({vm.maxmem} MB) of '{vm.name}' is less than its memory "
                 f"({vm.memory} MB)")


def _set_vcpus(_ctx, _app, vm, prop, value):
    n = _parse_int(prop, value)
    if n <= 0:
        raise InvalidValueError(prop, "A vcpus count must be positive.")
    vm.set_prop(prop, n)


def _set_or_reset(keyword: str):
    """A setter where `keyword` (e.g. `default`, `auto`) returns to the default."""
    def setter(_ctx, _app, vm, prop, value):
        if value.strip().lower() == keyword:
            vm.reset_prop(prop)
        else:
            vm.set_prop(prop, value)
    return setter


def _set_netvm(ctx, app, vm, prop, value):
    before = network.current_link(vm)
    if value.strip().lower() == "default":
        vm.reset_prop(prop)
    elif value.strip().lower() == "none":
        vm.set_prop(prop, None)
    else:
        vm.set_prop(prop, value)
    network.replug(app, ctx.hypervisor, vm, before)  # a running VM moves at once


def _set_kernel(_ctx, _app, vm, prop, value):
    if value.strip().lower() == "default":
        vm.reset_prop(prop)
    else:  # `none`: the kernel in the VM directory
        vm.set_prop(prop, value.strip())


def _ensure_halted(ctx, vm, message: str) -> None:
    ensure_halted(ctx.hypervisor, [vm], "change", message)


def _set_template(ctx, _app, vm, prop, value):
    vm.get_property(prop).check(vm, value)  # validate before asking the hypervisor
    _ensure_halted(ctx, vm, "Cannot change the template of a running VM, stop it first")
    vm.set_prop(prop, value)


def _set_pcidevs(ctx, _app, vm, prop, value):
    vm.get_property(prop).check(vm, value)
    _ensure_halted(ctx, vm, "Cannot modify PCI devices of running VM, use qvm-pci instead")
    vm.set_prop(prop, value)


def _set_name(ctx, app, vm, prop, value):
    from qubes.ops.remove import rename_vm
    vm.get_property(prop).check(vm, value)
    rename_vm(app, ctx.hypervisor, vm, value)


def _set_drive(_ctx, _app, vm, prop, value):
    vm.set_prop(prop, None if value.strip().lower() in ("", "none") else value)


_SETTERS = {
    "include_in_backups": _set_bool, "internal": _set_bool, "autostart": _set_bool,
    "qrexec_installed": _set_bool, "guiagent_installed": _set_bool,
    "seamless_gui_mode": _set_bool, "debug": _set_debug,
    "label": _set_plain, "default_user": _set_plain, "qrexec_timeout": _set_plain,
    "timezone": _set_plain,
    "memory": _set_memory, "maxmem": _set_memory, "vcpus": _set_vcpus,
    "netvm": _set_netvm, "kernel": _set_kernel, "kernelopts": _set_or_reset("default"),
    "mac": _set_or_reset("auto"), "template": _set_template, "pcidevs": _set_pcidevs,
    "name": _set_name, "drive": _set_drive,
}


def check_settable(vm, prop: str) -> None:
    """Raise the error that says why `prop` cannot be set on `vm`, if it cannot."""
    if prop not in SETTABLE:
        if prop == "services":
            raise QubesError("Property 'services' cannot be set with qvm-prefs; "
                             "use qvm-service")
        if prop in READ_ONLY:
            raise ReadOnlyPropertyError(prop)
        raise NoSuchPropertyError(prop)
    if not vm.has_property(prop):
        raise PropertyNotAvailableError(prop)
    descriptor = vm.get_property(prop)
    if descriptor is not None and descriptor.read_only:
        raise ReadOnlyPropertyError(prop)


# --- actions -----------------------------------------------------------------

def _do_list(ctx) -> int:
    with ctx.read() as app:
        vm = _cli.vm_by_name(app, ctx.args.vm)
        for key, value in list_entries(vm):
            print(_FMT.format(key, _render(value)))
    return ExitCode.OK


def _do_get(ctx) -> int:
    with ctx.read() as app:
        vm = _cli.vm_by_name(app, ctx.args.vm)
        print(get_value(vm, ctx.args.prop))
    return ExitCode.OK


def _no_property(ctx) -> int:
    with ctx.read() as app:
        vm = _cli.vm_by_name(app, ctx.args.vm)
        names = [p for p in SETTABLE if vm.has_property(p)]
    print("ERROR: No property given; the properties that can be set are:", file=sys.stderr)
    for prop in names:
        print(f"--> '{prop}'", file=sys.stderr)
    return ExitCode.ERROR


def _do_set(ctx) -> int:
    args = ctx.args
    if args.prop is None:
        return _no_property(ctx)
    prop = "mac" if args.prop == "MAC" else args.prop
    with ctx.modify() as app:
        vm = _cli.vm_by_name(app, args.vm)
        check_settable(vm, prop)
        if not args.value:
            raise QubesError(_MISSING.get(prop, f"Missing {prop} value argument!"))
        _SETTERS[prop](ctx, app, vm, prop, " ".join(args.value))
    return ExitCode.OK


def _handle(ctx) -> int:
    args = ctx.args
    if args.do_list and args.do_set:
        raise QubesError("You cannot provide -l and -s at the same time!")
    if args.do_get and (args.do_list or args.do_set):
        raise QubesError("You can provide only one of -l, -g and -s at once!")
    if args.do_set:
        return _do_set(ctx)
    if args.do_get:
        return _do_get(ctx)
    if args.do_list or args.prop is None:
        return _do_list(ctx)
    return _do_get(ctx) if not args.value else _do_set(ctx)


def _validate(parser, args) -> None:
    if args.do_list and not args.do_set and args.prop is not None:
        parser.error("-l takes only the VM name")
    if args.do_get and not (args.do_list or args.do_set):
        if args.prop is None:
            parser.error("-g needs a property name")
        if args.value:
            parser.error("-g takes only the VM and the property name")


def main(argv=None) -> int:
    return _cli.run(build_parser(), _handle, argv, validate=_validate)


if __name__ == "__main__":
    raise SystemExit(main())
