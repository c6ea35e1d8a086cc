"""The R2 /var/lib/qubes layout: images are sparse files, copies keep holes."""
from __future__ import annotations

import os
import shutil

from qubes.errors import StorageError
from qubes.util.atomicfile import describe_os_error, fsync_dir
from qubes.util.sparse import copy_sparse, copy_tree_sparse, create_sparse

GiB = 1024**3
PRIVATE_IMG_SIZE = 2 * GiB
ROOT_IMG_SIZE = 10 * GiB
HVM_DISK_SIZE = 20 * GiB


def staging_dir(final_dir: str) -> str:
    """A sibling of `final_dir` on the same filesystem, for build-then-rename."""
    parent, name = os.path.split(final_dir.rstrip("/"))
    return os.path.join(parent, f".{name}.new-{os.getpid()}")


def build_dir(final_dir: str, images: dict[str, str | int]) -> str:
    """Create a staging directory holding `images` (name -> source file/dir or a size).

    Returns its path; on error nothing is left behind.
    """
    tmp = staging_dir(final_dir)
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        os.mkdir(tmp, 0o775)
        for filename, source in images.items():
            dst = os.path.join(tmp, filename)
            if isinstance(source, int):
                create_sparse(dst, source)
            elif os.path.isdir(source):
                copy_tree_sparse(source, dst)
            else:
                copy_sparse(source, dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        where = exc.filename or tmp
        raise StorageError(f"cannot create the files of {final_dir}: {where}: "
                           f"{describe_os_error(exc)}") from None
    return tmp


def commit_dir(tmp: str, final_dir: str) -> None:
    """Move a staged directory into place; refuses to merge with an existing one."""
    if os.path.lexists(final_dir):
        raise StorageError(f"{final_dir} already exists; move it away first")
    try:
        os.rename(tmp, final_dir)
        fsync_dir(os.path.dirname(final_dir))
    except OSError as exc:
        raise StorageError(f"cannot move {tmp} to {final_dir}: {describe_os_error(exc)}") from None


def discard_dir(tmp: str) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def remove_dir(path: str) -> str | None:
    """Remove a VM directory; returns a warning text instead of raising."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot remove {path}: {describe_os_error(exc)}"
    return None


def move_dir(src: str, dst: str) -> None:
    if os.path.lexists(dst):
        raise StorageError(f"{dst} already exists")
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise StorageError(f"cannot rename {src} to {dst}: {describe_os_error(exc)}") from None
