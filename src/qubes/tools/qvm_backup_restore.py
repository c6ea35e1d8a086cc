"""qvm-backup-restore: verify or restore a Qubes backup (TOOLS.md §12)."""
from __future__ import annotations

import argparse
import os
import sys

from qubes.backup.report import CollectingReporter
from qubes.backup.restore import BackupSource, RestoreOptions, RestoreResult, make_plan
from qubes.backup.restore_run import (DataPass, adopt_globals, check_complete, discard,
                                      register, staging_dir)
from qubes.errors import QubesError
from qubes.tools import _cli
from qubes.tools._backup_common import add_common_options, confirm, read_passphrase


def build_parser() -> argparse.ArgumentParser:
    p = _cli.make_parser("qvm-backup-restore", "Restore VMs from a Qubes backup, or verify it.",
                         force_root=True)
    p.add_argument("source", metavar="SOURCE", help="backup file, or - for standard input")
    p.add_argument("vms", nargs="*", metavar="VM", help="VMs to restore (default: all)")
    p.add_argument("--verify-only", action="store_true",
                   help="read, authenticate and decode everything; change nothing")
    add_common_options(p)
    return p


def _open_source(path: str):
    if path == "-":
        return sys.stdin.buffer, "standard input"
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "qubes.xml")):
            raise QubesError(f"{path} is a format-1 backup (a directory); this tool restores "
                             "format 3 only: copy the VM directories back by hand")
        raise QubesError(f"{path} is a directory, not a backup file")
    try:
        return open(path, "rb"), path
    except FileNotFoundError:
        raise QubesError(f"backup file not found: {path}") from None
    except OSError as exc:
        raise QubesError(f"cannot open the backup {path}: {exc.strerror}") from None


def _print_plan(plans, verify: bool, out) -> None:
    print("The following VMs will be " + ("verified:" if verify else "restored:"), file=out)
    for plan in plans:
        vm = plan.vm
        template = plan.template or "-"
        netvm = "(default)" if plan.netvm_default else (plan.netvm or "none")
        print(f"  {plan.name:<20} {vm.TYPE:<12} template: {template:<16} netvm: {netvm}", file=out)


def _report(result: RestoreResult, plans, reporter, verify: bool) -> int:
    for problem in reporter.problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    for warning in reporter.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    for message in reporter.messages:
        print(message)
    word = "verified" if verify else "restored"
    for plan in plans:
        if plan.failed:
            print(f"VM {plan.name}: FAILED: {plan.failed}", file=sys.stderr)
        else:
            print(f"VM {plan.name}: {word}")
    if any(p.failed for p in plans) or reporter.problems:
        print(f"ERROR: the backup was not {word} completely "
              f"({sum(1 for p in plans if p.failed)} of {len(plans)} VMs failed)", file=sys.stderr)
        return 1
    print(f"-> {'Verification' if verify else 'Restore'} completed: {len(plans)} VMs {word}.")
    return 0


def handle(ctx) -> int:
    args = ctx.args
    stream, label = _open_source(args.source)
    if args.source == "-" and args.passphrase_file == "-":
        raise QubesError("standard input cannot carry both the backup and the passphrase")
    passphrase = read_passphrase(args.passphrase_file, confirm=False)
    options = RestoreOptions(passphrase=passphrase, vms=tuple(args.vms),
                             verify_only=args.verify_only, tmpdir=args.tmpdir)
    reporter = CollectingReporter()
    with stream:
        source = BackupSource(stream, label, passphrase)
        if args.verify_only:
            plans = make_plan(source, None, options)
        else:
            with ctx.read() as target:
                plans = make_plan(source, target, options)
        if not args.quiet:
            _print_plan(plans, args.verify_only, sys.stdout)
        if not confirm("Do you want to proceed?", args.yes):
            return 0
        return _run(ctx, source, plans, options, reporter)


def _run(ctx, source, plans, options, reporter) -> int:
    result = RestoreResult()
    staging = None if options.verify_only else staging_dir(ctx.base_dir)
    try:
        data = DataPass(source, plans, staging, options, reporter)
        data.run()
        check_complete(plans, data)
        if not options.verify_only and any(not p.failed for p in plans):
            moved = []
            try:
                with ctx.modify() as app:
                    moved = register(app, plans, staging, reporter, result)
                    adopt_globals(app, source.collection, result.restored, reporter)
            except BaseException:
                for path in moved:  # the save failed: nothing stays half-registered
                    discard(path)
                raise
    finally:
        discard(staging)
    return _report(result, plans, reporter, options.verify_only)


def main(argv=None) -> int:
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
