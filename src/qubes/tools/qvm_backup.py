"""qvm-backup: write a format-3 backup of VMs (TOOLS.md §12, BACKUP-FORMAT.md §7)."""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from qubes.backup import crypto
from qubes.backup.create import BackupOptions
from qubes.backup.format import CHUNK_SIZE
from qubes.backup.hometree import HomeTree
from qubes.errors import QubesError
from qubes.ops.backup import (BackupRequest, CommandDestination, FileDestination,
                              StreamDestination, check_space, preview, run_backup)
from qubes.tools import _cli
from qubes.tools._backup_common import add_common_options, confirm, read_passphrase
from qubes.tools._progress import ProgressReporter, add_progress_option
from qubes.util.sizes import size_to_human

HMACS = tuple(crypto.HMAC_ALGORITHMS)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.make_parser("qvm-backup", "Back up VMs into a Qubes format-3 backup.",
                         force_root=True)
    p.add_argument("location", metavar="LOCATION", nargs="?",
                   help="directory (gets qubes-YYYY-MM-DDTHHMMSS), file path, or - for stdout")
    p.add_argument("vms", nargs="*", metavar="VM", help="VMs to back up (default: all included)")
    p.add_argument("-x", "--exclude", action="append", default=[], metavar="VM")
    p.add_argument("--dom0-home", action="store_true",
                   help="also back up your home directory (links kept as links)")
    p.add_argument("--dest-command", metavar="CMD",
                   help="send the backup to the standard input of a shell command")
    p.add_argument("--dest-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="stop a destination command that takes no data for this long "
                        "(default 300)")
    p.add_argument("-e", "--encrypt", action="store_true", help="encrypt (the default)")
    p.add_argument("--no-encrypt", action="store_true", help="do not encrypt (HMAC only)")
    p.add_argument("-E", "--enc-algo", default="aes-256-cbc", help="cipher (default aes-256-cbc)")
    p.add_argument("-H", "--hmac-algo", default="SHA512", type=str.upper, choices=HMACS,
                   help="HMAC digest (default SHA512)")
    p.add_argument("-z", "--compress", action="store_true", help="compress (the default)")
    p.add_argument("--no-compress", action="store_true", help="do not compress")
    p.add_argument("-Z", "--compress-filter", default="gzip", choices=("gzip", "bzip2", "xz"),
                   help="compression filter (default gzip)")
    p.add_argument("--compress-level", type=int, choices=range(1, 10), metavar="1-9",
                   help="compression level (default: the filter's own, 6 for gzip)")
    add_common_options(p)
    add_progress_option(p)
    return p


def _chunk_size() -> int:
    """100 MiB; QUBES_BACKUP_CHUNK_SIZE (as the peer tools read it) lets tests use small chunks."""
    raw = os.environ.get("QUBES_BACKUP_CHUNK_SIZE", "")
    if raw.isdigit() and int(raw) >= 4096:
        return int(raw)
    return CHUNK_SIZE


def _destination(args):
    if args.dest_command:
        if args.location is not None:
            args.vms.insert(0, args.location)  # with --dest-command every name is a VM
        return CommandDestination(args.dest_command, args.dest_timeout)
    if args.location is None:
        raise _cli.UsageError("the following arguments are required: LOCATION "
                              "(or --dest-command CMD)")
    if args.location == "-":
        if sys.stdout is None or sys.stdout.closed:
            raise QubesError("cannot write the backup to standard output: it is closed")
        if sys.stdout.isatty():
            raise QubesError("refusing to write a binary backup to a terminal; "
                             "redirect standard output or give a file or directory")
        return StreamDestination(sys.stdout.buffer)
    return FileDestination(args.location)


def _summary(plan, vms, out) -> None:
    print(f"{'VM':>16} {'type':>12} {'size':>12}", file=out)
    for name in plan.vms:
        vm = vms[name]
        kind = "Template VM" if vm.is_template else \
            ("NetVM" if vm.provides_network else "AppVM") + (" + Sys" if vm.updateable else "")
        print(f"{name:>16} {kind:>12} {size_to_human(plan.sizes[name]):>12}", file=out)
    if plan.home is not None:
        print(f"{'dom0':>16} {'User home':>12} {size_to_human(plan.sizes['dom0']):>12}", file=out)
    print(f"Total size: {size_to_human(plan.total_size)}", file=out)
    if plan.skipped:
        print(f"VMs not selected for backup: {', '.join(plan.skipped)}", file=out)


def _options(args, passphrase: bytes, destination) -> BackupOptions:
    try:
        crypto.cipher_key_length(args.enc_algo)
    except crypto.UnsupportedAlgorithm as exc:
        raise QubesError(str(exc)) from None
    tmpdir = args.tmpdir
    if tmpdir is None and isinstance(destination, FileDestination):
        tmpdir = os.path.dirname(os.path.abspath(destination.path))
    if tmpdir is not None and not os.path.isdir(tmpdir):
        raise QubesError(f"--tmpdir {tmpdir} is not a directory")
    return BackupOptions(passphrase=passphrase, encrypted=not args.no_encrypt,
                         compressed=not args.no_compress, compression_filter=args.compress_filter,
                         compression_level=args.compress_level, hmac_algorithm=args.hmac_algo,
                         crypto_algorithm=args.enc_algo, chunk_size=_chunk_size(), tmpdir=tmpdir)


def _home(args) -> HomeTree | None:
    if not args.dom0_home:
        return None
    return HomeTree(os.path.expanduser("~"), getpass.getuser())


def handle(ctx) -> int:
    args = ctx.args
    destination = _destination(args)
    info = sys.stdout if isinstance(destination, FileDestination) else sys.stderr
    home = _home(args)
    probe = BackupRequest(tuple(args.vms), tuple(args.exclude),
                          _options(args, b"-", destination), home)
    plan, vms = preview(ctx.base_dir, ctx.host, probe, warn=ctx.warn)
    if not args.quiet:
        _summary(plan, vms, info)
    check_space(destination, plan)
    if not confirm("Do you want to proceed?", args.yes):
        return 0
    passphrase = read_passphrase(args.passphrase_file, confirm=True)
    request = BackupRequest(tuple(args.vms), tuple(args.exclude),
                            _options(args, passphrase, destination), home)
    reporter = ProgressReporter(args.progress)
    try:
        _plan, written = run_backup(ctx.base_dir, ctx.host, ctx.hypervisor, request,
                                    destination, reporter)
    finally:
        reporter.finish(ok=sys.exc_info()[0] is None)
        for path in getattr(destination, "removed_stale", ()):
            ctx.warn(f"removed {path}, left by a backup that was killed")
    if not args.quiet:
        print(f"-> Backup completed: {written} bytes written to {destination.label}.",
              file=info)
    return 0


def main(argv=None) -> int:
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
