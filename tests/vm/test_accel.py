"""The accelerator is decided by booting (VMM.md §10), never by /dev/kvm alone."""
from __future__ import annotations

import glob
import subprocess

from qubes import vmm
from qubes.ops import accel


def test_the_probe_boots_under_tcg_and_leaves_no_domain(q):
    kdir = sorted(glob.glob(str(q.base / "vm-kernels" / "*")))[0]
    hv = vmm.connect(offline=False, uri="qemu:///system")
    try:
        assert accel.boots(hv, f"{kdir}/vmlinuz", f"{kdir}/initramfs", "qemu", 30)
        kvm = accel.probe(hv, f"{kdir}/vmlinuz", f"{kdir}/initramfs", timeout=10)
    finally:
        hv.close()
    assert kvm in ("kvm", "tcg")  # whichever this host can really run
    names = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name"],
                           capture_output=True, text=True).stdout
    assert "qubes-accel-probe" not in names


def test_the_choice_is_shown_by_qvm_ls_host(q, fresh):
    vm = fresh("a")
    q("qvm-create", "-l", "red", "-t", "tiny", vm)
    q("qvm-start", vm)  # a start decides it, if no earlier one did
    q("qvm-kill", vm)
    out = q.out("qvm-ls", "--host")
    assert "accelerator:  kvm" in out or "accelerator:  tcg" in out
    assert "MiB free of" in out


def test_qubes_accel_overrides_the_cache(monkeypatch):
    monkeypatch.setenv("QUBES_ACCEL", "tcg")
    assert accel.cached() == "tcg"
    monkeypatch.setenv("QUBES_ACCEL", "kvm")
    assert accel.cached() == "kvm"
