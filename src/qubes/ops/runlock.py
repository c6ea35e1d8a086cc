"""The run lock, in a module of its own because starts (lifecycle), after-stop
clean-ups (watch) and template commits and reverts (templates) all take it:
a watcher's automatic commit must not meet a user's revert of the same overlay,
nor a clean-up a new start of the same VM.

May import: the standard library and `qubes.util`.
"""
from __future__ import annotations

import contextlib
import os
import threading

from qubes.util.flock import lock

_held = threading.local()  # the run locks this thread holds: path -> depth


@contextlib.contextmanager
def run_lock(base_dir: str):
    """One start or after-stop clean-up of the collection at a time, across processes.

    Re-entrant within a thread: a start that fails cleans up after itself
    while it holds the lock. Also keeps the memory check and the domain
    creation of two starts from interleaving (B87).
    """
    path = os.path.join(base_dir, ".start.lock")
    depths = _held.__dict__.setdefault("depths", {})
    if depths.get(path):
        depths[path] += 1
        try:
            yield
        finally:
            depths[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
    try:
        lock(fd)
        depths[path] = 1
        yield
    finally:
        depths.pop(path, None)
        os.close(fd)
