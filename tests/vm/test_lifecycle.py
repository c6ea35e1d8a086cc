"""VM lifecycle on real VMs (issue 4; CASES.md B88, B89, B92, B94, B95, B108, B110, B111)."""
from __future__ import annotations

import json
import os
import subprocess


def state(q, name: str) -> str:
    rows = json.loads(q.out("qvm-ls", "--format", "json"))
    return next(r["state"] for r in rows if r["name"] == name)


def test_appvm_boots_to_its_ready_line_and_shows_running(q, fresh):
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    out = q.out("qvm-start", work)
    assert "ready after" in out
    log = (q.base / "appvms" / work / "console.log").read_bytes()
    assert f"QUBES-READY {work}".encode() in log
    assert state(q, work) == "Running"
    assert q("qvm-check", "--running", work).returncode == 0
    q("qvm-shutdown", "--wait", work)
    assert state(q, work) == "Halted"
    assert q("qvm-check", "--running", work, check=False).returncode == 1


def test_private_survives_a_restart_and_root_does_not(q, fresh):
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    q("qvm-start", work)
    q("qvm-run", work, "echo kept > /rw/home/note; echo lost > /opt/note; sync")
    q("qvm-shutdown", "--wait", work)
    assert not (q.base / "appvms" / work / "root-overlay.qcow2").exists()
    q("qvm-start", work)
    assert q.out("qvm-run", "-p", work, "cat /rw/home/note") == "kept\n"
    proc = q("qvm-run", "-p", work, "cat /opt/note", check=False)
    assert proc.returncode == 1 and b"No such file" in proc.stdout


def test_qvm_run_passes_the_exit_code_and_refuses_a_halted_vm(q, fresh):
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    proc = q("qvm-run", work, "true", check=False)
    assert proc.returncode == 1 and f"VM '{work}' is not running".encode() in proc.stderr
    q("qvm-run", "-a", work, "true")  # -a starts it (B108)
    proc = q("qvm-run", "-p", work, "echo out; echo err >&2; exit 33", check=False)
    assert proc.returncode == 33 and proc.stdout == b"out\nerr\n"


def test_pause_blocks_shutdown_and_kill_stops_at_once(q, fresh):
    """B94: a paused VM is neither unpaused nor killed by qvm-shutdown."""
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    q("qvm-start", work)
    q("qvm-pause", work)
    assert state(q, work) == "Paused"
    proc = q("qvm-shutdown", work, check=False)
    assert proc.returncode == 1
    assert f"{work} is paused; unpause it first or use qvm-kill".encode() in proc.stderr
    assert state(q, work) == "Paused"
    q("qvm-unpause", work)
    assert q.out("qvm-run", "-p", work, "echo alive") == "alive\n"
    q("qvm-pause", work)
    q("qvm-kill", work)
    assert state(q, work) == "Halted"


def test_killing_a_halted_vm_or_dom0_is_a_clear_error(q, fresh):
    """B95: same answer twice, never a traceback."""
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    for _ in range(2):
        proc = q("qvm-kill", work, check=False)
        assert (proc.returncode, proc.stderr) == (1, f"ERROR: VM '{work}' is not running\n".encode())
    for cmd in ("qvm-kill", "qvm-shutdown"):
        proc = q(cmd, "dom0", check=False)
        assert (proc.returncode, proc.stderr) == (1, b"ERROR: cannot shut down or kill dom0\n")


def test_shutdown_all_wait_kills_a_vm_that_ignores_it(q, fresh):
    """B92: the one that ignores ACPI is killed with a warning; exit 0, all halted."""
    polite, stubborn = fresh("a"), fresh("b")
    for vm in (polite, stubborn):
        q("qvm-create", "-l", "red", vm)
        q("qvm-start", vm)
    # The guest's power-button watcher is what obeys ACPI: stop it.
    q("qvm-run", stubborn, "kill $(cat /tmp/power-button.pid)")
    proc = q("qvm-shutdown", "--all", "--wait", "--timeout", "8")
    assert f"WARNING: {stubborn} did not shut down within 8 s; killing it".encode() \
        in proc.stderr
    assert state(q, polite) == state(q, stubborn) == "Halted"


def test_a_guest_that_never_gets_ready_is_stopped_and_named(q, fresh):
    """B88: the timeout is the VM's qrexec_timeout, and nothing is left running."""
    slow = fresh("slow")
    q("qvm-create", "-l", "red", slow)
    q("qvm-prefs", "-s", slow, "qrexec_timeout", "1")
    proc = q("qvm-start", slow, check=False)
    assert proc.returncode == 1
    assert f"VM '{slow}' not ready within 1 s; it was stopped; see".encode() in proc.stderr
    assert state(q, slow) == "Halted"


def test_a_missing_kernel_is_refused_before_anything_is_defined(q, fresh):
    """B89: the kernel a VM is pinned to was removed after it was set."""
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    kdir = q.base / "vm-kernels" / "9.9.9"
    kdir.mkdir(parents=True)
    (kdir / "vmlinuz").write_bytes(b"not really a kernel")
    q("qvm-prefs", "-s", work, "kernel", "9.9.9")
    (kdir / "vmlinuz").unlink()
    proc = q("qvm-start", work, check=False)
    assert proc.returncode == 1
    assert f"kernel '9.9.9' for VM '{work}' is not installed (missing {kdir}/vmlinuz)".encode() \
        in proc.stderr
    defined = subprocess.run(["virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name"],
                             capture_output=True, text=True).stdout.split()
    assert work not in defined


def test_qvm_run_leaves_stdin_alone_and_stops_on_ctrl_c(q, fresh):
    """B111: stdin is never read (output only); B110: SIGINT exits 130, no traceback."""
    import signal
    import time

    from tests.conftest import BIN
    work = fresh("work")
    q("qvm-create", "-l", "red", "-t", "tiny", work)
    q("qvm-start", work)
    loop = subprocess.run(
        ["sh", "-c", f"for i in 1 2 3; do read line && {BIN}/qvm-run -p {work} \"echo $line\"; "
                     "done"], input=b"a\nb\nc\n", capture_output=True, env=dict(os.environ, **q.env))
    assert loop.stdout == b"a\nb\nc\n"  # three iterations: qvm-run took none of the input
    proc = subprocess.Popen([BIN / "qvm-run", "-p", work, "sleep 5"], env=dict(os.environ, **q.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert err == b"ERROR: interrupted\n"
    time.sleep(5)  # the guest finishes the command it was given, then answers again
    assert q.out("qvm-run", "-p", work, "echo again") == "again\n"
