"""qvm-start --cdrom: the tool parses, calls ops, maps errors (CASES.md B90).

The checks themselves are ops' (tests/ops/test_cdrom.py); here: a bad path
exits 1 with one `ERROR:` line before the hypervisor is asked anything, and
the path reaches `start_vm` as given.
"""
from __future__ import annotations

from qubes.ops.lifecycle import StartResult
from qubes.tools import qvm_start


def test_a_directory_exits_1_before_any_hypervisor_call(fixture_vms, fake_hv, run, tmp_path):
    isos = tmp_path / "isos"
    isos.mkdir()
    code, out, err = run(qvm_start, f"--cdrom={isos}", "win7")
    assert (code, out) == (1, "")
    assert err == f"ERROR: CD-ROM for 'win7': '{isos}' is a directory, not an image file\n"
    assert fake_hv.calls == []


def test_a_missing_image_exits_1_naming_it(fixture_vms, fake_hv, run):
    code, _out, err = run(qvm_start, "--cdrom", "/nonexistent.iso", "win7")
    assert code == 1
    assert err == "ERROR: CD-ROM for 'win7': '/nonexistent.iso' does not exist\n"
    assert fake_hv.calls == []


def test_an_image_in_another_vm_is_refused(fixture_vms, fake_hv, run):
    code, _out, err = run(qvm_start, "--cdrom=work:/home/user/x.iso", "win7")
    assert code == 1 and "from another VM is not supported" in err
    assert fake_hv.calls == []


def test_the_path_reaches_the_library_as_given(fixture_vms, fake_hv, run, monkeypatch):
    seen = {}

    def fake_start(*args, **kw):
        seen.update(kw, name=args[3])
        return StartResult()
    monkeypatch.setattr(qvm_start, "start_vm", fake_start)
    assert run(qvm_start, "--cdrom", "dom0:/isos/x.iso", "win7")[0] == 0
    assert (seen["name"], seen["cdrom"]) == ("win7", "dom0:/isos/x.iso")
    assert run(qvm_start, "win7")[0] == 0
    assert seen["cdrom"] is None


def test_cdrom_with_dispvm_is_a_usage_error(fixture_vms, fake_hv, run):
    code, _out, err = run(qvm_start, "--dispvm", "fedora-20-x64", "--cdrom", "/x.iso")
    assert code == 2 and "--cdrom" in err
