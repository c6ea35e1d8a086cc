"""qvm-check: does a VM exist, or with --running, does it run? (TOOLS.md §7).

Exit 0 if it does, 1 if not.
"""
from __future__ import annotations

from qubes.errors import ExitCode
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-check", "Check whether a VM exists.")
    p.add_argument("-q", "--quiet", action="store_true", help="no output, only the exit code")
    p.add_argument("--running", action="store_true", help="check that the VM is running")
    p.add_argument("--consistency", action="store_true",
                   help="instead of one VM, check that libvirt and the VM directories agree "
                        "with qubes.xml")
    p.add_argument("--repair", action="store_true",
                   help="with --consistency: fix what disagrees (qubes.xml is never changed, "
                        "except to drop DisposableVMs left from a crash)")
    p.add_argument("name", metavar="VM", nargs="?")
    return p


def _validate(parser, args) -> None:
    if args.consistency == bool(args.name):
        parser.error("name a VM, or use --consistency")
    if args.repair and not args.consistency:
        parser.error("--repair only goes with --consistency")


def _consistency(ctx) -> int:
    from qubes.ops import consistency
    problems = consistency.check(ctx.base_dir, ctx.host, ctx.hypervisor)
    for p in problems:
        ctx.info(f"{p.kind}: {p.text}" + ("" if ctx.args.repair else f" (--repair: {p.repair})"))
    if ctx.args.repair:
        for line in consistency.repair(ctx.base_dir, ctx.host, ctx.hypervisor, problems):
            ctx.info(f"repaired: {line}")
        return ExitCode.OK
    if not problems:
        ctx.info("libvirt and the VM directories agree with qubes.xml.")
    return ExitCode.ERROR if problems else ExitCode.OK


def main(argv=None) -> int:
    def handle(ctx):
        if ctx.args.consistency:
            return _consistency(ctx)
        name = ctx.args.name
        with ctx.read() as app:
            exists = app.get(name) is not None
        if exists and ctx.args.running:
            running = ctx.hypervisor.domain_states([name])[name].state.is_running
            ctx.info(f"A VM with the name '{name}' is {'' if running else 'not '}running.")
            return ExitCode.OK if running else ExitCode.ERROR
        if exists:
            ctx.info(f"A VM with the name '{name}' does exist.")
            return ExitCode.OK
        ctx.info(f"A VM with the name '{name}' does not exist in the system!")
        return ExitCode.ERROR
    return _cli.run(build_parser(), handle, argv, validate=_validate)


if __name__ == "__main__":
    raise SystemExit(main())
