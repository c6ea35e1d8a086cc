"""Restore or verify a backup: plan against the target, one data pass, then register.

The data goes to a staging directory inside the target base directory; a VM
is registered (under the write lock) only once all of its data is there. An
interruption or failure removes the staging directory and undoes every move
of a VM directory whose registration was not saved.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

from qubes.backup import space
from qubes.backup.report import Problem, Reporter
from qubes.backup.plan import VMPlan, make_plan
from qubes.backup.restore import BackupSource, RestoreOptions, RestoreResult
from qubes.backup.restore_run import (DataPass, adopt_globals, check_complete, discard,
                                      register, staging_dir)
from qubes.errors import QubesError
from qubes.ops.backup import kill_group
from qubes.store.access import modify_collection, read_collection
from qubes.util.atomicfile import flushing, sync_filesystem
from qubes.util.text import decode_output

STDERR_LIMIT = 4096


class FileSource:
    def __init__(self, path: str):
        if os.path.isdir(path):
            if os.path.exists(os.path.join(path, "qubes.xml")):
                raise QubesError(f"{path} is a format-1 backup (a directory); this tool "
                                 "restores format 3 only: copy the VM directories back by hand")
            raise QubesError(f"{path} is a directory, not a backup file")
        try:
            self.stream = open(path, "rb")
        except FileNotFoundError:
            raise QubesError(f"backup file not found: {path}") from None
        except OSError as exc:
            raise QubesError(f"cannot open the backup {path}: {exc.strerror}") from None
        self.label = path

    def close(self) -> None:
        self.stream.close()

    def check(self) -> None:
        pass


class StreamSource:
    def __init__(self, stream, label: str = "standard input"):
        self.stream = stream
        self.label = label

    def close(self) -> None:
        pass

    def check(self) -> None:
        pass


class CommandSource:
    """A shell command whose standard output is the backup (`--source-command`)."""

    def __init__(self, command: str):
        self.label = f"command '{command}'"
        self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        self.stream = self._proc.stdout
        self._stderr: str | None = None

    def check(self) -> None:
        """A command that failed is reported with its exit status and its stderr."""
        code = self._proc.poll()
        if code not in (None, 0):
            raise self._failure(code)

    def _failure(self, code: int) -> QubesError:
        if self._stderr is None:  # read once: check() and close() may both report
            self._stderr = decode_output(self._proc.stderr.read(STDERR_LIMIT))
        err = self._stderr
        return QubesError(f"the source {self.label} failed with exit status {code}"
                          + (f": {err}" if err else ""))

    def close(self) -> None:
        if self._proc.poll() is None:
            kill_group(self._proc)
        code = self._proc.wait()
        self.stream.close()
        if code not in (0, -9):
            raise self._failure(code)


def finish_source(origin, reporter: Reporter) -> None:
    """Close the source after a data pass; a source that failed (a command's exit status
    and stderr) becomes one more problem of the report, which still tells every VM's
    outcome: the VMs read before the failure may well be complete."""
    failure = None
    try:
        origin.check()
    except QubesError as exc:
        failure = exc
    try:
        origin.close()
    except QubesError as exc:
        failure = failure or exc
    if failure is not None:
        reporter.problem(Problem("retrieve", str(failure)))


@dataclass
class RestoreRun:
    """What the tool shows: the plan first, the outcome after `execute`."""

    source: BackupSource
    plans: list[VMPlan]
    options: RestoreOptions
    result: RestoreResult | None = None


def open_backup(base_dir: str, host, origin, options: RestoreOptions, warn=None) -> RestoreRun:
    """Authenticate the header, read qubes.xml and plan; nothing is written."""
    try:
        source = BackupSource(origin.stream, origin.label, options.passphrase)
    except QubesError:
        origin.check()  # a failed source command explains a broken stream better
        raise
    if options.verify_only:
        plans = make_plan(source.collection, None, options.plan)
    else:
        with read_collection(base_dir, host, warn=warn) as target:
            plans = make_plan(source.collection, target, options.plan)
        check_space(base_dir, plans)
    return RestoreRun(source, plans, options)


def check_space(base_dir: str, plans: list[VMPlan]) -> None:
    """Refuse before writing anything when the VMs cannot fit (B14)."""
    needed = sum(p.vm.backup_size for p in plans if not p.skip)
    free, fs_size = space.free_space(base_dir)
    reserve = space.space_reserve(fs_size)  # the data pass keeps it free too (B13)
    if needed + reserve > free:
        raise QubesError(f"not enough space in {base_dir} to restore: {needed} bytes needed, "
                         f"{free} bytes available, {reserve} of them kept free")


def execute(base_dir: str, host, run: RestoreRun, reporter: Reporter) -> RestoreResult:
    """The data pass, the completeness check, and registration of every complete VM."""
    result = RestoreResult()
    staging = None if run.options.verify_only else staging_dir(base_dir, reporter)
    data = None
    try:
        data = DataPass(run.source, run.plans, staging, run.options, reporter)
        home = run.options.home
        with contextlib.nullcontext() if staging is None else \
                flushing([staging] + ([home.parent] if home else [])):
            data.run()
        if not run.options.verify_only:
            sync_filesystem(staging)  # the data is on disk before any VM is registered
            if data.home_dir is not None:
                sync_filesystem(data.home_dir)
        check_complete(run.plans, data)
        if not run.options.verify_only and any(not p.failed and not p.skip for p in run.plans):
            with modify_collection(base_dir, host) as app:
                register(app, run.plans, staging, reporter, result)
                adopt_globals(app, run.source.collection, run.plans, reporter)
    except BaseException as exc:
        if staging is not None:
            exc.add_note(f"removed the partly restored data in {staging}")
        if data is not None and data.home_dir is not None:
            exc.add_note(f"removed the partly restored home {data.home_dir}")
            data.discard_home()
        raise
    finally:
        discard(staging)
    if data.home_dir is not None:
        reporter.message(f"dom0 home restored into {data.home_dir}")
    run.result = result
    return result
