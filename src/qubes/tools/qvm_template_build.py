"""qvm-template-build: build a bootable template (only `tiny` so far) and register it."""
from __future__ import annotations

from qubes.model.labels import LABELS
from qubes.ops.template_build import build_tiny
from qubes.tools import _cli


def build_parser():
    p = _cli.make_parser("qvm-template-build",
                         "Build the tiny template: Debian's cloud kernel, a busybox system.")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--name", default="tiny", help="template name (default: tiny)")
    p.add_argument("-l", "--label", help=f"one of: {', '.join(LABELS)} (default: black)")
    p.add_argument("kind", choices=["tiny"], help="what to build")
    return p


def main(argv=None) -> int:
    def handle(ctx):
        a = ctx.args
        version = build_tiny(ctx.base_dir, ctx.host, a.name, label=a.label)
        ctx.info(f"Template '{a.name}' built and registered (kernel {version}).")
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
