"""dom0's home directory, walked once for a backup (B34-B39).

Why one walk: the size shown before the backup, the readability check that
must name an unreadable file before anything is written (B39), and the
archive itself all need the same list; walking a home of many small files
three times cost more than archiving it.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import NamedTuple

from qubes.backup.format import MAX_DEPTH, MAX_HOME_ENTRIES
from qubes.errors import QubesError


class HomeEntry(NamedTuple):
    """A tuple, not a frozen dataclass: a home makes tens of thousands of them."""
    rel: str                  # path below the home, "/"-separated
    path: str                 # full path on this machine
    st: os.stat_result        # lstat: links are entries of their own
    target: str | None = None  # a symbolic link's target, verbatim


@dataclass
class HomeTree:
    directory: str
    user: str
    _entries: list[HomeEntry] | None = field(default=None, repr=False)
    _size: int = 0

    @property
    def entries(self) -> list[HomeEntry]:
        """Every entry below the home, each directory before its contents."""
        self._scan()
        return self._entries

    @property
    def size(self) -> int:
        """Allocated bytes, like `du -s --block-size=1`."""
        self._scan()
        return self._size

    @property
    def mode(self) -> int:
        return os.stat(self.directory).st_mode & 0o7777

    def _scan(self) -> None:
        if self._entries is not None:
            return
        if not os.path.isdir(self.directory):
            raise QubesError(f"the home directory {self.directory} does not exist")
        entries: list[HomeEntry] = []
        size = os.lstat(self.directory).st_blocks * 512
        stack = [("", self.directory)]
        check = os.geteuid() != 0  # root reads any file: one access() per entry saved
        while stack:
            rel_dir, dir_path = stack.pop()
            try:
                with os.scandir(dir_path) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                _unreadable(dir_path, exc.strerror)
            subdirs = []
            if children and rel_dir.count("/") + 2 > MAX_DEPTH:  # the user's name counts too
                raise QubesError(f"{dir_path} in the home directory is nested more than "
                                 f"{MAX_DEPTH} levels deep, more than a restore accepts; "
                                 "nothing was written")
            for child in children:
                st = child.stat(follow_symlinks=False)
                size += st.st_blocks * 512
                rel = f"{rel_dir}{child.name}"
                target = None
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(child.path)
                elif stat.S_ISDIR(st.st_mode):
                    if check and not os.access(child.path, os.R_OK | os.X_OK):
                        _unreadable(child.path)
                    subdirs.append((rel + "/", child.path))
                elif check and stat.S_ISREG(st.st_mode) and not os.access(child.path, os.R_OK):
                    _unreadable(child.path)
                entries.append(HomeEntry(rel, child.path, st, target))
            # Each directory comes before its contents, in name order.
            stack.extend(reversed(subdirs))
            if len(entries) > MAX_HOME_ENTRIES:
                raise QubesError(f"the home directory {self.directory} holds more than "
                                 f"{MAX_HOME_ENTRIES} entries, more than a restore accepts; "
                                 "move some out, nothing was written")
        self._entries, self._size = entries, size


def _unreadable(path: str, why: str | None = None) -> None:
    raise QubesError(f"cannot read {path} in the home directory ({why or 'permission denied'}); "
                     "fix its permissions or move it out, nothing was written")
