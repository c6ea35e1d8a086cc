"""Back up VMs: select under the lock, write outside it, stamp the time on success.

Destinations own their clean-up: a file is written as `<name>.partial-<pid>`
and renamed only when complete; a command's failure is reported with its exit
status and stderr. An interrupted or failed run leaves no partial output and
notes what it removed on the exception.
"""
from __future__ import annotations

import os
import re
import select
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

from qubes.backup.create import BackupOptions, write_backup
from qubes.backup.errors import BackupOutputError
from qubes.backup.hometree import HomeTree
from qubes.backup.report import Reporter
from qubes.backup.selection import BackupPlan, archived_vms, make_plan, mark_collection
from qubes.errors import QubesError
from qubes.ops import ensure_halted
from qubes.store import codec
from qubes.store.access import modify_collection, read_collection
from qubes.util.atomicfile import describe_os_error
from qubes.util.flock import lock, try_lock
from qubes.util.text import decode_output

STDERR_LIMIT = 4096


def kill_group(proc: subprocess.Popen) -> None:
    """Stop a shell command and everything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


class FileDestination:
    """A backup file, written under a temporary name and renamed when complete.

    The partial file is flock'ed while it is written. A partial file that a
    killed run (`kill -9`) left in the same place is removed when the next
    backup there opens its own (B57): one whose lock nobody holds and whose pid
    is not running. Where the filesystem has no locks, nothing is removed.
    """

    def __init__(self, location: str):
        stem = re.escape(os.path.basename(location))
        if os.path.isdir(location):
            location = os.path.join(location, time.strftime("qubes-%Y-%m-%dT%H%M%S"))
            stem = r"qubes-\d{4}-\d\d-\d\dT\d{6}"
        self._stale = re.compile(stem + r"\.partial-(\d+)")
        self.removed_stale: list[str] = []
        parent = os.path.dirname(os.path.abspath(location))
        if not os.path.isdir(parent):
            raise QubesError(f"cannot write the backup to {location}: {parent} is not a directory")
        if os.path.lexists(location):
            raise QubesError(f"{location} already exists; not overwriting it")
        self.path = location
        self.partial = f"{location}.partial-{os.getpid()}"
        self._file = None

    @property
    def label(self) -> str:
        return self.path

    def free_space(self) -> int | None:
        st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        return st.f_bavail * st.f_frsize

    def open(self) -> BinaryIO:
        try:
            self._file = open(self.partial, "xb")
            lock(self._file.fileno())
        except OSError as exc:
            if self._file is not None:
                self.abort()
            raise QubesError(f"cannot write the backup to {self.path}: "
                             f"{describe_os_error(exc)}") from None
        self._remove_stale()
        return self._file

    def _remove_stale(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            entries = list(os.scandir(parent))
        except OSError:
            return
        for entry in entries:
            match = self._stale.fullmatch(entry.name)
            if match and entry.path != os.path.abspath(self.partial) and \
                    _abandoned(entry.path, int(match.group(1))):
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue
                self.removed_stale.append(entry.path)

    def commit(self, written: int) -> None:
        """Make the file final, after checking it holds every byte written (B58)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            size = os.fstat(self._file.fileno()).st_size
            if size != written:
                raise QubesError(f"the backup file {self.partial} holds {size} bytes, "
                                 f"{written} were written: the destination lost data")
            self._file.close()
            os.rename(self.partial, self.path)
        except OSError as exc:
            raise QubesError(f"cannot write the backup to {self.path}: "
                             f"{describe_os_error(exc)}") from None

    def abort(self) -> str | None:
        if self._file is not None:
            self._file.close()
        if os.path.exists(self.partial):
            os.unlink(self.partial)
            return f"the partial backup {self.partial}"
        return None


def _abandoned(path: str, pid: int) -> bool:
    """True for a partial backup file that no running backup writes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not try_lock(fd):
            return False  # not a plain file, or no locks here: leave it alone
    except BlockingIOError:
        return False  # locked: its backup is running
    finally:
        os.close(fd)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False  # its pid lives: perhaps a backup that has not locked its file yet


class StreamDestination:
    """An already open stream such as standard output; nothing to remove on failure."""

    label = "standard output"

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def free_space(self) -> None:
        return None

    def open(self) -> BinaryIO:
        return self.stream

    def commit(self, written: int) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise BackupOutputError(f"cannot write the backup: {describe_os_error(exc)}") from None

    def abort(self) -> None:
        return None


class CommandDestination:
    """A shell command that receives the backup on its standard input (`--dest-command`)."""

    def __init__(self, command: str, timeout: float = 300.0):
        self.command = command
        self.label = f"command '{command}'"
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None

    def free_space(self) -> None:
        return None

    def open(self) -> BinaryIO:
        self._proc = subprocess.Popen(self.command, shell=True, stdin=subprocess.PIPE, bufsize=0,
                                      stdout=sys.stderr.fileno() if sys.stderr else None,
                                      stderr=subprocess.PIPE, start_new_session=True)
        return _CommandInput(self)

    def failure(self) -> QubesError:
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # the command is gone; its exit status says why
        code = self._proc.wait()
        err = decode_output(self._proc.stderr.read(STDERR_LIMIT))
        return QubesError(f"the destination {self.label} failed with exit status {code}"
                          + (f": {err}" if err else ""))

    def commit(self, written: int) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            raise self.failure() from None
        if self._proc.wait() != 0:
            raise self.failure()

    def abort(self) -> str | None:
        if self._proc is not None and self._proc.poll() is None:
            kill_group(self._proc)
            return "the destination command (killed)"
        return None


class _CommandInput:
    """The command's stdin; a write error means the command stopped reading: say why.

    A command that neither reads nor exits would make the backup hang for ever;
    after `timeout` seconds without progress it is stopped and reported (B25).
    """

    def __init__(self, dest: CommandDestination):
        self.dest = dest
        self.fd = dest._proc.stdin.fileno()
        os.set_blocking(self.fd, False)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            _r, ready, _x = select.select([], [self.fd], [], self.dest.timeout)
            if not ready:
                kill_group(self.dest._proc)
                raise QubesError(f"the destination {self.dest.label} took no data for "
                                 f"{self.dest.timeout:g} s; stopped it")
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                continue
            except OSError:
                raise self.dest.failure() from None
        return len(data)

    def flush(self) -> None:
        pass  # unbuffered


@dataclass(frozen=True)
class BackupRequest:
    vms: tuple[str, ...]
    exclude: tuple[str, ...]
    options: BackupOptions
    home: HomeTree | None = None   # walked once, shared by preview and run_backup


def preview(base_dir: str, host, request: BackupRequest, warn=None) -> tuple[BackupPlan, dict]:
    """The plan and each selected VM's class, without changing anything."""
    with read_collection(base_dir, host, warn=warn) as app:
        plan = make_plan(app, list(request.vms), list(request.exclude),
                         request.options.encrypted, request.home)
        kinds = {name: app[name] for name in plan.vms}
    return plan, kinds


def check_space(destination, plan: BackupPlan) -> None:
    free = destination.free_space()
    if free is not None and plan.total_size > free:
        raise QubesError(f"Not enough space available on the backup filesystem: "
                         f"{plan.total_size} bytes needed, {free} bytes free")


def run_backup(base_dir: str, host, hypervisor, request: BackupRequest, destination,
               reporter: Reporter) -> tuple[BackupPlan, int]:
    """Mark and select under the write lock, write outside it, then stamp backup_timestamp.

    Returns the plan and the bytes handed to the destination: a command cannot
    be checked for what it kept, so the user is told the count to compare (B58).
    """
    hide = request.options.encrypted
    with modify_collection(base_dir, host) as app:
        plan = make_plan(app, list(request.vms), list(request.exclude), hide, request.home)
        ensure_halted(hypervisor, [app[n] for n in plan.vms], "back up")
        mark_collection(app, plan, hide)
        selected = [app[n] for n in plan.vms]
        stubs = [vm for vm in archived_vms(app, plan) if vm not in selected]
        xml = codec.dump_collection(app, vms=selected, stubs=stubs)
    out = destination.open()
    try:
        written = write_backup(out, plan, xml, request.options, reporter)
        destination.commit(written)
    except BaseException as exc:
        removed = destination.abort()
        if removed:
            exc.add_note(f"removed {removed}")
        raise
    with modify_collection(base_dir, host) as app:
        now = int(time.time())
        for name in plan.vms:
            if app.get(name) is not None:
                app[name].backup_timestamp = now
    return plan, written
