"""DisposableVMs on real VMs (issue 4 §7; CASES.md B93, B99, B100, B103)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

from tests.conftest import BIN


def names(q) -> set[str]:
    return {r["name"] for r in json.loads(q.out("qvm-ls", "--format", "json"))}


def defined_domains() -> list[str]:
    return subprocess.run(["virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True).stdout.split()


def start_dispvm(q) -> str:
    out = q.out("qvm-start", "--dispvm", "tiny")
    return re.match(r"(disp[0-9]+): started", out).group(1)


def gone(q, name: str) -> bool:
    return (name not in names(q) and not (q.base / "appvms" / name).exists()
            and name not in defined_domains())


def test_two_dispvms_at_once_get_their_own_names_and_leave_no_trace(q):
    """B93: started together, then shut down together with --wait: exit 0, both gone."""
    starts = [subprocess.Popen([BIN / "qvm-start", "--dispvm", "tiny"],
                               env=dict(os.environ, **q.env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE) for _ in range(2)]
    disps = []
    for proc in starts:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        disps.append(re.match(rb"(disp[0-9]+): started", out).group(1).decode())
    assert disps[0] != disps[1]
    for disp in disps:
        assert disp in names(q)
        assert (q.base / "appvms" / disp / "private.img").is_file()
    assert q.out("qvm-run", "-p", disps[0], "echo scratch > /rw/home/x; cat /rw/home/x") \
        == "scratch\n"
    proc = q("qvm-shutdown", "--wait", *disps)  # exit 0 though they are gone afterwards
    assert proc.stderr == b""
    assert gone(q, disps[0]) and gone(q, disps[1])


def test_a_dispvm_that_powers_itself_off_is_removed_by_the_watcher(q):
    """B100: no tool waits for this stop; the watcher started with the VM cleans up."""
    disp = start_dispvm(q)
    q("qvm-run", disp, "(sleep 1; poweroff -f) >/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while not gone(q, disp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gone(q, disp)


def test_names_are_never_reused_and_dispn_is_reserved(q, fresh):
    """B103."""
    seen = []
    for _ in range(2):
        disp = start_dispvm(q)
        seen.append(disp)
        q("qvm-kill", disp)
        assert gone(q, disp)
    assert len(set(seen)) == 2
    proc = q("qvm-create", "-l", "red", "disp9999", check=False)
    assert proc.returncode == 1 and b"reserved" in proc.stderr


def test_a_dispvm_left_by_a_crash_is_removed_before_the_next_one_starts(q):
    """B99: registered, halted, its directory present (as after a power loss): the next
    `qvm-start --dispvm` removes it with a WARNING naming it, then starts a new one."""
    from qubes.model.host import FixedHost
    from qubes.ops import dispvm
    left = dispvm.create(str(q.base), FixedHost(), "tiny")  # registered, never started
    assert left in names(q) and (q.base / "appvms" / left).is_dir()
    proc = q("qvm-start", "--dispvm", "tiny")
    assert f"WARNING: removed the DisposableVM '{left}' left from an earlier run".encode() \
        in proc.stderr
    new = re.match(rb"(disp[0-9]+): started", proc.stdout).group(1).decode()
    assert gone(q, left) and new != left and new in names(q)
    q("qvm-kill", new)
    assert gone(q, new)
