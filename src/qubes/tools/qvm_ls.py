"""qvm-ls: list VMs as the R2 table, or as names, JSON or `|`-separated fields (TOOLS.md §3).

The power state of every listed VM comes from ONE bulk hypervisor query per
listing (two with `-c`, which samples CPU time for a second), so the cost
does not grow with VMs x properties (CASES.md B76). An unreachable
hypervisor gives one warning and state `NA`; a VM the hypervisor no longer
knows is shown halted (B78). Output never contains colour codes (B77).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

from qubes.errors import OfflineError, VMMError
from qubes.tools import _cli
from qubes.tools._table import format_table
from qubes.util.sizes import disk_usage
from qubes.vmm.base import DomainInfo, DomainState

#: Seconds between the two CPU-time samples of `-c` (tests shorten it).
CPU_SAMPLE_SECONDS = 1.0
_MiB = 1024 * 1024


@dataclass
class Row:
    """One listed VM with its runtime figures."""

    vm: object
    info: DomainInfo
    cpu: float | None = None

    @property
    def running(self) -> bool:
        return self.info.state.is_running


# --- table cells (TOOLS.md §3.2) ---------------------------------------------

def _name(row: Row) -> str:
    vm = row.vm
    name = vm.name
    if vm.is_template:
        name = f"[{name}]"
    elif vm.is_disposablevm:
        name = f"<{name}>"
    elif vm.provides_network:
        name = f"{{{name}}}"
    if vm.collection.default_template is vm:
        name = "=>" + name
    return name


def _type(row: Row) -> str:
    vm = row.vm
    if vm.is_template:
        return "Tpl"
    if vm.TYPE in ("AppVM", "DisposableVM"):
        return ""
    if vm.TYPE == "HVM":
        return "HVM"
    return vm.TYPE[:-2] if vm.TYPE.endswith("VM") else vm.TYPE


def _template(row: Row) -> str:
    vm = row.vm
    if vm.is_template:
        return "n/a"
    return "None" if vm.template is None else vm.template.name


def _netvm(row: Row) -> str:
    vm = row.vm
    if not vm.HAS_NETVM:
        return "n/a"
    if vm.netvm is None:
        return "-"
    return ("*" if vm.is_default("netvm") else "") + vm.netvm.name


def _mem(row: Row) -> str:
    return f"{row.info.memory_kib // 1024} MB" if row.running else "-"


def _cpu(row: Row) -> str:
    return "-" if row.cpu is None else f"{row.cpu:.1f}"


def _backup_date(vm) -> str | None:
    if vm.backup_timestamp is None:
        return None
    return time.strftime("%Y-%m-%d", time.localtime(vm.backup_timestamp))


def _file_size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def _disk(measure):
    def cell(row: Row) -> str:
        if row.vm.is_adminvm:
            return "n/a"
        return f"{measure(row.vm) // _MiB} MB"
    return cell


def _with_star(prop: str):
    def cell(row: Row) -> str:
        vm = row.vm
        if not vm.has_property(prop):
            return "n/a"
        return ("*" if vm.is_default(prop) else "") + str(getattr(vm, prop))
    return cell


BASE_COLUMNS = [
    ("name", _name),
    ("on", lambda r: "*" if r.running else ""),
    ("state", lambda r: r.info.state.value),
    ("updbl", lambda r: "Yes" if r.vm.updateable else ""),
    ("type", _type),
    ("template", _template),
    ("netvm", _netvm),
    ("label", lambda r: r.vm.label.name),
]

#: Option dest -> the columns it adds, in the order of TOOLS.md §3.1.
OPTIONAL_COLUMNS = [
    ("ids", [("qid", lambda r: str(r.vm.qid)),
             ("xid", lambda r: str(r.info.xid) if r.running else "-")]),
    ("cpu", [("cpu", _cpu)]),
    ("mem", [("mem", _mem)]),
    ("last_backup", [("last backup", lambda r: _backup_date(r.vm) or "-")]),
    ("network", [("ip", lambda r: str(r.vm.ip)),
                 ("ip back", lambda r: r.vm.gateway_address if r.vm.provides_network
                  else "n/a"),
                 ("gateway/DNS", lambda r: r.vm.gateway or "n/a")]),
    ("disk", [("priv-curr", _disk(lambda vm: disk_usage(vm.private_img))),
              ("priv-max", _disk(lambda vm: _file_size(vm.private_img))),
              ("root-curr", _disk(lambda vm: disk_usage(vm.root_img))),
              ("root-max", _disk(lambda vm: _file_size(vm.root_img))),
              ("disk", _disk(lambda vm: disk_usage(vm.dir_path)))]),
    ("kernel", [("kernel", _with_star("kernel")), ("kernelopts", _with_star("kernelopts"))]),
]


def table_columns(args) -> list:
    columns = list(BASE_COLUMNS)
    for dest, added in OPTIONAL_COLUMNS:
        if getattr(args, dest):
            columns += added
    dropped = set()
    if args.network or args.disk:
        dropped.add("template")
    if args.disk:
        dropped.add("netvm")
    return [c for c in columns if c[0] not in dropped]


# --- machine-readable fields (--raw-data, --format json) ---------------------

def _ref(vm):
    return None if vm is None else vm.name


def _optional(prop: str):
    return lambda r: getattr(r.vm, prop) if r.vm.has_property(prop) else None


FIELDS = {
    "name": lambda r: r.vm.name,
    "qid": lambda r: r.vm.qid,
    "xid": lambda r: r.info.xid if r.running else None,
    "class": lambda r: r.vm.TYPE,
    "type": lambda r: r.vm.TYPE,
    "state": lambda r: r.info.state.value,
    "running": lambda r: r.running,
    "updateable": lambda r: r.vm.updateable,
    "template": lambda r: _ref(r.vm.template),
    "netvm": lambda r: _ref(r.vm.netvm) if r.vm.HAS_NETVM else None,
    "uses_default_netvm": lambda r: r.vm.is_default("netvm") if r.vm.HAS_NETVM else None,
    "label": lambda r: r.vm.label.name,
    "ip": lambda r: r.vm.ip,
    "gateway": lambda r: r.vm.gateway,
    "ip_back": lambda r: r.vm.gateway_address if r.vm.provides_network else None,
    "memory": lambda r: r.vm.memory,
    "maxmem": _optional("maxmem"),
    "vcpus": lambda r: r.vm.vcpus,
    "mem": lambda r: r.info.memory_kib // 1024 if r.running else None,
    "cpu": lambda r: None if r.cpu is None else round(r.cpu, 1),
    "internal": lambda r: r.vm.internal,
    "include_in_backups": lambda r: r.vm.include_in_backups,
    "last_backup": lambda r: _backup_date(r.vm),
    "kernel": _optional("kernel"),
    "kernelopts": _optional("kernelopts"),
    "dir": lambda r: r.vm.dir_path,
}
DEFAULT_RAW_FIELDS = ("name", "state", "class", "label", "template", "netvm")


def _fields_arg(text: str) -> list[str]:
    names = [f.strip() for f in text.split(",") if f.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no field given")
    unknown = [f for f in names if f not in FIELDS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown field '{unknown[0]}' (qvm-ls --list-fields shows the known ones)")
    return names


def _raw_text(value) -> str:
    return "" if value is None else str(value)


# --- states --------------------------------------------------------------------

def fetch_states(ctx, vms) -> dict[str, DomainInfo] | None:
    """One bulk query; None (after one warning) when the hypervisor cannot be reached."""
    hypervisor = ctx.hypervisor
    try:
        states = hypervisor.domain_states([vm.name for vm in vms])
    except OfflineError:
        raise
    except VMMError as exc:
        ctx.warn(f"cannot get the VM states from the hypervisor: {exc}; "
                 "showing state NA")
        return None
    result = {}
    for vm in vms:
        info = states.get(vm.name) or DomainInfo(DomainState.HALTED)  # vanished: halted
        if vm.is_adminvm and not hypervisor.offline and not info.state.is_running:
            info = DomainInfo(DomainState.RUNNING, 0, ctx.host.memory_total_mb * 1024)
        result[vm.name] = info
    return result


def measure_cpu(ctx, rows: list[Row]) -> None:
    """CPU percent of one CPU over CPU_SAMPLE_SECONDS, from a second bulk query."""
    started = time.monotonic()
    time.sleep(CPU_SAMPLE_SECONDS)
    try:
        later = ctx.hypervisor.domain_states([r.vm.name for r in rows])
    except VMMError as exc:
        ctx.warn(f"cannot sample CPU usage: {exc}")
        return
    elapsed = max(time.monotonic() - started, 1e-6)
    for row in rows:
        second = later.get(row.vm.name)
        if not row.running:
            row.cpu = 0.0
        elif second is None or not second.state.is_running or second.xid != row.info.xid:
            row.cpu = 0.0  # stopped (or vanished) during the sample
        else:
            delta = max(second.cpu_time_ns - row.info.cpu_time_ns, 0)
            row.cpu = delta / 1e9 / elapsed * 100


# --- selection and order ------------------------------------------------------

def select_vms(app, names: list[str]) -> list:
    if not names:
        return list(app)
    chosen = {_cli.vm_by_name(app, name).qid: app[name] for name in names}
    return [chosen[qid] for qid in sorted(chosen)]


def row_order(vms: list) -> list:
    """TOOLS.md §3.3: network VMs; VMs without a listed template; each template + its VMs."""
    templates = [vm for vm in vms if vm.is_template]
    others = [vm for vm in vms if not vm.is_template and not vm.provides_network]
    listed = {t.qid for t in templates}
    ordered = [vm for vm in vms if vm.provides_network]
    ordered += [vm for vm in others if vm.template is None or vm.template.qid not in listed]
    for template in templates:
        ordered.append(template)
        ordered += [vm for vm in others if vm.template is template]
    return ordered


def files_ok(vm) -> bool:
    """The checks of R2 `verify_files()` that apply to our layout."""
    if vm.is_adminvm or vm.is_disposablevm:
        return True
    if not os.path.isdir(vm.dir_path) or not os.path.isfile(vm.private_img):
        return False
    return not vm.updateable or os.path.isfile(vm.root_img)


# --- command -------------------------------------------------------------------

def build_parser():
    p = _cli.make_parser("qvm-ls", "List VMs and their state.")
    p.add_argument("-i", "--ids", action="store_true", help="show qid and xid")
    p.add_argument("-c", "--cpu", action="store_true", help="show CPU usage (samples 1 s)")
    p.add_argument("-m", "--mem", action="store_true", help="show memory usage")
    p.add_argument("-b", "--last-backup", action="store_true", help="show the last backup date")
    p.add_argument("-n", "--network", action="store_true", help="show network addresses")
    p.add_argument("-d", "--disk", action="store_true", help="show disk usage")
    p.add_argument("-k", "--kernel", action="store_true", help="show kernel and options")
    p.add_argument("--raw-list", action="store_true", help="only the VM names, in qid order")
    p.add_argument("--raw-data", action="store_true",
                   help="one line per VM, fields separated by '|', no header")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: table)")
    p.add_argument("--fields", type=_fields_arg, metavar="F1,F2,...",
                   help="fields for --raw-data / --format json")
    p.add_argument("--list-fields", action="store_true",
                   help="print the field names --fields accepts")
    p.add_argument("--host", action="store_true",
                   help="show the host instead: accelerator (KVM or TCG), memory, CPU usage")
    p.add_argument("vms", metavar="VM", nargs="*", help="list only these VMs")
    return p


def _validate(parser, args) -> None:
    modes = [args.raw_list, args.raw_data, args.format == "json", args.list_fields]
    if sum(modes) > 1:
        parser.error("only one of --raw-list, --raw-data, --format json and --list-fields "
                     "may be given")
    if args.fields and not (args.raw_data or args.format == "json"):
        parser.error("--fields needs --raw-data or --format json")


def _print_table(ctx, rows: list[Row]) -> None:
    columns = table_columns(ctx.args)
    cells = []
    for row in rows:
        cells.append([cell(row) for _header, cell in columns])
        if not files_ok(row.vm):
            ctx.warn(f"VM '{row.vm.name}' has corrupted files!")
    print("\n".join(format_table([h for h, _cell in columns], cells)))


def _print_data(ctx, rows: list[Row]) -> None:
    args = ctx.args
    if args.format == "json":
        names = args.fields or [f for f in FIELDS if f != "cpu" or args.cpu]
        data = [{f: FIELDS[f](row) for f in names} for row in rows]
        print(json.dumps(data, indent=2))
        return
    names = args.fields or DEFAULT_RAW_FIELDS
    for row in rows:
        print("|".join(_raw_text(FIELDS[f](row)) for f in names))


def _print_host(ctx) -> int:
    from qubes.ops.hostinfo import figures
    host = figures(ctx.hypervisor, CPU_SAMPLE_SECONDS)
    if ctx.args.format == "json":
        print(json.dumps(host.__dict__, indent=2))
        return 0
    print(f"hypervisor:   {host.uri}")
    print(f"accelerator:  {host.accelerator}")
    print(f"cpus:         {host.cpus}, {host.cpu_usage_percent:.0f} % busy")
    print(f"memory:       {host.memory_free_mb} MiB free of {host.memory_total_mb} MiB")
    return 0


def _handle(ctx) -> int:
    args = ctx.args
    if args.host:
        return _print_host(ctx)
    if args.list_fields:
        print("\n".join(FIELDS))
        return 0
    if args.cpu and ctx.hypervisor.offline:
        raise OfflineError()
    with ctx.read() as app:
        vms = select_vms(app, args.vms)
    if args.raw_list:
        print("\n".join(vm.name for vm in vms))
        return 0
    states = fetch_states(ctx, vms)
    rows = [Row(vm, states[vm.name] if states is not None else DomainInfo(DomainState.NA))
            for vm in row_order(vms)]
    if args.cpu and states is not None:
        measure_cpu(ctx, rows)
    if args.raw_data or args.format == "json":
        _print_data(ctx, rows)
    else:
        _print_table(ctx, rows)
    sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    return _cli.run(build_parser(), _handle, argv, validate=_validate)


if __name__ == "__main__":
    raise SystemExit(main())
