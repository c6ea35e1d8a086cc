"""From a VM's properties to its disks and its domain definition (VMM.md §4, §12).

Disks by kind of VM:
- based on a template: root = a fresh qcow2 overlay over the template's
  root.img, made at each start and discarded when the VM stops; the
  template's own pending changes are invisible to it;
- a template: root = its own overlay `root-cow.qcow2`, kept across its runs
  until committed into root.img (ops.templates);
- standalone VMs and HVMs: their own root.img, written directly.
private.img is persistent; volatile.img is recreated at every start.
A CD-ROM (`--cdrom`) is for one start of a VM that boots from disk; the
spec of the next start has none unless asked again.
"""
from __future__ import annotations

import hashlib
import os
import stat
import uuid as uuidlib

from qubes.errors import ImagePathError, QubesError
from qubes.storage import file as storage
from qubes.vmm.base import CdromSpec, DiskSpec, DomainSpec, NicSpec

APPVM_OVERLAY = "root-overlay.qcow2"
TEMPLATE_OVERLAY = "root-cow.qcow2"
CONSOLE_LOG = "console.log"
RUNTIME_DIR = "/run/qubes-core"
HOST_PREFIX = "dom0:"   # R2's spelling of "a path on this host"


def owner_tag(base_dir: str) -> str:
    """What marks a libvirt domain as belonging to this collection."""
    return os.path.realpath(base_dir)


def agent_socket(base_dir: str, name: str) -> str:
    """Where QEMU listens for the guest's command channel.

    Not in the VM directory: a unix socket path must stay under 108 bytes.
    """
    tag = hashlib.sha256(owner_tag(base_dir).encode()).hexdigest()[:10]
    return os.path.join(RUNTIME_DIR, f"{tag}-{name}.agent")


def domain_uuid(vm, base_dir: str) -> str:
    """The VM's uuid, or one derived from collection and name when qubes.xml has none."""
    return vm.uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL,
                                        f"qubes-core:{owner_tag(base_dir)}/{vm.name}"))


def template_overlay(template) -> str:
    return os.path.join(template.dir_path, TEMPLATE_OVERLAY)


def root_disk(vm) -> DiskSpec:
    """The root disk for this start, preparing the overlay it needs."""
    if vm.template is not None:
        overlay = os.path.join(vm.dir_path, APPVM_OVERLAY)
        storage.new_overlay(overlay, vm.template.root_img)
        return DiskSpec(overlay, "vda", "qcow2")
    if vm.is_template:
        overlay = template_overlay(vm)
        if not os.path.exists(overlay):  # first run, or a layout without one (B97)
            storage.new_overlay(overlay, vm.root_img)
        return DiskSpec(overlay, "vda", "qcow2")
    if not os.path.isfile(vm.root_img):
        raise QubesError(f"VM '{vm.name}': its root image {vm.root_img} is missing")
    return DiskSpec(vm.root_img, "vda")


def kernel_files(vm) -> tuple[str, str | None] | None:
    """(vmlinuz, initramfs) for a VM that boots a kernel directly; None for HVMs.

    A missing kernel is refused before anything is defined (B89).
    """
    if not vm.HAS_KERNEL:
        return None
    kdir = vm.kernels_dir
    vmlinuz = os.path.join(kdir, "vmlinuz")
    if not os.path.isfile(vmlinuz):
        if vm.kernel:
            raise QubesError(f"kernel '{vm.kernel}' for VM '{vm.name}' is not installed "
                             f"(missing {vmlinuz})")
        raise QubesError(f"VM '{vm.name}' has no kernel set and none of its own (missing "
                         f"{vmlinuz}); install one under vm-kernels/ and choose it with "
                         f"qvm-prefs -s {vm.name} kernel VERSION")
    initramfs = os.path.join(kdir, "initramfs")
    return vmlinuz, initramfs if os.path.isfile(initramfs) else None


def cdrom_for(vm, untrusted_path: str) -> CdromSpec:
    """The CD-ROM of one start of `vm`, checked before anything is defined (B90).

    `dom0:/path` is a path on this host; any other `VM:` prefix would be an
    image inside another VM, which is not supported. The path must name a
    regular file or a block device; a relative one is taken from the
    caller's directory. Errors name the path as given (prefix stripped).
    """
    if vm.HAS_KERNEL:
        raise QubesError(f"VM '{vm.name}' boots its kernel directly; a CD-ROM can only be "
                         "attached to a VM that boots from disk (an HVM)")
    path = untrusted_path
    if path.startswith(HOST_PREFIX):
        path = path[len(HOST_PREFIX):]
    else:
        source, colon, _ = path.partition(":")
        if colon and source and "/" not in source:
            raise ImagePathError(
                f"CD-ROM for '{vm.name}': '{path}' names an image in the VM '{source}'; "
                "attaching an image from another VM is not supported, give a path on this "
                f"host (dom0:PATH, or ./{path} for a local file with ':' in its name)", path)
    if not path:
        raise ImagePathError(f"CD-ROM for '{vm.name}': no image path given", path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise ImagePathError(f"CD-ROM for '{vm.name}': '{path}' does not exist", path) from None
    except OSError as exc:
        raise ImagePathError(f"CD-ROM for '{vm.name}': cannot read '{path}': "
                             f"{exc.strerror}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImagePathError(f"CD-ROM for '{vm.name}': '{path}' is a directory, "
                             "not an image file", path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ImagePathError(f"CD-ROM for '{vm.name}': '{path}' is neither a regular file "
                             "nor a block device", path)
    return CdromSpec(os.path.abspath(path), block=stat.S_ISBLK(st.st_mode))


def cmdline(vm, extra=()) -> str:
    services = ",".join(sorted(name for name, on in vm.services.items() if on))
    parts = ["console=ttyS0", "panic=-1", "quiet", vm.kernelopts or "",
             f"qubes.name={vm.name}"]
    if services:
        parts.append(f"qubes.services={services}")
    return " ".join(p for p in [*parts, *extra] if p)


def build_spec(vm, base_dir: str, accel: str, nics: tuple[NicSpec, ...] = (),
               extra_cmdline=(), cdrom: CdromSpec | None = None) -> DomainSpec:
    """Prepare this start's disks and describe the domain; call with the VM halted.

    `cdrom` comes from `cdrom_for`, checked before the start began.
    """
    kernel = kernel_files(vm)
    disks = [root_disk(vm)]
    if os.path.isfile(vm.private_img):
        disks.append(DiskSpec(vm.private_img, "vdb"))
    if vm.HAS_KERNEL:
        storage.fresh_volatile(vm.volatile_img)
        disks.append(DiskSpec(vm.volatile_img, "vdc"))
    console = os.path.join(vm.dir_path, CONSOLE_LOG)
    try:
        os.unlink(console)  # this start's log only
    except FileNotFoundError:
        pass
    memory = int(vm.memory)
    os.makedirs(RUNTIME_DIR, exist_ok=True)
    return DomainSpec(
        name=vm.name, uuid=domain_uuid(vm, base_dir), owner=owner_tag(base_dir), memory_mb=memory,
        maxmem_mb=int(vm.maxmem or memory) if vm.has_property("maxmem") else memory,
        vcpus=int(vm.vcpus or 1), disks=tuple(disks), console_log=console,
        agent_socket=agent_socket(base_dir, vm.name),
        kernel=kernel[0] if kernel else None, initramfs=kernel[1] if kernel else None,
        cmdline=cmdline(vm, extra_cmdline) if kernel else "", nics=nics, accel=accel,
        cdrom=cdrom)


def read_log(path: str) -> bytes:
    """A console log as far as it is written; nothing yet is empty."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""
