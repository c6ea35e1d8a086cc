"""qvm-kill: stop a VM at once, as pulling the power (TOOLS.md §8)."""
from __future__ import annotations

from qubes.ops.lifecycle import kill_vm
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-kill", "Stop a VM immediately.")
    p.add_argument("name", metavar="VM")
    return p


def main(argv=None) -> int:
    def handle(ctx):
        with ctx.read() as app:
            _cli.vm_by_name(app, ctx.args.name)
        kill_vm(ctx.base_dir, ctx.host, ctx.hypervisor, ctx.args.name, warn=ctx.warn)
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
