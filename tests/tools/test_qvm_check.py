"""qvm-check (TOOLS.md §7)."""
from __future__ import annotations

from qubes.tools import qvm_check


def test_exists(fixture_vms, run):
    assert run(qvm_check, "work") == (0, "A VM with the name 'work' does exist.\n", "")
    assert run(qvm_check, "dom0")[0] == 0


def test_does_not_exist(fixture_vms, run):
    assert run(qvm_check, "nosuch") == (
        1, "A VM with the name 'nosuch' does not exist in the system!\n", "")


def test_quiet(fixture_vms, run):
    assert run(qvm_check, "-q", "work") == (0, "", "")
    assert run(qvm_check, "-q", "nosuch") == (1, "", "")


def test_usage_and_missing_store(base, run, tmp_path, monkeypatch):
    code, _out, err = run(qvm_check)
    assert code == 2 and err.startswith("usage:")
    monkeypatch.setenv("QUBES_BASE_DIR", str(tmp_path / "empty"))
    code, out, err = run(qvm_check, "work")
    assert (code, out) == (1, "") and err.startswith("ERROR: ") and "qvm-init-storage" in err
