"""Template roots and HVM templates on real VMs (issue 4 §5-6; CASES.md B96-B98)."""
from __future__ import annotations

import json
import os
import subprocess

from tests.vm.conftest import wait_for_watchers


def test_children_see_template_changes_only_after_the_commit(q, fresh):
    """B96: a pending change waits while a child runs, then reaches children started later."""
    tpl, a, b = fresh("t"), fresh("a"), fresh("b")
    q("qvm-template-build", "tiny", "--name", tpl)
    for vm in (a, b):
        q("qvm-create", "-l", "red", "-t", tpl, vm)
    q("qvm-start", a)
    q("qvm-start", tpl)
    q("qvm-run", tpl, "mkdir /opt/new && sync")
    q("qvm-shutdown", "--wait", tpl)  # a runs: the change must wait
    q("qvm-start", b)
    assert q.out("qvm-run", "-p", b, "ls /opt") == ""
    proc = q("qvm-template-commit", tpl, check=False)
    assert proc.returncode == 1
    assert f"ERROR: VM(s) based on '{tpl}' are running: {a}, {b}\n".encode() in proc.stderr \
        or f"ERROR: VM(s) based on '{tpl}' are running: {b}, {a}\n".encode() in proc.stderr
    q("qvm-start", tpl)  # the template still has its change while it waits
    assert q.out("qvm-run", "-p", tpl, "ls /opt") == "new\n"
    q("qvm-shutdown", "--wait", tpl, a, b)  # the last one down lets the commit happen
    assert "no changes" in q.out("qvm-template-commit", tpl)  # nothing left pending
    q("qvm-start", a)
    assert q.out("qvm-run", "-p", a, "ls /opt") == "new\n"


def test_reverting_drops_the_changes_of_the_last_run(q, fresh):
    tpl, child = fresh("t"), fresh("c")
    q("qvm-template-build", "tiny", "--name", tpl)
    q("qvm-create", "-l", "red", "-t", tpl, child)
    q("qvm-start", child)  # keeps the change pending
    q("qvm-start", tpl)
    q("qvm-run", tpl, "touch /opt/mistake && sync")
    q("qvm-shutdown", "--wait", tpl)
    assert "changes dropped" in q.out("qvm-revert-template-changes", "--force", tpl)
    q("qvm-shutdown", "--wait", child)
    q("qvm-start", tpl)
    assert q.out("qvm-run", "-p", tpl, "ls /opt") == ""


def test_an_hvm_and_its_template_never_run_together(q, fresh):
    """B96, HVM rule: the second start is refused, naming the running one."""
    th, h = fresh("th"), fresh("h")
    q("qvm-create", "--class", "TemplateHVM", "-l", "black", th)
    q("qvm-create", "--class", "HVM", "-l", "green", "-t", th, h)
    q("qvm-prefs", "-s", h, "memory", "128")
    q("qvm-prefs", "-s", th, "memory", "128")
    q("qvm-start", h)  # no OS on the disk: the firmware keeps it running, which is enough
    proc = q("qvm-start", th, check=False)
    assert proc.returncode == 1
    assert f"cannot start '{th}' while {h} is running".encode() in proc.stderr
    q("qvm-kill", h)
    q("qvm-start", th)
    proc = q("qvm-start", h, check=False)
    assert proc.returncode == 1
    assert f"cannot start '{h}' while {th} is running".encode() in proc.stderr
    rows = {r["name"]: r["state"] for r in json.loads(q.out("qvm-ls", "--format", "json"))}
    assert (rows[th], rows[h]) == ("Running", "Halted")


def test_a_child_sees_its_templates_current_root_size(q, fresh):
    """B98: the per-start overlay takes the template's size now, not a stale one."""
    tpl, child = fresh("t"), fresh("c")
    q("qvm-template-build", "tiny", "--name", tpl)
    q("qvm-create", "-l", "red", "-t", tpl, child)
    q("qvm-start", child)
    q("qvm-shutdown", "--wait", child)
    os.truncate(q.base / "vm-templates" / tpl / "root.img", 2 << 30)
    q("qvm-start", child)
    sectors = int(q.out("qvm-run", "-p", child, "cat /sys/block/vda/size"))
    assert sectors * 512 == 2 << 30


def qemu_io(image, command: str, *, write: bool = False) -> str:
    proc = subprocess.run(["qemu-io", *([] if write else ["-r"]), "-f", "qcow2", "-c", command,
                           str(image)], capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


def test_a_template_hvm_reverts_like_a_templatevm_and_makes_a_missing_overlay(q, fresh):
    """B97: revert on a TemplateHVM drops the pending changes and keeps what was committed;
    a TemplateHVM from a layout without the overlay file starts, the overlay made then.

    The HVM has no OS to write with, and its stop commits at once (no child can run with
    it), so the changes a run left pending are written into its overlay with qemu-io."""
    th = fresh("th")
    q("qvm-create", "--class", "TemplateHVM", "-l", "black", th)
    q("qvm-prefs", "-s", th, "memory", "128")
    tdir = q.base / "vm-templates" / th
    overlay = tdir / "root-cow.qcow2"
    with open(tdir / "root.img", "r+b") as f:  # the committed state
        f.seek(1 << 20)
        f.write(b"c" * 4096)
    q("qvm-start", th)
    q("qvm-kill", th)
    wait_for_watchers(q.base, th)  # its stop's own clean-up would commit the change below
    assert "no changes" in q.out("qvm-revert-template-changes", "--force", th)
    qemu_io(overlay, "write -P 0x61 1M 4k", write=True)  # the last run's change...
    assert "Pattern verification failed" not in qemu_io(overlay, "read -P 0x61 1M 4k")
    assert "changes dropped" in q.out("qvm-revert-template-changes", "--force", th)
    assert "Pattern verification failed" not in qemu_io(overlay, "read -P 0x63 1M 4k")
    assert "no changes" in q.out("qvm-template-commit", th)
    overlay.unlink()  # an older layout: no overlay file at all
    q("qvm-start", th)
    rows = {r["name"]: r["state"] for r in json.loads(q.out("qvm-ls", "--format", "json"))}
    assert rows[th] == "Running"
    assert overlay.exists()
    q("qvm-kill", th)
    wait_for_watchers(q.base, th)
    assert "Pattern verification failed" not in qemu_io(overlay, "read -P 0x63 1M 4k")
