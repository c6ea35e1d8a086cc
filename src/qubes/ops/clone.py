"""qvm-clone: sparse copy of a halted VM's files, then registration under the lock."""
from __future__ import annotations

import os

from qubes.errors import QubesError, StorageError
from qubes.ops import ensure_halted
from qubes.storage import file as storage
from qubes.store.access import modify_collection, read_collection
from qubes.util.atomicfile import describe_os_error

CLONE_PROPS = ("kernel", "netvm", "memory", "maxmem", "kernelopts", "services", "vcpus", "mac",
               "pcidevs", "include_in_backups", "label", "default_user", "timezone",
               "qrexec_installed", "guiagent_installed", "internal", "debug", "qrexec_timeout")
SKIP_FILES = ("volatile.img",)


def _copy_props(src, dst) -> None:
    for prop in CLONE_PROPS:
        if src.has_property(prop) and not src.is_default(prop):
            value = getattr(src, prop)
            if prop == "netvm" and value is not None:
                value = dst.collection[value.name]
            dst.set_prop(prop, value)


def _register(app, src_name: str, dst_name: str, dir_path: str | None):
    src = app[src_name]
    if src.is_disposablevm or src.is_adminvm:
        raise QubesError(f"Cannot clone {src.TYPE} '{src.name}'")
    dst = app.add_new_vm(src.TYPE, dst_name, template=src.template)
    _copy_props(src, dst)
    if dir_path:
        dst.dir_path = os.path.abspath(dir_path)
    return src, dst


def clone_vm(base_dir: str, host, hypervisor, src_name: str, dst_name: str,
             dir_path: str | None = None) -> None:
    with read_collection(base_dir, host) as app:
        src, dst = _register(app, src_name, dst_name, dir_path)
        ensure_halted(hypervisor, [src], "clone")
        images = {}
        try:
            entries = sorted(os.scandir(src.dir_path), key=lambda e: e.name)
        except OSError as exc:
            raise StorageError(f"cannot read the files of '{src.name}' in {src.dir_path}: "
                               f"{describe_os_error(exc)}") from None
        for entry in entries:
            plain = entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)
            if plain and entry.name not in SKIP_FILES and not entry.name.endswith(".conf"):
                images[entry.name] = entry.path
        final_dir = dst.dir_path
    tmp = storage.build_dir(final_dir, images)
    try:
        with modify_collection(base_dir, host) as app:
            _src, dst = _register(app, src_name, dst_name, dir_path)
            storage.commit_dir(tmp, dst.dir_path)
    except BaseException:
        storage.discard_dir(tmp)
        raise
