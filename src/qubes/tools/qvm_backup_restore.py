"""qvm-backup-restore: verify or restore a Qubes backup (TOOLS.md §12)."""
from __future__ import annotations

import argparse
import sys

from qubes.backup.restore import RestoreOptions
from qubes.errors import QubesError
from qubes.ops.restore import CommandSource, FileSource, StreamSource, execute, open_backup
from qubes.tools import _cli
from qubes.tools._backup_common import add_common_options, confirm, read_passphrase
from qubes.tools._progress import ProgressReporter, add_progress_option


def build_parser() -> argparse.ArgumentParser:
    p = _cli.make_parser("qvm-backup-restore", "Restore VMs from a Qubes backup, or verify it.",
                         force_root=True)
    p.add_argument("source", metavar="SOURCE", nargs="?",
                   help="backup file, or - for standard input")
    p.add_argument("vms", nargs="*", metavar="VM", help="VMs to restore (default: all)")
    p.add_argument("--source-command", metavar="CMD",
                   help="read the backup from the standard output of a shell command")
    p.add_argument("--verify-only", action="store_true",
                   help="read, authenticate and decode everything; change nothing")
    add_common_options(p)
    add_progress_option(p)
    return p


def _origin(args):
    if args.source_command:
        if args.source is not None:
            args.vms.insert(0, args.source)  # with --source-command every name is a VM
        return CommandSource(args.source_command)
    if args.source is None:
        raise _cli.UsageError("the following arguments are required: SOURCE "
                              "(or --source-command CMD)")
    if args.source == "-":
        if args.passphrase_file == "-":
            raise QubesError("standard input cannot carry both the backup and the passphrase")
        return StreamSource(sys.stdin.buffer)
    return FileSource(args.source)


def _print_plan(plans, verify: bool, out) -> None:
    print("The following VMs will be " + ("verified:" if verify else "restored:"), file=out)
    for plan in plans:
        template = plan.template or "-"
        netvm = "(default)" if plan.netvm_default else (plan.netvm or "none")
        print(f"  {plan.name:<20} {plan.vm.TYPE:<12} template: {template:<16} netvm: {netvm}",
              file=out)


def _report(plans, reporter, verify: bool) -> int:
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
    origin = _origin(args)
    try:
        passphrase = read_passphrase(args.passphrase_file, confirm=False)
        options = RestoreOptions(passphrase=passphrase, vms=tuple(args.vms),
                                 verify_only=args.verify_only, tmpdir=args.tmpdir)
        run = open_backup(ctx.base_dir, ctx.host, origin, options, warn=ctx.warn)
        if not args.quiet:
            _print_plan(run.plans, args.verify_only, sys.stdout)
        if not confirm("Do you want to proceed?", args.yes):
            return 0
        reporter = ProgressReporter(args.progress)
        try:
            execute(ctx.base_dir, ctx.host, run, reporter)
        finally:
            reporter.finish(ok=sys.exc_info()[0] is None and not reporter.problems)
        origin.check()
    finally:
        origin.close()
    return _report(run.plans, reporter, args.verify_only)


def main(argv=None) -> int:
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
