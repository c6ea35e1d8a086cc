"""Template roots and HVM templates on real VMs (issue 4 §5-6; CASES.md B96, B97)."""
from __future__ import annotations

import json
import os


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
