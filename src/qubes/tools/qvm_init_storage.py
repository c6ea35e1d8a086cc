"""qvm-init-storage: create an empty qubes.xml (always offline)."""
from __future__ import annotations

from qubes.store.access import init_storage
from qubes.tools import _cli


def build_parser():
    return _cli.make_parser("qvm-init-storage", "Create an empty qubes.xml in QUBES_BASE_DIR.")


def main(argv=None) -> int:
    def handle(ctx):
        init_storage(ctx.base_dir)
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
