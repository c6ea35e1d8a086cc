"""DisposableVMs on real VMs (issue 4 §7; CASES.md B99, B100, B103)."""
from __future__ import annotations

import json
import re
import subprocess
import time


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


def test_a_dispvm_leaves_no_trace_after_it_stops(q):
    disp = start_dispvm(q)
    assert disp in names(q)
    assert (q.base / "appvms" / disp / "private.img").is_file()
    assert q.out("qvm-run", "-p", disp, "echo scratch > /rw/home/x; cat /rw/home/x") \
        == "scratch\n"
    q("qvm-shutdown", "--wait", disp)  # B93: exit 0 though the VM is gone afterwards
    assert gone(q, disp)


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
