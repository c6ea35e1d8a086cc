"""Shared fixtures: a fresh QUBES_BASE_DIR in offline mode, and command runners."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
BIN = Path(sys.executable).parent


@pytest.fixture
def base(tmp_path, monkeypatch):
    """An initialised, empty collection directory; every command runs offline."""
    d = tmp_path / "qubes"
    monkeypatch.setenv("QUBES_BASE_DIR", str(d))
    monkeypatch.setenv("QUBES_OFFLINE", "1")
    run("qvm-init-storage")
    return d


def run(cmd: str, *args, check: bool = True, env: dict | None = None, input: bytes | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run an installed console script of this project (a real process, as users do)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run([str(BIN / cmd), *map(str, args)], capture_output=True, env=full_env,
                          timeout=timeout, **stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout.decode(errors='replace')}\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tiny real filesystem at `path`, to meet ENOSPC for real; skips unless root can mount."""
    path.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                            "tmpfs", path], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)


def peers_or_skip() -> Path:
    if not (PEERS / "emergency-restore-v3").exists():
        pytest.skip(f"the peer tools are not at {PEERS} (../shared/peers is absent)")
    return PEERS
