"""Building VMs with real data for backup tests."""
from __future__ import annotations

import os

from qubes.util.sparse import sparse_sha256

from tests.conftest import run


def write_at(path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def sha256_file(path) -> str:
    return sparse_sha256(str(path))


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def make_demo_vms(base) -> dict[str, str]:
    """A template, a NetVM and two AppVMs whose images hold data at several offsets.

    Returns {relative image path: sha256}.
    """
    run("qvm-create", "--class", "TemplateVM", "-l", "black", "tpl")
    run("qvm-create", "-n", "-l", "red", "sys-net")
    run("qvm-create", "-l", "blue", "work")
    run("qvm-create", "-l", "green", "personal")
    size = 96 << 20  # small apparent sizes keep hashing cheap; holes and extents stay
    for rel in ("vm-templates/tpl/root.img", "vm-templates/tpl/private.img",
                "servicevms/sys-net/private.img", "appvms/work/private.img",
                "appvms/personal/private.img"):
        path = base / rel
        os.truncate(path, size)
        for offset in (0, 5 << 20, 70 << 20, size - 8192):
            write_at(path, offset, (f"{rel}@{offset}:".encode() + os.urandom(4096)) * 2)
    return {rel: sha256_file(base / rel) for rel in _images(base)}


def _images(base):
    out = []
    for root, _dirs, files in os.walk(base):
        for name in files:
            if name.endswith(".img"):
                out.append(os.path.relpath(os.path.join(root, name), base))
    return sorted(out)


def image_hashes(base) -> dict[str, str]:
    return {rel: sha256_file(base / rel) for rel in _images(base)}
