"""qvm-add-template: register an existing template directory (TOOLS.md §7).

Used by template package scripts; always offline (never contacts the
hypervisor).
"""
from __future__ import annotations

from qubes.model.labels import LABELS
from qubes.ops.create import add_template
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-add-template", "Register an existing template in qubes.xml.",
                         force_root=True)
    p.add_argument("-p", "--path", dest="dir_path", metavar="DIR",
                   help="template directory (default: <base>/vm-templates/NAME)")
    p.add_argument("-c", "--conf", dest="conf_file", metavar="CONF", help="config file")
    p.add_argument("--rpm", action="store_true", help="the files are owned by a package")
    p.add_argument("-l", "--label", help=f"one of: {', '.join(LABELS)} (default: black)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("name", metavar="NAME")
    return p


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        add_template(ctx.base_dir, ctx.host, a.name, dir_path=a.dir_path,
                     conf_file=a.conf_file, rpm=a.rpm, label=a.label)
        ctx.info(f"Template '{a.name}' registered.")
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
