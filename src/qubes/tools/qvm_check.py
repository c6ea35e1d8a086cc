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
    p.add_argument("name", metavar="VM")
    return p


def main(argv=None) -> int:
    def handle(ctx):
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
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
