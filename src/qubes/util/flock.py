"""A lock that tells a running writer's file from one a killed run left behind.

A killed process holds no flock, so a leftover (a partial backup file, a
restore's staging directory) is one whose lock anybody can take.
"""
from __future__ import annotations

import errno
import fcntl


def try_lock(fd: int, wait: bool = False) -> bool:
    """flock; False where the filesystem has no locks (some FUSE, NFS).

    Without `wait`, raises BlockingIOError when another process holds the lock.
    `wait` is for a file just created: only a run checking whether it is a
    leftover can hold its lock, and only for a moment.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            return False
        raise
    return True
