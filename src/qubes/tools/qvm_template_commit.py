"""qvm-template-commit and qvm-revert-template-changes (TOOLS.md §11)."""
from __future__ import annotations

from qubes.ops import templates
from qubes.tools import _cli
from qubes.tools._backup_common import confirm


def build_parser(prog: str = "qvm-template-commit"):
    if prog == "qvm-template-commit":
        p = _cli.make_parser(prog, "Write a template's pending changes into its root image.")
    else:
        p = _cli.make_parser(prog, "Drop a template's changes made since the last commit.")
        p.add_argument("--force", action="store_true", help="do not ask")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("name", metavar="TEMPLATE")
    return p


def main(argv=None, prog: str = "qvm-template-commit") -> int:
    def handle(ctx):
        a = ctx.args
        if prog == "qvm-template-commit":
            done = templates.commit_named(ctx.base_dir, ctx.host, ctx.hypervisor, a.name)
            ctx.info(f"{a.name}: changes committed" if done else f"{a.name}: no changes")
            return
        if not confirm(f"Drop the changes made in '{a.name}' since its last commit?", a.force):
            return 1
        done = templates.revert_named(ctx.base_dir, ctx.host, ctx.hypervisor, a.name)
        ctx.info(f"{a.name}: changes dropped" if done else f"{a.name}: no changes")
    return _cli.run(build_parser(prog), handle, argv)


def main_revert(argv=None) -> int:
    return main(argv, prog="qvm-revert-template-changes")


if __name__ == "__main__":
    raise SystemExit(main())
