"""`qvm-template-build tiny`: a bootable template from Debian's cloud kernel and busybox.

What it makes (VMM.md §11):
- `<base>/vm-kernels/<version>/vmlinuz` and `initramfs`: the kernel, and a
  busybox initramfs that loads the virtio drivers and switches to the root disk;
- `<base>/vm-templates/<name>/root.img`: an ext4 root holding busybox and
  `/sbin/qubes-init` (guest/qubes-init), `private.img` formatted ext4;
- the template registered in qubes.xml with that kernel.
The kernel package is fetched with `apt-get download` once and kept in a cache.
"""
from __future__ import annotations

import glob
import gzip
import importlib.resources
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile

from qubes.errors import QubesError
from qubes.ops.create import add_template
from qubes.storage import file as storage
from qubes.store.access import read_collection
from qubes.util.text import decode_output

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "/bin/busybox"
TINY_ROOT_SIZE = 1024**3
# Load order matters: each module needs the ones before it (VMM.md §11.2).
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_blk", "evdev", "button", "failover", "net_failover",
           "virtio_net")


def cache_dir() -> str:
    if os.geteuid() == 0:
        return "/var/cache/qubes-core/kernel"
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(home, "qubes-core", "kernel")


def _run(cmd: list[str], what: str, cwd: str | None = None) -> bytes:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=600)
    except FileNotFoundError:
        raise QubesError(f"{what}: {cmd[0]} is not installed") from None
    if proc.returncode != 0:
        raise QubesError(f"{what} failed ({' '.join(cmd)}): "
                         f"{decode_output(proc.stderr).strip() or proc.returncode}")
    return proc.stdout


def kernel_package() -> str:
    """The cached cloud kernel .deb, downloaded on first use."""
    cache = cache_dir()
    found = sorted(glob.glob(os.path.join(cache, "linux-image-*-cloud-amd64_*.deb")))
    if found:
        return found[-1]
    depends = decode_output(_run(["apt-cache", "depends", KERNEL_META],
                                 "looking up the Debian cloud kernel"))
    package = next((line.split()[-1] for line in depends.splitlines()
                    if "Depends:" in line and line.split()[-1].startswith("linux-image-")),
                   None)
    if package is None:
        raise QubesError(f"apt knows no kernel package behind {KERNEL_META}; "
                         "run apt-get update, or put its .deb into " + cache)
    os.makedirs(cache, exist_ok=True)
    _run(["apt-get", "download", "-qq", package], "downloading the Debian cloud kernel",
         cwd=cache)
    found = sorted(glob.glob(os.path.join(cache, f"{package}_*.deb")))
    if not found:
        raise QubesError(f"apt-get download left no {package} package in {cache}")
    return found[-1]


def _extract_kernel(deb: str, work: str) -> tuple[str, str, dict[str, str]]:
    """(version, vmlinuz path, {module: .ko path}) unpacked from the kernel package."""
    data = _run(["dpkg-deb", "--fsys-tarfile", deb], "unpacking the kernel package")
    tar_path = os.path.join(work, "kernel.tar")
    with open(tar_path, "wb") as f:
        f.write(data)
    wanted = {m + ".ko" for m in MODULES}
    vmlinuz, modules = None, {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if not member.isfile():
                continue
            if base.startswith("vmlinuz-") and "/boot/" in member.name:
                vmlinuz = member
            elif base in wanted and "/kernel/" in member.name:
                modules[base[:-3]] = member
        if vmlinuz is None:
            raise QubesError(f"{deb} holds no kernel image")
        missing = [m for m in MODULES if m not in modules]
        if missing:
            raise QubesError(f"{deb} lacks the modules {', '.join(missing)}")
        out = {}
        for name, member in [("vmlinuz", vmlinuz)] + list(modules.items()):
            path = os.path.join(work, name)
            with tar.extractfile(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            out[name] = path
    os.unlink(tar_path)
    version = os.path.basename(vmlinuz.name)[len("vmlinuz-"):]
    return version, out.pop("vmlinuz"), out


def _check_static(path: str) -> None:
    """busybox runs before any libc exists in the guest: it must be static."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                raise QubesError(f"{path} is not a 64-bit program")
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except FileNotFoundError:
        raise QubesError(f"{path} is missing: install the busybox-static package") from None
    for i in range(phnum):
        if struct.unpack_from("<I", table, i * phentsize)[0] == 3:  # PT_INTERP
            raise QubesError(f"{path} is dynamically linked: install busybox-static")


def _guest_file(name: str) -> bytes:
    return importlib.resources.files("qubes.guest").joinpath(name).read_bytes()


class _Newc:
    """A cpio "newc" archive, the format the kernel unpacks an initramfs from."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.ino = 1

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        header = b"070701" + b"".join(b"%08X" % v for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0))
        self.ino += 1
        self.parts += [header, encoded, b"\0" * (-(110 + len(encoded)) % 4),
                       data, b"\0" * (-len(data) % 4)]

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return gzip.compress(b"".join(self.parts), 1)


def _initramfs(modules: dict[str, str]) -> bytes:
    cpio = _Newc()
    for d in ("bin", "dev", "proc", "sys", "sysroot", "lib", "lib/modules"):
        cpio.add(d, 0o40755)
    with open(BUSYBOX, "rb") as f:
        cpio.add("bin/busybox", 0o100755, f.read())
    for applet in ("sh", "mount", "umount", "insmod", "sleep", "switch_root", "poweroff",
                   "echo", "grep"):
        cpio.add(f"bin/{applet}", 0o120777, b"busybox")
    for name, path in modules.items():
        with open(path, "rb") as f:
            cpio.add(f"lib/modules/{name}.ko", 0o100644, f.read())
    cpio.add("init", 0o100755, _guest_file("initramfs-init"))
    return cpio.finish()


def _root_tree(tree: str) -> None:
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "rw", "root", "opt",
              "etc/qubes/services"):
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(tree, "bin", "busybox"))
    applets = decode_output(_run([BUSYBOX, "--list"], "listing busybox applets")).split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(tree, "bin", applet))
    for script in ("qubes-init", "qubes-net"):
        path = os.path.join(tree, "sbin", script)
        with open(path, "wb") as f:
            f.write(_guest_file(script))
        os.chmod(path, 0o755)


def _mkfs(image: str, size: int, tree: str | None = None) -> None:
    storage.fresh_volatile(image, size)
    # A small journal: mkfs writes it out in full, and it is all the image holds.
    cmd = ["mkfs.ext4", "-q", "-F", "-J", "size=8", "-L", os.path.basename(image)[:16]]
    if tree is not None:
        cmd += ["-d", tree]
    _run(cmd + [image], f"making the file system of {os.path.basename(image)}")


def build_tiny(base_dir: str, host, name: str = "tiny", label: str | None = None) -> str:
    """Build and register the tiny template; returns its kernel version."""
    with read_collection(base_dir, host) as app:
        if app.get(name) is not None:
            raise QubesError(f"A VM with the name '{name}' already exists")
        final = os.path.join(base_dir, "vm-templates", name)
    if os.path.lexists(final):
        raise QubesError(f"{final} already exists; move it away first")
    _check_static(BUSYBOX)
    deb = kernel_package()
    os.makedirs(os.path.dirname(final), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".build-{name}-", dir=os.path.dirname(final))
    try:
        version, vmlinuz, modules = _extract_kernel(deb, work)
        kdir = os.path.join(base_dir, "vm-kernels", version)
        if not os.path.isfile(os.path.join(kdir, "initramfs")):
            staged = os.path.join(work, "kernel-dir")
            os.mkdir(staged)
            shutil.move(vmlinuz, os.path.join(staged, "vmlinuz"))
            with open(os.path.join(staged, "initramfs"), "wb") as f:
                f.write(_initramfs(modules))
            os.makedirs(os.path.dirname(kdir), exist_ok=True)
            shutil.rmtree(kdir, ignore_errors=True)
            os.rename(staged, kdir)
        tdir = os.path.join(work, "template")
        tree = os.path.join(work, "root-tree")
        os.mkdir(tdir)
        _root_tree(tree)
        _mkfs(os.path.join(tdir, "root.img"), TINY_ROOT_SIZE, tree)
        _mkfs(os.path.join(tdir, "private.img"), storage.PRIVATE_IMG_SIZE)
        os.rename(tdir, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    try:
        add_template(base_dir, host, name, label=label, kernel=version)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    return version
