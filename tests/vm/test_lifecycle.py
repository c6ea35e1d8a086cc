"""VM lifecycle on real VMs (issue 4; CASES.md B87, B88, B89, B91, B92, B94, B95, B108-B111,
B115)."""
from __future__ import annotations

import json
import os
import subprocess

from tests.vm.conftest import URI, watchers


def state(q, name: str) -> str:
    rows = json.loads(q.out("qvm-ls", "--format", "json"))
    return next(r["state"] for r in rows if r["name"] == name)


def libvirt_memory_mib(name: str) -> int:
    out = subprocess.run(["virsh", "-q", "-c", URI, "domstats", "--balloon", name],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split("balloon.current=")[1].split()[0]) // 1024


class Counting:
    """A libvirt connection that records the name of every call made on it."""

    def __init__(self, conn):
        self.conn, self.calls = conn, []

    def __getattr__(self, attr):
        self.calls.append(attr)
        return getattr(self.conn, attr)


def test_appvm_boots_to_its_ready_line_and_shows_running(q, fresh):
    work = fresh("work")
    q("qvm-create", "-l", "red", work)
    q("qvm-prefs", "-s", work, "memory", "320")
    out = q.out("qvm-start", work)
    assert "ready after" in out
    log = (q.base / "appvms" / work / "console.log").read_bytes()
    assert f"QUBES-READY {work}".encode() in log
    assert state(q, work) == "Running"
    assert q("qvm-check", "--running", work).returncode == 0
    # B115: configured and current memory, the current figure as libvirt reports it.
    assert libvirt_memory_mib(work) == 320
    assert q.out("qvm-ls", "--raw-data", "--fields", "name,memory,mem", work) \
        == f"{work}|320|320\n"
    # B86/B87: what a start may count on is total minus what running guests are assigned,
    # for all of them at once in one listing (plus one call for the host's total).
    from qubes import vmm
    hv = vmm.connect(offline=False, uri=URI)
    counting = hv._conn = Counting(hv.conn)
    memory = hv.host_memory()
    assert sorted(counting.calls) == ["getAllDomainStats", "getInfo"]
    assert memory.assigned_mb >= 320 and memory.domains >= 1
    assert memory.total_mb == hv.host_memory_mb()
    hv._conn = counting.conn
    hv.close()
    q("qvm-shutdown", "--wait", work)
    assert state(q, work) == "Halted"
    assert q("qvm-check", "--running", work, check=False).returncode == 1
    assert q.out("qvm-ls", "--raw-data", "--fields", "name,memory,mem", work) == f"{work}|320|\n"
    proc = q("qvm-shutdown", work)  # already off: done (R4 behaves the same)
    assert (proc.returncode, proc.stderr) == (0, b"")


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
    # B109: no "command failed with code" of our own, with or without -q.
    for argv in (["-q", "-p"], ["-p"], ["-q"]):
        proc = q("qvm-run", *argv, work, "exit 33", check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (33, b"", b""), argv


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
    # --wait neither sits out its timeout nor kills it then: refused at once, the same way.
    import time
    started = time.monotonic()
    proc = q("qvm-shutdown", "--wait", "--timeout", "60", work, check=False)
    assert time.monotonic() - started < 30  # refused, not waited out
    assert (proc.returncode, proc.stderr) == (
        1, f"ERROR: {work} is paused; unpause it first or use qvm-kill\n".encode())
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


def test_a_ready_timeout_leaves_no_watcher_behind(q, fresh):
    """B88: the start that gave up has cleaned up when it returns; no per-VM process of
    the stopped VM outlives it (its watcher is gone, not left to notice later)."""
    slow = fresh("slow")
    q("qvm-create", "-l", "red", slow)
    q("qvm-prefs", "-s", slow, "qrexec_timeout", "1")
    proc = q("qvm-start", slow, check=False)
    assert proc.returncode == 1 and b"not ready within 1 s" in proc.stderr
    assert watchers(q.base, slow) == []
    assert not (q.base / "appvms" / slow / "volatile.img").exists()
    assert not (q.base / "appvms" / slow / "root-overlay.qcow2").exists()
    q("qvm-start", slow, "--no-wait")  # a start that succeeds does have its watcher
    assert len(watchers(q.base, slow)) == 1


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


def test_qvm_run_stdin_only_with_p_and_stops_on_ctrl_c(q, fresh):
    """B108: -a -p starts the VM, then the command gets our stdin; B111: without -p, or
    with --no-stdin, stdin is never read; B110: SIGINT exits 130, SIGTERM 143.

    The command already sent runs to its end in the guest; the guest then answers again.
    """
    import signal
    import time

    from tests.conftest import BIN
    work = fresh("work")
    q("qvm-create", "-l", "red", "-t", "tiny", work)
    env = dict(os.environ, **q.env)
    forwarded = subprocess.run([BIN / "qvm-run", "-a", "-p", work, "cat > /tmp/f; echo took"],
                               input=b"data\x00\xff\n", capture_output=True, env=env)
    assert (forwarded.returncode, forwarded.stdout) == (0, b"took\n"), forwarded.stderr
    assert q("qvm-run", "-p", work, "cat /tmp/f").stdout == b"data\x00\xff\n"
    for argv in ("-p --no-stdin", ""):
        loop = subprocess.run(
            ["sh", "-c", f"for i in 1 2 3; do read line && {BIN}/qvm-run {argv} {work} "
                         "\"echo $line >> /tmp/seen\"; done"],
            input=b"a\nb\nc\n", capture_output=True, env=env)
        assert loop.returncode == 0, loop.stderr
    # three iterations each time: qvm-run took none of the loop's input
    assert q("qvm-run", "-p", work, "cat /tmp/seen").stdout == b"a\nb\nc\n" * 2
    for signum, code, message in ((signal.SIGINT, 130, b"ERROR: interrupted\n"),
                                  (signal.SIGTERM, 143, b"ERROR: terminated\n")):
        proc = subprocess.Popen([BIN / "qvm-run", "-p", work, "sleep 3"],
                                env=dict(os.environ, **q.env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=10)
        assert (proc.returncode, err) == (code, message)
    # Queued behind the two sleeps the guest still finishes, then answered.
    assert q.out("qvm-run", "-p", "--timeout", "30", work, "echo again") == "again\n"


def test_an_hvm_without_netvm_starts_without_an_interface(q, fresh):
    """B91: no <interface> in the domain; qvm-ls shows no address."""
    hvm = fresh("hvm")
    q("qvm-create", "--class", "HVM", "-l", "green", hvm)
    q("qvm-prefs", "-s", hvm, "netvm", "none")
    q("qvm-prefs", "-s", hvm, "memory", "128")
    q("qvm-start", hvm)  # no OS on the disk: the firmware keeps it running, which is enough
    assert state(q, hvm) == "Running"
    xml = subprocess.run(["virsh", "-q", "-c", URI, "dumpxml", hvm], capture_output=True,
                         text=True, check=True).stdout
    assert "<interface" not in xml
    iflist = subprocess.run(["virsh", "-q", "-c", URI, "domiflist", hvm], capture_output=True,
                            text=True, check=True).stdout
    assert iflist.strip() == ""
    row = next(r for r in json.loads(q.out("qvm-ls", "--format", "json")) if r["name"] == hvm)
    assert (row["netvm"], row["ip"], row["gateway"]) == (None, None, None)
    assert q.out("qvm-ls", "--raw-data", "--fields", "name,ip", hvm) == f"{hvm}|\n"
    q("qvm-kill", hvm)
