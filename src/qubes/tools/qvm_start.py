"""qvm-start: start a VM and wait until its guest says it is ready (TOOLS.md §8)."""
from __future__ import annotations

from qubes.ops.lifecycle import start_dispvm, start_vm
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-start", "Start a VM (and the netvms it needs).")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the domain runs, without waiting for the guest")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="how long to wait for the guest (default: the VM's qrexec_timeout)")
    p.add_argument("--dispvm", metavar="TEMPLATE",
                   help="start a new DisposableVM on TEMPLATE (removed when it stops)")
    p.add_argument("--cdrom", metavar="[dom0:]PATH",
                   help="attach the image or block device PATH of this host as a read-only "
                        "CD-ROM, for this start only (VMs that boot from disk: HVMs)")
    p.add_argument("name", metavar="VM", nargs="?")
    return p


def _validate(parser, args) -> None:
    if bool(args.name) == bool(args.dispvm):
        parser.error("name a VM, or give --dispvm TEMPLATE")
    if args.dispvm and args.cdrom is not None:
        parser.error("--cdrom is for a VM that boots from disk, not for --dispvm")


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        if a.dispvm:
            result = start_dispvm(ctx.base_dir, ctx.host, ctx.hypervisor, a.dispvm,
                                  timeout=a.timeout, warn=ctx.warn)
        else:
            result = start_vm(ctx.base_dir, ctx.host, ctx.hypervisor, a.name,
                              wait=not a.no_wait, timeout=a.timeout, cdrom=a.cdrom)
        for note in result.notes:
            ctx.warn(note)
        for name in result.started:
            took = result.ready_seconds.get(name)
            ctx.info(f"{name}: started" + (f", ready after {took:.1f} s" if took else ""))
    return _cli.run(build_parser(), handle, argv, validate=_validate)


if __name__ == "__main__":
    raise SystemExit(main())
