"""qvm-backup: write a format-3 backup of VMs (TOOLS.md §12, BACKUP-FORMAT.md §7)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from qubes.backup import crypto
from qubes.backup.create import BackupOptions, write_backup
from qubes.backup.format import CHUNK_SIZE
from qubes.backup.report import CollectingReporter
from qubes.backup.selection import archived_vms, make_plan, mark_collection
from qubes.errors import QubesError
from qubes.ops import ensure_halted
from qubes.store import codec
from qubes.tools import _cli
from qubes.tools._backup_common import add_common_options, confirm, read_passphrase
from qubes.util.atomicfile import describe_os_error
from qubes.util.sizes import size_to_human

HMACS = tuple(crypto.HMAC_ALGORITHMS)


def build_parser() -> argparse.ArgumentParser:
    p = _cli.make_parser("qvm-backup", "Back up VMs into a Qubes format-3 backup.",
                         force_root=True)
    p.add_argument("location", metavar="LOCATION",
                   help="directory (gets qubes-YYYY-MM-DDTHHMMSS), file path, or - for stdout")
    p.add_argument("vms", nargs="*", metavar="VM", help="VMs to back up (default: all included)")
    p.add_argument("-x", "--exclude", action="append", default=[], metavar="VM")
    p.add_argument("-e", "--encrypt", action="store_true", help="encrypt (the default)")
    p.add_argument("--no-encrypt", action="store_true", help="do not encrypt (HMAC only)")
    p.add_argument("-E", "--enc-algo", default="aes-256-cbc", help="cipher (default aes-256-cbc)")
    p.add_argument("-H", "--hmac-algo", default="SHA512", type=str.upper, choices=HMACS,
                   help="HMAC digest (default SHA512)")
    p.add_argument("-z", "--compress", action="store_true", help="compress (the default)")
    p.add_argument("--no-compress", action="store_true", help="do not compress")
    p.add_argument("-Z", "--compress-filter", default="gzip", choices=("gzip", "bzip2", "xz"),
                   help="compression filter (default gzip)")
    add_common_options(p)
    return p


def _chunk_size() -> int:
    """100 MiB; QUBES_BACKUP_CHUNK_SIZE (as the peer tools read it) lets tests use small chunks."""
    raw = os.environ.get("QUBES_BACKUP_CHUNK_SIZE", "")
    if raw.isdigit() and int(raw) >= 4096:
        return int(raw)
    return CHUNK_SIZE


def _output_path(location: str) -> str | None:
    if location == "-":
        if sys.stdout is None or sys.stdout.closed:
            raise QubesError("cannot write the backup to standard output: it is closed")
        if sys.stdout.isatty():
            raise QubesError("refusing to write a binary backup to a terminal; "
                             "redirect standard output or give a file or directory")
        return None
    if os.path.isdir(location):
        return os.path.join(location, time.strftime("qubes-%Y-%m-%dT%H%M%S"))
    parent = os.path.dirname(os.path.abspath(location))
    if not os.path.isdir(parent):
        raise QubesError(f"cannot write the backup to {location}: {parent} is not a directory")
    if os.path.lexists(location):
        raise QubesError(f"{location} already exists; not overwriting it")
    return location


def _summary(plan, app, out) -> None:
    print(f"{'VM':>16} {'type':>12} {'size':>12}", file=out)
    for name in plan.vms:
        vm = app[name]
        kind = "Template VM" if vm.is_template else \
            ("NetVM" if vm.provides_network else "AppVM") + (" + Sys" if vm.updateable else "")
        print(f"{name:>16} {kind:>12} {size_to_human(plan.sizes[name]):>12}", file=out)
    print(f"Total size: {size_to_human(plan.total_size)}", file=out)
    if plan.skipped:
        print(f"VMs not selected for backup: {', '.join(plan.skipped)}", file=out)


def _check_space(path: str, needed: int) -> None:
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise QubesError(f"Not enough space available on the backup filesystem: "
                         f"{size_to_human(needed)} needed, {size_to_human(free)} free")


def _prepare(ctx, hide: bool):
    """Select under the write lock, mark backup_* and return (plan, archived qubes.xml)."""
    args = ctx.args
    with ctx.modify() as app:
        plan = make_plan(app, args.vms, args.exclude, hide)
        ensure_halted(ctx.hypervisor, [app[n] for n in plan.vms], "back up")
        mark_collection(app, plan, hide)
        selected = [app[n] for n in plan.vms]
        stubs = [vm for vm in archived_vms(app, plan) if vm not in selected]
        xml = codec.dump_collection(app, vms=selected, stubs=stubs)
    return plan, xml


def _write(ctx, path, plan, xml, options) -> int:
    reporter = CollectingReporter()
    if path is None:
        return write_backup(sys.stdout.buffer, plan, xml, options, reporter)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        with open(partial, "xb") as out:
            written = write_backup(out, plan, xml, options, reporter)
            out.flush()
            os.fsync(out.fileno())
        os.rename(partial, path)
    except OSError as exc:
        raise QubesError(f"cannot write the backup to {path}: {describe_os_error(exc)}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return written


def handle(ctx) -> int:
    args = ctx.args
    encrypted = not args.no_encrypt
    compressed = not args.no_compress
    hide = encrypted
    path = _output_path(args.location)
    info = sys.stderr if path is None else sys.stdout
    with ctx.read() as app:
        plan = make_plan(app, args.vms, args.exclude, hide)
        if not args.quiet:
            _summary(plan, app, info)
    if path is not None:
        _check_space(path, plan.total_size)
    if not confirm("Do you want to proceed?", args.yes):
        return 0
    try:
        crypto.cipher_key_length(args.enc_algo)
    except crypto.UnsupportedAlgorithm as exc:
        raise QubesError(str(exc)) from None
    passphrase = read_passphrase(args.passphrase_file, confirm=True)
    options = BackupOptions(passphrase=passphrase, encrypted=encrypted, compressed=compressed,
                            compression_filter=args.compress_filter, hmac_algorithm=args.hmac_algo,
                            crypto_algorithm=args.enc_algo, chunk_size=_chunk_size(),
                            tmpdir=args.tmpdir or (
                                os.path.dirname(os.path.abspath(path)) if path else None))
    plan, xml = _prepare(ctx, hide)
    _write(ctx, path, plan, xml, options)
    with ctx.modify() as app:
        now = int(time.time())
        for name in plan.vms:
            if app.get(name) is not None:
                app[name].backup_timestamp = now
    if not args.quiet:
        print(f"-> Backup completed{'' if path is None else ': ' + path}.", file=info)
    return 0


def main(argv=None) -> int:
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
