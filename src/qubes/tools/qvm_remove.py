"""qvm-remove: unregister a VM and delete its files (TOOLS.md §7).

Refuses running VMs, templates with dependent VMs and (without --just-db)
VMs installed by RPM. File-removal problems only warn.
"""
from __future__ import annotations

from qubes.ops.remove import remove_vm
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-remove", "Remove a VM.", force_root=True)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--just-db", action="store_true",
                   help="remove only the qubes.xml entry, keep the files")
    p.add_argument("name", metavar="VM")
    return p


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        warnings = remove_vm(ctx.base_dir, ctx.host, ctx.hypervisor, a.name, just_db=a.just_db)
        for warning in warnings:
            ctx.warn(warning)
        ctx.info(f"VM '{a.name}' removed" + (" from qubes.xml (files kept)." if a.just_db else "."))
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
