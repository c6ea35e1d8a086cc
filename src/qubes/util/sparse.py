"""Sparse-aware file copies: time in proportion to data, holes kept as holes."""
from __future__ import annotations

import os

_PIECE = 1 << 20


def data_regions(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of an open file, by SEEK_DATA/SEEK_HOLE."""
    regions = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == 6:  # ENXIO: no data after pos
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end > start:
                regions.append((start, end - start))
            pos = end
    except OSError:
        return [(0, size)] if size else []
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
