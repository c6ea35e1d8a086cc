"""qubes-prefs: list, get and set the six global settings (TOOLS.md §5).

Always offline: never contacts the hypervisor (R3 `90393c33`). Without
`-l/-g/-s` the action follows the argument count: 0 list, 1 get, 2 set.
"""
from __future__ import annotations

import sys

from qubes.errors import ExitCode, InvalidValueError, QubesError
from qubes.tools import _cli

_FMT = "{0:<18}: {1}"

#: Hyphenated command-line name -> collection attribute.
PROPERTIES = {
    "clockvm": "clockvm",
    "default-fw-netvm": "default_fw_netvm",
    "default-kernel": "default_kernel",
    "default-netvm": "default_netvm",
    "default-template": "default_template",
    "updatevm": "updatevm",
}


def build_parser():
    p = _cli.make_parser("qubes-prefs", "List, get or set the global Qubes settings.")
    p.add_argument("-l", "--list", dest="do_list", action="store_true", help="list (default)")
    p.add_argument("-g", "--get", dest="do_get", action="store_true", help="print one setting")
    p.add_argument("-s", "--set", dest="do_set", action="store_true", help="change one setting")
    p.add_argument("prop", metavar="PROPERTY", nargs="?")
    p.add_argument("value", metavar="VALUE", nargs="?")
    return p


def _attr(untrusted_prop: str) -> str | None:
    """The collection attribute for a name; underscores are accepted too."""
    return PROPERTIES.get(untrusted_prop.replace("_", "-"))


def _render(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.name


def _refuse(message: str) -> int:
    print(f"ERROR: {message}", file=sys.stderr)
    print("Valid properties:", file=sys.stderr)
    for name in PROPERTIES:
        print(f"--> '{name}'", file=sys.stderr)
    return ExitCode.ERROR


def _list(ctx) -> int:
    with ctx.read() as app:
        for name, attr in sorted(PROPERTIES.items()):
            print(_FMT.format(name, _render(getattr(app, attr))))
    return ExitCode.OK


def _get(ctx) -> int:
    attr = _attr(ctx.args.prop)
    if attr is None:
        return _refuse(f"Wrong property name: '{ctx.args.prop}'")
    with ctx.read() as app:
        print(_render(getattr(app, attr)))
    return ExitCode.OK


def _set(ctx) -> int:
    prop, value = ctx.args.prop, ctx.args.value
    attr = None if prop is None else _attr(prop)
    if attr is None:
        return _refuse("Missing property name argument!" if prop is None
                       else f"Wrong property name: '{prop}'")
    if value is None:
        return _refuse(f"Missing value argument for '{prop}'!")
    with ctx.modify() as app:
        try:
            app.set_global(attr, value)
        except InvalidValueError as exc:
            raise InvalidValueError(prop, exc.reason) from None
    return ExitCode.OK


def _handle(ctx) -> int:
    a = ctx.args
    if sum((a.do_list, a.do_get, a.do_set)) > 1:
        raise QubesError("You can provide only one action at once!")
    if a.do_set:
        return _set(ctx)
    if a.do_get:
        if a.prop is None:
            return _refuse("Missing property name argument!")
        return _get(ctx)
    if a.do_list or a.prop is None:
        return _list(ctx)
    return _get(ctx) if a.value is None else _set(ctx)


def _validate(parser, args) -> None:
    if args.do_list and args.prop is not None and not (args.do_get or args.do_set):
        parser.error("-l takes no arguments")
    if args.do_get and args.value is not None and not (args.do_list or args.do_set):
        parser.error("-g takes only the property name")


def main(argv=None) -> int:
    return _cli.run(build_parser(), _handle, argv, validate=_validate)


if __name__ == "__main__":
    raise SystemExit(main())
