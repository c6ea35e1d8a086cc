"""The R2 /var/lib/qubes layout: images are sparse files, copies keep holes."""
from __future__ import annotations

import json
import os
import subprocess

from qubes.errors import StorageError
from qubes.util.atomicfile import describe_os_error, fsync_dir
from qubes.util.rmtree import remove_tree
from qubes.util.sparse import copy_sparse, copy_tree_sparse, create_sparse
from qubes.util.text import decode_output

GiB = 1024**3
PRIVATE_IMG_SIZE = 2 * GiB
ROOT_IMG_SIZE = 10 * GiB
HVM_DISK_SIZE = 20 * GiB
VOLATILE_IMG_SIZE = 1 * GiB


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
        remove_tree(tmp, ignore_errors=True)
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
    remove_tree(tmp, ignore_errors=True)


def remove_dir(path: str) -> str | None:
    """Remove a VM directory; returns a warning text instead of raising."""
    try:
        remove_tree(path)
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


# --- copy-on-write roots (VMM.md §12: qcow2 overlays stand in for dm snapshots) ---

def _qemu_img(*args: str) -> None:
    try:
        proc = subprocess.run(["qemu-img", *args], capture_output=True, timeout=600)
    except FileNotFoundError:
        raise StorageError("qemu-img is not installed (package qemu-utils)") from None
    if proc.returncode != 0:
        raise StorageError(f"qemu-img {args[0]} failed: "
                           f"{decode_output(proc.stderr).strip() or proc.returncode}")


def new_overlay(path: str, backing: str) -> None:
    """An empty qcow2 overlay at `path` over the raw image `backing`, replacing any old one.

    The backing path is stored relative to the overlay when they share a parent
    tree, so VM directories stay relocatable.
    """
    if not os.path.isfile(backing):
        raise StorageError(f"the root image {backing} is missing")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    rel = os.path.relpath(backing, os.path.dirname(path))
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", rel, path)


def commit_overlay(path: str) -> None:
    """Write an overlay's changes into its backing image, then empty the overlay."""
    _qemu_img("commit", "-q", "-d", path)
    # `commit -d` keeps the overlay's data: a fresh empty overlay follows.
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b",
              _backing_of(path), path)


def _backing_of(path: str) -> str:
    proc = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True,
                          timeout=60)
    if proc.returncode != 0:
        raise StorageError(f"qemu-img info {path} failed: {decode_output(proc.stderr).strip()}")
    info = json.loads(proc.stdout)
    backing = info.get("backing-filename")
    if not backing:
        raise StorageError(f"{path} is not an overlay")
    return backing


def overlay_has_changes(path: str) -> bool:
    """Whether an overlay holds any written cluster (qemu-img map shows data in it)."""
    if not os.path.exists(path):
        return False
    proc = subprocess.run(["qemu-img", "map", "--output=json", path], capture_output=True,
                          timeout=60)
    if proc.returncode != 0:
        raise StorageError(f"qemu-img map {path} failed: {decode_output(proc.stderr).strip()}")
    return any(e.get("depth") == 0 and e.get("data") for e in json.loads(proc.stdout))


def fresh_volatile(path: str, size: int = VOLATILE_IMG_SIZE) -> None:
    """A new empty sparse volatile image; nothing of the previous run survives."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        create_sparse(path, size)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {describe_os_error(exc)}") from None
