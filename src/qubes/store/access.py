"""Open qubes.xml for reading or for a read-modify-write, and save it durably."""
from __future__ import annotations

import contextlib
import fcntl
import os

from qubes.errors import StoreError
from qubes.store import codec
from qubes.store.lock import locked
from qubes.util.atomicfile import describe_os_error, replace_file


def store_path(base_dir: str) -> str:
    return os.path.join(base_dir, "qubes.xml")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(codec.MAX_XML_SIZE + 1)
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist (run qvm-init-storage first)", path) from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", path) from None
    if len(data) > codec.MAX_XML_SIZE:
        raise StoreError(f"{path} is larger than {codec.MAX_XML_SIZE} bytes", path)
    return data


def _load(path: str, base_dir: str, host, warn=None):
    data = _read(path)
    try:
        app = codec.load_collection(data, base_dir, host=host, source=path)
        for warning in app.warnings if warn is not None else ():
            warn(warning)
        return app
    except StoreError as exc:
        backup = path + ".bak"
        if os.path.exists(backup):
            raise StoreError(f"{exc}\nThe previous version is kept in {backup}; "
                             f"to go back to it: cp {backup} {path}", path) from None
        raise


@contextlib.contextmanager
def read_collection(base_dir: str, host=None, warn=None):
    """Shared lock, load, unlock; the caller works on the objects without a lock.

    `warn(text)` receives each problem found while loading (a bad value, an entry
    that could not be loaded and is kept as it is).
    """
    path = store_path(base_dir)
    with locked(path, exclusive=False):
        app = _load(path, base_dir, host, warn)
    yield app


@contextlib.contextmanager
def modify_collection(base_dir: str, host=None, warn=None):
    """Exclusive lock across load, change and save; saves only if the block succeeds."""
    path = store_path(base_dir)
    with locked(path, exclusive=True) as lock:
        app = _load(path, base_dir, host, warn)
        try:
            yield app
            save(app, path, lock)
        except BaseException:
            app.rollback()  # e.g. move a renamed VM's directory back
            raise


def save(app, path: str, lock=None) -> None:
    """Atomic, durable save; the old file stays byte-identical on any failure (B59)."""
    data = codec.dump_collection(app)
    kept: list[int] = []

    def lock_new(fd: int) -> None:
        # Lock the new inode before it becomes visible; the duplicate keeps
        # the lock alive after replace_file closes its descriptor.
        if lock is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            kept.append(os.dup(fd))
        _keep_previous(path)

    try:
        replace_file(path, data, before_rename=lock_new)
    except OSError as exc:
        for fd in kept:
            os.close(fd)
        raise StoreError(f"cannot save {path}: {describe_os_error(exc)}; "
                         "the previous file is unchanged", path) from None
    if lock is not None:
        lock.adopt(kept[0])


def _keep_previous(path: str) -> None:
    """Keep the last good version as `<path>.bak` (offered when a load fails, B60)."""
    tmp = path + ".bak.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.link(path, tmp)
        os.rename(tmp, path + ".bak")
    except FileNotFoundError:
        pass


def init_storage(base_dir: str) -> str:
    """Create an empty qubes.xml; refuses to overwrite an existing one."""
    from qubes.model.collection import VMCollection

    path = store_path(base_dir)
    os.makedirs(base_dir, exist_ok=True)
    if os.path.exists(path):
        raise StoreError("Storage exists, not overwriting.", path)
    app = VMCollection(base_dir)
    data = codec.dump_collection(app)
    try:
        replace_file(path, data)
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {describe_os_error(exc)}", path) from None
    return path
