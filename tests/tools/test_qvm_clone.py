"""qvm-clone (TOOLS.md §7; CASES.md B64)."""
from __future__ import annotations

import os

from tools_helpers import running, xml_bytes

from qubes.tools import qvm_clone, qvm_prefs, qvm_service

MiB = 1024 * 1024


def _write_at(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_clone_copies_data_and_keeps_holes(fixture_vms, run):
    src = os.path.join(str(fixture_vms), "appvms", "standalone")
    _write_at(os.path.join(src, "private.img"), 5 * MiB, b"private data")
    _write_at(os.path.join(src, "root.img"), 100 * MiB, b"root data")
    assert run(qvm_clone, "-q", "standalone", "copy") == (0, "", "")
    dst = os.path.join(str(fixture_vms), "appvms", "copy")
    for name, offset, data in (("private.img", 5 * MiB, b"private data"),
                               ("root.img", 100 * MiB, b"root data")):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        assert os.path.getsize(d) == os.path.getsize(s)
        with open(d, "rb") as f:
            f.seek(offset)
            assert f.read(len(data)) == data
        # sparse: far less allocated than the apparent size
        assert os.stat(d).st_blocks * 512 < 16 * MiB < os.path.getsize(d)


def test_clone_copies_properties(fixture_vms, run):
    assert run(qvm_prefs, "-s", "work", "memory", "1234")[0] == 0
    assert run(qvm_prefs, "-s", "work", "netvm", "netvm")[0] == 0
    assert run(qvm_service, "work", "-e", "cups")[0] == 0
    assert run(qvm_clone, "work", "work2") == (
        0, "Cloning 'work' to 'work2'...\nVM 'work2' created.\n", "")
    _c, listing, _e = run(qvm_prefs, "work2")
    assert "template           : fedora-20-x64\n" in listing
    assert "memory             : 1234\n" in listing
    assert "netvm              : netvm\n" in listing
    assert "label              : blue\n" in listing
    assert "cups" in run(qvm_service, "work2")[1]


def test_clone_hvm_to_dir(fixture_vms, run, tmp_path):
    target = tmp_path / "elsewhere" / "win8"
    assert run(qvm_clone, "-q", "-p", str(target), "win7", "win8") == (0, "", "")
    assert (target / "root.img").is_file()
    assert run(qvm_prefs, "-g", "win8", "dir")[1] == f"{target}\n"
    assert run(qvm_prefs, "-g", "win8", "type")[1] == "HVM\n"


def test_clone_errors_leave_nothing(fixture_vms, run, fake_hv):
    before = xml_bytes(fixture_vms)
    appvms = sorted(os.listdir(os.path.join(str(fixture_vms), "appvms")))
    assert run(qvm_clone, "work", "personal")[0:2] == (1, "Cloning 'work' to 'personal'...\n")
    assert run(qvm_clone, "-q", "nosuch", "x") == (
        1, "", "ERROR: A VM with the name 'nosuch' does not exist in the system.\n")
    code, _out, err = run(qvm_clone, "-q", "work", "1bad")
    assert code == 1 and "must start with a letter" in err
    fake_hv.running["work"] = running()
    code, _out, err = run(qvm_clone, "-q", "work", "work3")
    assert code == 1 and "running" in err
    assert run(qvm_clone, "-q", "dom0", "dom1")[0] == 1
    assert xml_bytes(fixture_vms) == before
    assert sorted(os.listdir(os.path.join(str(fixture_vms), "appvms"))) == appvms


def test_clone_source_without_directory(fixture_vms, run):
    import shutil
    shutil.rmtree(os.path.join(str(fixture_vms), "appvms", "personal"))
    code, out, err = run(qvm_clone, "-q", "personal", "p2")
    assert (code, out) == (1, "")
    assert err.startswith("ERROR: cannot read the files of 'personal'")


def test_clone_does_not_hold_the_lock_while_copying(fixture_vms, run, monkeypatch):
    """B64: a reader can load qubes.xml while the image copy runs."""
    from qubes.storage import file as storage
    from qubes.tools import qvm_check
    seen = []
    real_build = storage.build_dir

    def build_and_probe(final_dir, images):
        seen.append(qvm_check.main(["-q", "work"]))
        return real_build(final_dir, images)

    monkeypatch.setattr(storage, "build_dir", build_and_probe)
    assert run(qvm_clone, "-q", "work", "work4")[0] == 0
    assert seen == [0]
