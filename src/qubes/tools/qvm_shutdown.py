"""qvm-shutdown: ask VMs to power off; --wait kills what stays up (TOOLS.md §8).

A VM that is already off, or stops before the request reaches it, is done (exit 0).
"""
from __future__ import annotations

from qubes.errors import ExitCode
from qubes.ops.lifecycle import shutdown_vms
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-shutdown", "Shut down VMs cleanly.")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="shut down a netvm even while its clients run")
    p.add_argument("--wait", action="store_true",
                   help="wait until the VMs are down; kill those still up after --timeout")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="with --wait: seconds before a VM is killed (default 60)")
    p.add_argument("--all", action="store_true", help="every running VM except dom0")
    p.add_argument("--exclude", action="append", default=[], metavar="VM",
                   help="with --all: leave this VM running (repeatable)")
    p.add_argument("names", nargs="*", metavar="VM")
    return p


def _validate(parser, args) -> None:
    if args.all == bool(args.names):
        parser.error("name one or more VMs, or use --all")
    if args.exclude and not args.all:
        parser.error("--exclude only goes with --all")


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        names = list(dict.fromkeys(a.names))
        if a.all:
            with ctx.read() as app:
                for name in a.exclude:
                    _cli.vm_by_name(app, name)
                names = [vm.name for vm in app if not vm.is_adminvm
                         and vm.name not in a.exclude]  # the halted ones are skipped
        else:
            with ctx.read() as app:
                for name in names:
                    _cli.vm_by_name(app, name)
        left = shutdown_vms(ctx.base_dir, ctx.host, ctx.hypervisor, names, force=a.force,
                            wait=a.wait, timeout=a.timeout, warn=ctx.warn)
        if left:
            ctx.warn(f"still running: {', '.join(left)}")
            return ExitCode.ERROR
        return ExitCode.OK
    return _cli.run(build_parser(), handle, argv, validate=_validate)


if __name__ == "__main__":
    raise SystemExit(main())
