"""Remove a directory tree without recursion.

`shutil.rmtree` recurses once per directory level (Python 3.11), so a tree
restored from a hostile backup, a few thousand levels deep, stops it with
RecursionError and stays behind, and every later restore that cleans up
leftovers fails the same way. This remover keeps its own stack instead, so
any depth the filesystem allows is removed.

May import only the standard library.
"""
from __future__ import annotations

import os
import stat


def remove_tree(path: str, ignore_errors: bool = False) -> None:
    """Remove `path` and everything under it; a symlink is removed, never followed.

    Directories inside it that refuse (a restored home may hold read-only ones)
    are made writable by their owner and tried again; nothing outside is
    changed. Without `ignore_errors` the first error is raised
    (FileNotFoundError too, if `path` does not exist); with it, as much as
    possible is removed.
    """
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
    except OSError:
        if ignore_errors:
            return
        raise
    # (directory, scanned): a directory is scanned once, its files unlinked and its
    # subdirectories pushed above it; when it is on top again it is empty (or holds
    # what could not be removed) and only rmdir is left
    stack: list[tuple[str, bool]] = [(path, False)]
    while stack:
        top, scanned = stack.pop()
        try:
            if scanned:
                if top == path:
                    os.rmdir(top)  # its parent is not ours to chmod
                else:
                    _retry_writable(os.rmdir, top, os.path.dirname(top))
                continue
            stack.append((top, True))
            for sub in _clear_files(top, ignore_errors):
                stack.append((sub, False))
        except FileNotFoundError:
            continue  # gone already: nothing to do
        except OSError:
            if not ignore_errors:
                raise


def _clear_files(directory: str, ignore_errors: bool) -> list[str]:
    """Unlink every non-directory in `directory`; returns its subdirectories."""
    subdirs = []
    with _retry_writable(os.scandir, directory, directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
                continue
            try:
                _retry_writable(os.unlink, entry.path, directory)
            except FileNotFoundError:
                pass
            except OSError:
                if not ignore_errors:
                    raise
    return subdirs


def _retry_writable(func, path: str, directory: str):
    """func(path); on EACCES/EPERM make `directory` (one inside the tree) readable,
    writable and searchable by its owner and try once more."""
    try:
        return func(path)
    except PermissionError:
        os.chmod(directory, 0o700)
        return func(path)
