"""A lock that tells a running writer's file from one a killed run left behind.

A killed process holds no flock, so a leftover (a partial backup file, a
restore's staging directory) is one whose lock anybody can take.
"""
from __future__ import annotations

import errno
import fcntl

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)


def try_lock(fd: int) -> bool:
    """flock without waiting; False where the filesystem has no locks (some FUSE, NFS).

    Raises BlockingIOError when another process holds the lock.
    """
    return _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def lock(fd: int) -> bool:
    """flock, waiting for it; False where the filesystem has no locks.

    For a file just created (only a run checking whether it is a leftover can
    hold its lock, and only for a moment) and for the run lock.
    """
    return _flock(fd, fcntl.LOCK_EX)


def _flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return False
        raise
    return True
