"""Free space while a restore writes: never fill the target filesystem (CASES.md B13).

The pre-flight check (before anything is written) compares the backup's
`backup_size` values with the free space; those values come from the backup
and other writers share the filesystem, so the data pass keeps its own
account too. Every writer into the target claims its bytes from one
`SpaceGuard` before writing them; the guard asks the filesystem (`free_space`,
a statvfs) only once every `CHECK_EVERY` bytes and in between subtracts what
was claimed. A claim that would leave less than the reserve free asks the
filesystem once more and then raises `NoSpaceError`: the caller fails that
one VM, whose partial data is removed, and the restore goes on with the next.

Reserve: `max(64 MiB, 1 % of the filesystem)`, the percentage capped at 1 GiB,
so a small filesystem keeps room for qubes.xml saves and logs and a large one
does not refuse the last gigabytes of a multi-terabyte disk.

May import: the standard library, qubes.backup.errors.
"""
from __future__ import annotations

import os
import threading

from qubes.backup.errors import BackupError

RESERVE_MIN = 64 << 20          # always kept free
RESERVE_SHARE = 100             # ... or 1/100 of the filesystem,
RESERVE_SHARE_MAX = 1 << 30     # ... that part at most 1 GiB
CHECK_EVERY = 16 << 20          # statvfs at most once per 16 MiB claimed
BLOCK = 4096                    # claims are rounded up: a file takes whole blocks


class NoSpaceError(BackupError):
    """Writing on would eat into the reserve of the target filesystem."""

    def __init__(self, path: str, what: str, needed: int, available: int, reserve: int):
        super().__init__(f"not enough space in {path} for {what}: {needed} more bytes needed, "
                         f"{available} bytes available and {reserve} of them kept free (a "
                         "restore never fills the filesystem); this VM is not restored")
        self.path = path
        self.needed = needed
        self.available = available
        self.reserve = reserve


def free_space(path: str) -> tuple[int, int]:
    """(bytes an unprivileged writer may still use, size of the filesystem) at `path`.

    The one probe of this module; tests replace it to simulate a small filesystem.
    """
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def space_reserve(fs_size: int) -> int:
    return max(RESERVE_MIN, min(fs_size // RESERVE_SHARE, RESERVE_SHARE_MAX))


class SpaceGuard:
    """The space account of one filesystem during one restore; thread-safe."""

    def __init__(self, path: str, every: int = CHECK_EVERY):
        self.path = path
        self.every = every
        self.reserve = RESERVE_MIN
        self._lock = threading.Lock()
        self._free: int | None = None   # at the last probe
        self._since = 0                 # claimed since the last probe

    def _probe(self) -> None:
        free, size = free_space(self.path)
        self._free, self._since = free, 0
        self.reserve = space_reserve(size)

    def claim(self, nbytes: int, what: str, needed: int) -> None:
        """Account for `nbytes` about to be written for `what` (`needed`: what it still
        needs in all, for the message); raises NoSpaceError instead of eating the reserve."""
        nbytes = -(-nbytes // BLOCK) * BLOCK
        with self._lock:
            if self._free is None or self._since >= self.every:
                self._probe()
            if self._free - self._since - nbytes < self.reserve:
                self._probe()  # fresh numbers before refusing: space may have been freed
                if self._free - nbytes < self.reserve:
                    raise NoSpaceError(self.path, what, max(needed, nbytes), self._free,
                                       self.reserve)
            self._since += nbytes
