"""qvm-start --cdrom on a real HVM (CASES.md B90): bad paths fail before libvirt is
asked anything; a good one is attached read-only for that start only."""
from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

from tests.vm.conftest import URI


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                          check=check, timeout=60)


def cdroms(name: str) -> list[ET.Element]:
    root = ET.fromstring(virsh("dumpxml", name).stdout)
    return [d for d in root.iter("disk") if d.get("device") == "cdrom"]


def make_image(tmp_path):
    """A small ISO when an ISO maker is installed; else any regular file, which
    libvirt attaches just as well (the firmware finds nothing to boot on it)."""
    src = tmp_path / "iso-src"
    src.mkdir()
    (src / "README").write_text("qubes-core cdrom test\n")
    image = tmp_path / "small.iso"
    for tool in ("genisoimage", "mkisofs", "xorrisofs"):
        if shutil.which(tool):
            subprocess.run([tool, "-quiet", "-V", "QTEST", "-o", str(image), str(src)],
                           check=True, capture_output=True, timeout=60)
            return image
    if shutil.which("xorriso"):
        subprocess.run(["xorriso", "-as", "mkisofs", "-V", "QTEST", "-o", str(image), str(src)],
                       check=True, capture_output=True, timeout=60)
        return image
    image.write_bytes(b"\0" * (1 << 20))
    return image


def test_an_hvm_gets_a_cdrom_for_one_start_and_bad_paths_define_nothing(q, fresh, tmp_path):
    hvm = fresh("hvm")
    q("qvm-create", "--class", "HVM", "-l", "green", hvm)
    q("qvm-prefs", "-s", hvm, "netvm", "none")  # no netvm to boot first
    q("qvm-prefs", "-s", hvm, "memory", "128")
    isos = tmp_path / "isos"
    isos.mkdir()
    proc = q("qvm-start", f"--cdrom={isos}", hvm, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode() == (f"ERROR: CD-ROM for '{hvm}': '{isos}' is a directory, "
                                    "not an image file\n")
    proc = q("qvm-start", "--cdrom=/nonexistent.iso", hvm, check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"ERROR: CD-ROM for '{hvm}': '/nonexistent.iso' does not exist\n"
    assert virsh("dominfo", hvm, check=False).returncode != 0  # no domain left defined
    assert virsh("uri").stdout.strip() == URI                  # the daemon is alive

    image = make_image(tmp_path)
    os.chown(image, 65534, 65534)  # a user's file, as ISOs are
    os.chmod(image, 0o644)
    q("qvm-start", f"--cdrom=dom0:{image}", hvm)  # no OS: the firmware keeps it running
    [cd] = cdroms(hvm)
    assert cd.get("type") == "file"
    assert cd.find("source").get("file") == str(image)
    assert cd.find("target").get("bus") == "ide"
    assert cd.find("readonly") is not None
    block = virsh("qemu-monitor-command", "--hmp", hvm, "info block").stdout
    assert str(image) in block and "read-only" in block  # QEMU opened it, read-only
    q("qvm-kill", hvm)
    st = os.stat(image)
    assert (st.st_uid, st.st_gid) == (65534, 65534)  # libvirt did not take it over

    q("qvm-start", hvm)
    assert cdroms(hvm) == []
    q("qvm-kill", hvm)
