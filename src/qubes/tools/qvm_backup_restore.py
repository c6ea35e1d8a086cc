"""qvm-backup-restore: verify or restore a Qubes backup (TOOLS.md §12)."""
from __future__ import annotations

import argparse
import getpass
import os
import sys

from qubes.backup.plan import PlanOptions
from qubes.backup.restore import HomeOptions, RestoreOptions
from qubes.errors import QubesError
from qubes.ops.restore import (CommandSource, FileSource, StreamSource, execute, finish_source,
                               open_backup)
from qubes.tools import _cli
from qubes.tools._backup_common import add_common_options, confirm, read_passphrase
from qubes.tools._progress import ProgressReporter, add_progress_option
from qubes.util.text import terminal_safe


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
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--skip-broken", action="store_true",
                   help="leave out VMs whose template or netvm is missing")
    p.add_argument("--ignore-missing", action="store_true",
                   help="restore them with the default template / netvm instead")
    p.add_argument("--skip-conflicting", action="store_true",
                   help="leave out VMs whose name exists here (the default)")
    p.add_argument("--rename-conflicting", action="store_true",
                   help="restore them as NAME1, NAME2, ...; references follow")
    p.add_argument("--replace-template", action="append", default=[], metavar="OLD:NEW",
                   help="use template NEW for VMs based on OLD (repeatable)")
    p.add_argument("-x", "--exclude", action="append", default=[], metavar="VM",
                   help="do not restore VM (repeatable)")
    p.add_argument("--skip-dom0-home", action="store_true", help="do not restore dom0's home")
    p.add_argument("--log", metavar="FILE",
                   help="also append the final report (every error, every VM) to FILE")
    p.add_argument("--dom0-home-dir", metavar="DIR",
                   help="where home-restore-<time>/ is made (default: your home directory)")
    p.add_argument("--ignore-username-mismatch", action="store_true",
                   help="restore a home backed up under another user name")
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


def _plan_options(args) -> PlanOptions:
    replace = []
    for pair in args.replace_template:
        old, sep, new = pair.partition(":")
        if not sep or not old or not new:
            raise _cli.UsageError(f"--replace-template takes OLD:NEW, not '{pair}'")
        replace.append((old, new))
    if args.skip_conflicting and args.rename_conflicting:
        raise _cli.UsageError("--skip-conflicting and --rename-conflicting exclude each other")
    if args.skip_broken and args.ignore_missing:
        raise _cli.UsageError("--skip-broken and --ignore-missing exclude each other")
    return PlanOptions(vms=tuple(args.vms), exclude=tuple(args.exclude),
                       verify_only=args.verify_only, skip_broken=args.skip_broken,
                       ignore_missing=args.ignore_missing,
                       rename_conflicting=args.rename_conflicting,
                       replace_template=tuple(replace))


def _print_plan(plans, verify: bool, out) -> None:
    print("The following VMs will be " + ("verified:" if verify else "restored:"), file=out)
    for plan in plans:
        if plan.skip:
            print(f"  {plan.name:<20} SKIPPED: {plan.skip}", file=out)
            continue
        template = plan.template or "-"
        netvm = "(default)" if plan.netvm_default else (plan.netvm or "none")
        name = plan.name if plan.target_name == plan.name else f"{plan.name} -> {plan.target_name}"
        print(f"  {name:<20} {plan.vm.TYPE:<12} template: {template:<16} netvm: {netvm}",
              file=out)
        for note in plan.notes:
            print(f"      {note}", file=out)


def _report_lines(plans, reporter, verify: bool, requested: tuple[str, ...]):
    """(is_error, text) lines of the final report, shown on the terminal and in --log."""
    lines = [(True, f"ERROR: {p}") for p in reporter.problems]
    lines += [(True, f"WARNING: {w}") for w in reporter.warnings]
    lines += [(False, m) for m in reporter.messages]
    word = "verified" if verify else "restored"
    for plan in plans:
        if plan.failed:
            lines.append((True, f"VM {plan.name}: FAILED: {plan.failed}"))
        elif plan.skip:
            lines.append((False, f"VM {plan.name}: skipped: {plan.skip}"))
        else:
            lines.append((False, f"VM {plan.name}: {word}" + (
                f" as {plan.target_name}" if plan.target_name != plan.name else "")))
    missed = [p for p in plans if p.failed or (p.skip and p.name in requested)]
    if missed or reporter.problems:
        why = f"{len(missed)} of {len(plans)} VMs did not come back" if missed else \
            "see the errors above"
        lines.append((True, f"ERROR: the backup was not {word} completely ({why})"))
    else:
        done = sum(1 for p in plans if not p.skip)
        lines.append((False, f"-> {'Verification' if verify else 'Restore'} completed: "
                             f"{done} VMs {word}."))
    return lines


def _report(plans, reporter, verify: bool, requested: tuple[str, ...], log: str | None) -> int:
    lines = _report_lines(plans, reporter, verify, requested)
    for is_error, text in lines:
        print(text, file=sys.stderr if is_error else sys.stdout)
    if log is not None:
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.writelines(terminal_safe(text) + "\n" for _e, text in lines)
        except OSError as exc:
            print(f"WARNING: cannot write the log {log}: {exc.strerror}", file=sys.stderr)
    return 1 if lines[-1][1].startswith("ERROR:") else 0


def handle(ctx) -> int:
    args = ctx.args
    origin = _origin(args)
    source_finished = False
    try:
        passphrase = read_passphrase(args.passphrase_file, confirm=False)
        home = HomeOptions(user=getpass.getuser(),
                           parent=args.dom0_home_dir or os.path.expanduser("~"),
                           skip=args.skip_dom0_home,
                           ignore_username_mismatch=args.ignore_username_mismatch)
        if not home.skip and not os.path.isdir(home.parent):
            raise QubesError(f"--dom0-home-dir {home.parent} is not a directory")
        if args.tmpdir is not None and not os.path.isdir(args.tmpdir):
            raise QubesError(f"--tmpdir {args.tmpdir} is not a directory")
        options = RestoreOptions(passphrase=passphrase, plan=_plan_options(args),
                                 tmpdir=args.tmpdir, home=home)
        run = open_backup(ctx.base_dir, ctx.host, origin, options, warn=ctx.warn)
        if not args.quiet or args.dry_run:
            _print_plan(run.plans, args.verify_only, sys.stdout)
        if args.dry_run:
            return 0
        if not confirm("Do you want to proceed?", args.yes):
            return 0
        reporter = ProgressReporter(args.progress)
        try:
            execute(ctx.base_dir, ctx.host, run, reporter)
            finish_source(origin, reporter)  # its failure is a problem of the report
            source_finished = True
        finally:
            reporter.finish(ok=sys.exc_info()[0] is None and not reporter.problems)
    finally:
        if not source_finished:
            origin.close()
    return _report(run.plans, reporter, args.verify_only, tuple(args.vms), args.log)


def main(argv=None) -> int:
    return _cli.run(build_parser(), handle, argv)


if __name__ == "__main__":
    raise SystemExit(main())
