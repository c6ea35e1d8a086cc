"""`--cdrom` for one start of a VM that boots from disk (CASES.md B90).

A bad path is refused before the hypervisor is asked anything, naming the
path; a good one reaches the DomainSpec as an absolute path, for that start
only.
"""
from __future__ import annotations

import os
import stat

import pytest

from qubes.errors import ImagePathError, QubesError
from qubes.ops import domain, watch
from qubes.ops.lifecycle import start_vm
from qubes.store.access import read_collection
from qubes.util.host import LocalHost
from qubes.vmm.base import CdromSpec, DomainInfo, DomainState, HostMemory
from tests.conftest import run


class RecordingHypervisor:
    """Every VM halted, plenty of memory; records each call and each spec started."""

    offline = False
    uri = "fake:///"

    def __init__(self):
        self.calls: list[str] = []
        self.specs = []

    def domain_states(self, names):
        self.calls.append("domain_states")
        return {n: DomainInfo(DomainState.HALTED) for n in names}

    def host_memory(self):
        self.calls.append("host_memory")
        return HostMemory(16384, 0, 0)

    def start(self, spec):
        self.calls.append("start")
        self.specs.append(spec)


@pytest.fixture
def win(base, monkeypatch):
    """A standalone HVM `win` (boots from its disk); no watcher process is spawned."""
    monkeypatch.setenv("QUBES_ACCEL", "tcg")
    monkeypatch.setattr(watch, "spawn", lambda *_args: None)
    run("qvm-create", "--hvm", "-l", "green", "win")
    return base


def start(base, untrusted_cdrom=None, name="win"):
    hv = RecordingHypervisor()
    start_vm(str(base), LocalHost(str(base)), hv, name, wait=False, cdrom=untrusted_cdrom)
    return hv


def refused(base, untrusted_cdrom, match, name="win"):
    """The start fails with `match`, and not one hypervisor call was made."""
    hv = RecordingHypervisor()
    with pytest.raises(QubesError, match=match) as info:
        start_vm(str(base), LocalHost(str(base)), hv, name, wait=False, cdrom=untrusted_cdrom)
    assert hv.calls == []
    return info.value


def test_a_directory_is_refused_naming_it(win, tmp_path):
    isos = tmp_path / "isos"
    isos.mkdir()
    exc = refused(win, str(isos), f"^CD-ROM for 'win': '{isos}' is a directory, "
                                  "not an image file$")
    assert isinstance(exc, ImagePathError) and exc.path == str(isos)


@pytest.mark.parametrize("missing", ["/nonexistent.iso", "{tmp}/no/such.iso",
                                     "{tmp}/file/below-a-file.iso", "dom0:/nonexistent.iso"])
def test_a_missing_path_is_refused_naming_it(win, tmp_path, missing):
    (tmp_path / "file").write_bytes(b"x")
    given = missing.format(tmp=tmp_path)
    shown = given.removeprefix("dom0:")
    refused(win, given, f"^CD-ROM for 'win': '{shown}' does not exist$")


def test_neither_file_nor_block_device_is_refused(win, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(win, str(fifo), "is neither a regular file nor a block device")


def test_an_empty_path_is_refused(win):
    refused(win, "", "no image path given")
    refused(win, "dom0:", "no image path given")


@pytest.mark.parametrize("given", ["work:/home/user/x.iso", "sys-usb:x.iso"])
def test_an_image_in_another_vm_is_refused_clearly(win, given):
    refused(win, given, "attaching an image from another VM is not supported")


def test_dom0_prefix_is_a_path_on_this_host(win, tmp_path):
    iso = tmp_path / "ok.iso"
    iso.write_bytes(b"\0" * 4096)
    hv = start(win, f"dom0:{iso}")
    assert hv.specs[0].cdrom == CdromSpec(str(iso))


def test_a_relative_path_becomes_absolute_and_colons_need_a_slash(win, tmp_path, monkeypatch):
    """libvirtd does not share our directory; `./a:b.iso` is a local file, not VM `a`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a:b.iso").write_bytes(b"\0" * 4096)
    hv = start(win, "./a:b.iso")
    assert hv.specs[0].cdrom == CdromSpec(str(tmp_path / "a:b.iso"))
    refused(win, "a:b.iso", r"'a:b\.iso' names an image in the VM 'a'.*\./a:b\.iso")


def test_a_block_device_is_attached_as_one(win):
    dev = next((os.path.join("/dev", n) for n in sorted(os.listdir("/dev"))
                if stat.S_ISBLK(os.stat(os.path.join("/dev", n)).st_mode)), None)
    if dev is None:
        pytest.skip("no block device under /dev")
    hv = start(win, dev)
    assert hv.specs[0].cdrom == CdromSpec(dev, block=True)


def test_the_cdrom_is_for_this_start_only(win, tmp_path):
    iso = tmp_path / "ok.iso"
    iso.write_bytes(b"\0" * 4096)
    assert start(win, str(iso)).specs[0].cdrom == CdromSpec(str(iso))
    assert start(win).specs[0].cdrom is None


def test_a_vm_booting_its_kernel_is_refused(base, tmp_path):
    (base / "vm-templates" / "t").mkdir(parents=True)
    (base / "vm-templates" / "t" / "root.img").write_bytes(b"\0" * 65536)
    run("qvm-add-template", "t")
    run("qvm-create", "-l", "red", "work")
    iso = tmp_path / "ok.iso"
    iso.write_bytes(b"\0" * 4096)
    refused(base, str(iso), "'work' boots its kernel directly", name="work")
    with read_collection(str(base), LocalHost(str(base))) as app:
        assert not os.path.exists(os.path.join(app["work"].dir_path, domain.APPVM_OVERLAY))

