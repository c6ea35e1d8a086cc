"""Sparse-aware file copies: time in proportion to data, holes kept as holes."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil

_PIECE = 1 << 20
_UNSUPPORTED_SEEK = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data in the first `size` bytes, by SEEK_DATA/SEEK_HOLE.

    Where the system or file system lacks them the whole file is one region.
    Moves the file offset of `fd`.
    """
    if size <= 0:
        return []
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return [(0, size)]
    regions: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole after pos
                break
            if exc.errno in _UNSUPPORTED_SEEK:
                return [(0, size)]
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, seek_hole), size)
        regions.append((start, end - start))
        pos = end
    return regions


def copy_sparse(src: str, dst: str) -> None:
    """Copy a file keeping its holes; `dst` must not exist (refuses to overwrite)."""
    sfd = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(sfd).st_size
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for offset, length in data_regions(sfd, size):
                done = 0
                while done < length:
                    n = min(_PIECE, length - done)
                    buf = os.pread(sfd, n, offset + done)
                    if not buf:
                        raise OSError(f"{src}: file shrank while being copied")
                    os.pwrite(dfd, buf, offset + done)
                    done += len(buf)
            os.ftruncate(dfd, size)
            os.fsync(dfd)
        except BaseException:
            os.close(dfd)
            os.unlink(dst)
            raise
        os.close(dfd)
    finally:
        os.close(sfd)


def create_sparse(path: str, size: int) -> None:
    """A new all-hole file of `size` bytes; refuses to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


_ZEROS = bytes(_PIECE)


def sparse_sha256(path: str) -> str:
    """sha256 of a file's contents; holes are hashed from memory instead of read."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        for offset, length in data_regions(fd, size) + [(size, 0)]:
            while pos < offset:
                n = min(_PIECE, offset - pos)
                h.update(_ZEROS[:n])
                pos += n
            while length:
                piece = os.pread(fd, min(_PIECE, length), pos)
                if not piece:
                    raise OSError(f"{path}: file shrank while being hashed")
                h.update(piece)
                pos += len(piece)
                length -= len(piece)
    finally:
        os.close(fd)
    return h.hexdigest()


def copy_tree_sparse(src: str, dst: str) -> None:
    """Copy a directory tree; regular files keep their holes, links are copied as links."""
    os.mkdir(dst, os.stat(src).st_mode & 0o7777)
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            copy_tree_sparse(entry.path, target)
        elif entry.is_file():
            copy_sparse(entry.path, target)
        else:
            shutil.copy(entry.path, target)
