"""qvm-pause and qvm-unpause: freeze a running VM and let it go on."""
from __future__ import annotations

from qubes.ops.lifecycle import pause_vm
from qubes.tools import _cli


def build_parser(prog: str = "qvm-pause"):
    what = "Pause" if prog == "qvm-pause" else "Unpause"
    p = _cli.make_parser(prog, f"{what} a running VM.")
    p.add_argument("name", metavar="VM")
    return p


def main(argv=None, prog: str = "qvm-pause") -> int:
    def handle(ctx):
        with ctx.read() as app:
            _cli.vm_by_name(app, ctx.args.name)
        pause_vm(ctx.base_dir, ctx.host, ctx.hypervisor, ctx.args.name,
                 pause=prog == "qvm-pause")
    return _cli.run(build_parser(prog), handle, argv)


def main_unpause(argv=None) -> int:
    return main(argv, prog="qvm-unpause")


if __name__ == "__main__":
    raise SystemExit(main())
