"""Start-up properties: lazy imports (STYLE.md §5.8) and the installed console scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("module", ["qvm_prefs", "qvm_ls", "qubes_prefs", "qvm_check",
                                    "qvm_service", "qvm_remove", "qvm_clone",
                                    "qvm_add_template"])
def test_importing_a_tool_does_not_import_libvirt(module):
    out = _python(f"import sys, qubes, qubes.tools.{module}\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] == 'libvirt'"
                  " or m.startswith('qubes.backup')))")
    assert out.strip() == "[]"


def _script(name: str, *args, base: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, QUBES_BASE_DIR=str(base), QUBES_OFFLINE="1")
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_console_scripts_offline(tmp_path):
    assert _script("qvm-init-storage", base=tmp_path).returncode == 0
    proc = _script("qvm-prefs", "dom0", base=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("name               : dom0\n")
    proc = _script("qvm-prefs", "-s", "dom0", "memory", "0", base=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        1, "ERROR: Invalid value for memory: Memory size must be positive\n")
    proc = _script("qvm-ls", "--raw-data", "--fields", "name,state,class", base=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "dom0|Halted|AdminVM\n", "")
    for name in ("qvm-check", "qubes-prefs", "qvm-service", "qvm-remove", "qvm-clone",
                 "qvm-add-template"):
        proc = _script(name, "--help", base=tmp_path)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), name
