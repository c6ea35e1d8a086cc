"""qvm-add-template (TOOLS.md §7)."""
from __future__ import annotations

import os

from tools_helpers import xml_bytes

from qubes.tools import qvm_add_template, qvm_prefs


def test_registers_existing_template(base, run, fake_hv, monkeypatch):
    monkeypatch.delenv("QUBES_OFFLINE")
    tdir = os.path.join(str(base), "vm-templates", "debian-7")
    os.makedirs(tdir)
    open(os.path.join(tdir, "root.img"), "wb").close()
    assert run(qvm_add_template, "--rpm", "-l", "gray", "debian-7") == (
        0, "Template 'debian-7' registered.\n", "")
    assert os.path.isfile(os.path.join(tdir, "private.img"))
    _c, out, _e = run(qvm_prefs, "debian-7")
    assert "type               : TemplateVM\n" in out
    assert "installed_by_rpm   : True\n" in out
    assert "label              : gray\n" in out
    assert fake_hv.calls == []  # always offline


def test_path_and_conf(base, run, tmp_path):
    tdir = tmp_path / "tpl-dir"
    tdir.mkdir()
    (tdir / "root.img").write_bytes(b"")
    assert run(qvm_add_template, "-q", "-p", str(tdir), "-c", str(tdir / "t.conf"), "t1")[0] == 0
    assert run(qvm_prefs, "-g", "t1", "dir")[1] == f"{tdir}\n"
    assert run(qvm_prefs, "-g", "t1", "config")[1] == f"{tdir}/t.conf\n"


def test_missing_root_image_is_refused(base, run):
    before = xml_bytes(base)
    code, out, err = run(qvm_add_template, "-q", "nothere")
    assert (code, out) == (1, "") and err.startswith("ERROR: ") and "root.img" in err
    assert xml_bytes(base) == before


def test_bad_label_and_usage(base, run):
    tdir = os.path.join(str(base), "vm-templates", "t2")
    os.makedirs(tdir)
    open(os.path.join(tdir, "root.img"), "wb").close()
    code, _out, err = run(qvm_add_template, "-l", "pink", "t2")
    assert code == 1 and "no such label 'pink'" in err
    assert run(qvm_add_template)[0] == 2
