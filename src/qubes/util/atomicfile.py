"""Durable replacement of a file: temp in the same directory, fsync, rename, fsync dir.

A crash or a full disk at any point leaves either the old or the new file,
never a truncated one (CASES.md B59, B62).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import os
import tempfile
import threading
from functools import cache


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _syncfs():
    return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)


def sync_filesystem(path: str) -> None:
    """Flush the filesystem holding `path` to disk.

    Why not os.sync: that waits for every filesystem's dirty data, and a
    restore only needs its own files durable before it registers them.
    """
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


@contextlib.contextmanager
def flushing(paths: list[str], interval: float = 0.25):
    """Flush the filesystems holding `paths` every `interval` seconds while the block runs.

    Why: a restore must sync before it registers anything; writing back while
    the data still arrives overlaps the disk with the decoding, so the final
    sync only waits for the last moments' data instead of all of it.
    """
    if _syncfs() is None:  # os.sync four times a second would flush every filesystem
        yield
        return
    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            try:
                for path in paths:
                    sync_filesystem(path)
            except OSError:
                return  # the final sync, outside, reports what is wrong

    thread = threading.Thread(target=loop, name="flush", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _target_ownership(path: str, default_mode: int, default_group: str | None):
    """Keep an existing file's mode and owner; new files get the defaults."""
    try:
        st = os.stat(path)
        return st.st_mode & 0o7777, st.st_uid, st.st_gid
    except FileNotFoundError:
        gid = -1
        if default_group:
            try:
                gid = grp.getgrnam(default_group).gr_gid
            except KeyError:
                pass
        return default_mode, -1, gid


def replace_file(path: str, data: bytes, *, mode: int = 0o660, group: str | None = "qubes",
                 before_rename=None) -> None:
    """Write `data` to `path` atomically and durably.

    `before_rename(fd)` runs on the finished temp file just before the rename
    (the store uses it to take the lock on the new inode first).
    Raises OSError with the temp file removed and `path` untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    perm, uid, gid = _target_ownership(path, mode, group)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.fchmod(fd, perm)
        if uid != -1 or gid != -1:
            try:
                os.fchown(fd, uid, gid)
            except PermissionError:
                pass
        if before_rename is not None:
            before_rename(fd)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.close(fd)
    fsync_dir(directory)


def describe_os_error(exc: OSError) -> str:
    """A short cause; says "no space left" in words users search for."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    return exc.strerror or str(exc)
