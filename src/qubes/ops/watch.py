"""What happens when a VM stops, however it stops.

`spawn` starts a detached watcher (`python -m qubes.ops.watch BASE NAME`)
with the VM; it polls the domain's state and runs `after_stop` once the
domain is gone, so a guest that powers itself off, a kill from virsh or a
crash all get the same clean-up. Tools that wait for a stop call
`after_stop` themselves; it is idempotent.

Starts and clean-ups of one collection take turns (`run_lock`): a VM's run
files (root overlay, volatile image) are made by a start and removed after
a stop, and the watcher of a VM's previous run may wake up while a new start
of the same VM is making them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from qubes.errors import QubesError
from qubes.ops import dispvm, templates
from qubes.ops.runlock import run_lock
from qubes.store.access import read_collection
from qubes.vmm.base import DomainState

POLL = 0.3
WATCHER_GRACE = 20.0   # seconds a watcher gets to notice its stopped VM and clean up


def spawn(base_dir: str, name: str) -> subprocess.Popen:
    env = dict(os.environ, QUBES_BASE_DIR=base_dir)
    return subprocess.Popen([sys.executable, "-m", "qubes.ops.watch", base_dir, name], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def reap(base_dir: str, host, hv, name: str, watcher: subprocess.Popen | None) -> None:
    """After a start gave up on `name` and stopped it: its watcher gone, its clean-up done.

    The watcher is let finish rather than killed at once: it may be in the
    middle of `after_stop` (removing a DisposableVM, committing a template).
    One that does not finish within WATCHER_GRACE is killed; `after_stop`,
    idempotent, then runs here. A VM that could not be stopped keeps its
    watcher (CASES.md B88).
    """
    if hv.domain_states([name])[name].state is not DomainState.HALTED:
        return
    if watcher is not None:
        try:
            watcher.wait(WATCHER_GRACE)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
    after_stop(base_dir, host, hv, name)


def after_stop(base_dir: str, host, hv, name: str) -> list[str]:
    """Clean up after `name` stopped; returns what was done, for messages."""
    done = []
    with run_lock(base_dir):
        with read_collection(base_dir, host) as app:
            vm = app.get(name)
            if vm is None or hv.domain_states([name])[name].state is not DomainState.HALTED:
                return done
            disposable = vm.is_disposablevm
            templates.discard_run_data(vm)
            template = vm if vm.is_template else vm.template
            if template is not None and template.is_template:
                if templates.commit_if_possible(app, hv, template):
                    done.append(f"committed the changes of template '{template.name}'")
        if disposable and dispvm.remove_if_stopped(base_dir, host, hv, name):
            done.append(f"removed the DisposableVM '{name}'")
    return done


def main(argv: list[str]) -> int:
    base_dir, name = argv
    from qubes import vmm
    from qubes.util.host import LocalHost
    hv = vmm.connect()
    host = LocalHost(base_dir)
    try:
        while hv.domain_states([name])[name].state is not DomainState.HALTED:
            time.sleep(POLL)
        after_stop(base_dir, host, hv, name)
    except (QubesError, OSError):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
