"""Lock qubes.xml, then verify that the locked file is still the one at the path.

flock() locks belong to the open file description, so closing another
descriptor of the same file in this process cannot drop them (QUBES-XML.md
§16.6). One lock object per path and process makes nesting re-entrant.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time

from qubes.errors import StoreError

_HELD: dict[str, "StoreLock"] = {}
POLL_SECONDS = 0.02


def _timeout(var: str, default: float) -> float:
    try:
        return float(os.environ.get(var, default))
    except ValueError:
        return default


class StoreLock:
    """A shared or exclusive lock on the live inode of `path`."""

    def __init__(self, path: str, exclusive: bool):
        self.path = path
        self.exclusive = exclusive
        self.fd: int | None = None
        self.depth = 0

    def owner_file(self) -> str:
        return self.path + ".writer"

    def _holder(self) -> str:
        try:
            with open(self.owner_file(), encoding="ascii") as f:
                pid = f.read().strip()
        except OSError:
            return "another process"
        return f"process {pid}" if pid.isdigit() else "another process"

    def acquire(self, timeout: float) -> bool:
        """True when locked; False when a reader gave up waiting (it may read unlocked)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR if self.exclusive else os.O_RDONLY)
            except FileNotFoundError:
                raise StoreError(f"{self.path} does not exist (run qvm-init-storage first)",
                                 self.path) from None
            except OSError as exc:
                raise StoreError(f"cannot open {self.path}: {exc.strerror}", self.path) from None
            if not self._lock(fd, deadline):
                os.close(fd)
                if self.exclusive:
                    raise StoreError(
                        f"{self.path} is locked by {self._holder()}; gave up after "
                        f"{timeout:g} s (QUBES_LOCK_TIMEOUT)", self.path)
                return False
            if self._same_file(fd):
                self.fd = fd
                if self.exclusive:
                    self._write_owner()
                return True
            os.close(fd)  # replaced while we waited: lock the new file

    def _lock(self, fd: int, deadline: float) -> bool:
        op = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        while True:
            try:
                fcntl.flock(fd, op)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    def _same_file(self, fd: int) -> bool:
        a = os.fstat(fd)
        try:
            b = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _write_owner(self) -> None:
        try:
            with open(self.owner_file(), "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass  # only used to name the holder in a timeout message

    def adopt(self, fd: int) -> None:
        """Take over an already locked descriptor (the new file after a save)."""
        old, self.fd = self.fd, fd
        if old is not None:
            os.close(old)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class locked:
    """Context manager: `with locked(path, exclusive) as lock:`; re-entrant per process."""

    def __init__(self, path: str, exclusive: bool):
        self.path = os.path.abspath(path)
        self.exclusive = exclusive
        self.lock: StoreLock | None = None

    def __enter__(self) -> StoreLock | None:
        held = _HELD.get(self.path)
        if held is not None:
            if self.exclusive and not held.exclusive:
                raise StoreError(f"{self.path}: cannot take the write lock while this process "
                                 "holds the read lock", self.path)
            held.depth += 1
            self.lock = held
            return held
        lock = StoreLock(self.path, self.exclusive)
        timeout = _timeout("QUBES_LOCK_TIMEOUT", 60.0) if self.exclusive \
            else _timeout("QUBES_READ_LOCK_TIMEOUT", 5.0)
        if not lock.acquire(timeout):
            return None  # reader: atomic saves make an unlocked read safe
        lock.depth = 1
        _HELD[self.path] = lock
        self.lock = lock
        return lock

    def __exit__(self, *exc) -> None:
        if self.lock is None:
            return
        self.lock.depth -= 1
        if self.lock.depth == 0:
            _HELD.pop(self.path, None)
            self.lock.release()
