"""qvm-create: a new VM (TOOLS.md §7)."""
from __future__ import annotations

import argparse

from qubes.errors import QubesError
from qubes.model.labels import LABELS
from qubes.ops.create import CreateOptions, create_vm
from qubes.tools import _cli

_TYPE_SWITCHES = {"proxy": "ProxyVM", "net": "NetVM", "hvm": "HVM", "hvm_template": "TemplateHVM"}


def build_parser() -> argparse.ArgumentParser:
    p = _cli.make_parser("qvm-create", "Create a new VM.", force_root=True)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-l", "--label", help=f"one of: {', '.join(LABELS)} (mandatory)")
    p.add_argument("-t", "--template", help="template (default: default_template)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("-p", "--proxy", action="store_true", help="create a ProxyVM")
    kind.add_argument("-n", "--net", action="store_true", help="create a NetVM")
    kind.add_argument("-H", "--hvm", action="store_true", help="create an HVM")
    kind.add_argument("--hvm-template", action="store_true", help="create a TemplateHVM")
    kind.add_argument("--class", dest="vm_class",
                      help="VM class: AppVM, TemplateVM, NetVM, ProxyVM, HVM, TemplateHVM")
    p.add_argument("-s", "--standalone", action="store_true",
                   help="standalone VM: copy the template's root image")
    p.add_argument("-r", "--root-copy-from", metavar="FILE", help="use a copy of FILE as root.img")
    p.add_argument("-R", "--root-move-from", metavar="FILE", help="move FILE in as root.img")
    p.add_argument("-m", "--mem", type=int, help="initial memory in MB")
    p.add_argument("-c", "--vcpus", type=int, help="number of vCPUs")
    p.add_argument("-i", "--internal", action="store_true", help="internal VM (not in menus)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _options(args) -> CreateOptions:
    if not args.label:
        raise QubesError(f"You must choose a label for the new VM by passing the --label option.\n"
                         f"Possible values are: {', '.join(LABELS)}")
    if args.label.lower() not in LABELS:
        raise QubesError(f"Wrong label name '{args.label}'; possible values are: {', '.join(LABELS)}")
    vm_class = args.vm_class or next(
        (cls for flag, cls in _TYPE_SWITCHES.items() if getattr(args, flag)), "AppVM")
    return CreateOptions(
        name=args.name, vm_class=vm_class, label=args.label, template=args.template,
        standalone=args.standalone, root_copy_from=args.root_copy_from,
        root_move_from=args.root_move_from, memory=args.mem, vcpus=args.vcpus,
        internal=args.internal)


def main(argv=None) -> int:
    def handle(ctx):
        create_vm(ctx.base_dir, ctx.host, _options(ctx.args))
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
