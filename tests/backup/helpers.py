"""Building VMs with real data for backup tests, and reworking the backups they make."""
from __future__ import annotations

import io
import os
import tarfile

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


def fresh_target(tmp_path, monkeypatch, name="target"):
    target = tmp_path / name
    monkeypatch.setenv("QUBES_BASE_DIR", str(target))
    run("qvm-init-storage")
    return target


def outer_members(backup) -> list[tuple[str, bytes]]:
    with tarfile.open(backup, ignore_zeros=True) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def rewrite_members(src, dst, edit: dict) -> None:
    """Copy a backup member by member; `edit[name](data)` replaces a member's data, or
    drops the member when it returns None."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in outer_members(src):
            if name in edit:
                data = edit[name](data)
                if data is None:
                    continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    dst.write_bytes(buf.getvalue())
