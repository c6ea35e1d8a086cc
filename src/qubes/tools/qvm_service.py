"""qvm-service: list, enable, disable or reset the services of a VM (TOOLS.md §6)."""
from __future__ import annotations

from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-service", "Manage the services of a VM.")
    action = p.add_mutually_exclusive_group()
    action.add_argument("-l", "--list", action="store_true", help="list services (default)")
    action.add_argument("-e", "--enable", metavar="SERVICE", help="enable SERVICE")
    action.add_argument("-d", "--disable", metavar="SERVICE", help="disable SERVICE")
    action.add_argument("-D", "--default", metavar="SERVICE",
                        help="back to the VM's default for SERVICE")
    p.add_argument("vm", metavar="VM")
    return p


def _list(ctx) -> None:
    with ctx.read() as app:
        services = dict(_cli.vm_by_name(app, ctx.args.vm).services)
    if not services:
        return
    width = max(len(name) for name in services)
    for name in sorted(services):
        print(f"{name:<{width}}: {'Enabled' if services[name] else 'Disabled'}")


def _change(ctx) -> None:
    a = ctx.args
    with ctx.modify() as app:
        vm = _cli.vm_by_name(app, a.vm)
        services = dict(vm.services)
        if a.default is not None:
            services.pop(a.default, None)
        else:
            services[a.enable if a.enable is not None else a.disable] = a.enable is not None
        vm.set_prop("services", services)


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        if a.enable is None and a.disable is None and a.default is None:
            _list(ctx)
        else:
            _change(ctx)
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
