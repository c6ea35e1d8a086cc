"""qvm-clone: a new VM of the same class and template with copies of the files (TOOLS.md §7).

The sparse copy runs without the qubes.xml lock; only the registration
holds it (CASES.md B64). On error nothing of the new VM is left behind.
"""
from __future__ import annotations

from qubes.ops.clone import clone_vm
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-clone", "Clone a VM.", force_root=True)
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-p", "--path", dest="dir_path", metavar="DIR",
                   help="directory of the new VM (default: class default)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    return p


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        ctx.info(f"Cloning '{a.src}' to '{a.dst}'...")
        clone_vm(ctx.base_dir, ctx.host, ctx.hypervisor, a.src, a.dst, a.dir_path)
        ctx.info(f"VM '{a.dst}' created.")
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
