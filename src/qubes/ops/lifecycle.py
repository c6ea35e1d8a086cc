"""Start, stop, kill, pause and unpause VMs (TOOLS.md §8, CASES.md B92-B96, B104).

qubes.xml is read, never held locked while a VM boots. What has to happen
when a VM stops (discard its root overlay, commit its template's changes,
remove a DisposableVM) is `ops.watch.after_stop`; a small watcher process
started with the VM runs it however the VM stops.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from qubes.errors import QubesError
from qubes.ops import accel as accelerator
from qubes.ops import dispvm, domain, network, templates, watch
from qubes.ops.runlock import run_lock
from qubes.store.access import read_collection
from qubes.vmm.base import DomainState

READY = b"QUBES-READY"
FAILED = b"QUBES-FAILED"
POLL = 0.1
MEMORY_OVERHEAD_MB = 64   # QEMU's own share beyond the guest's memory


@dataclass
class StartResult:
    started: list[str] = field(default_factory=list)   # in start order, netvms first
    ready_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _check_startable(app, hv, vm) -> None:
    if vm.is_adminvm:
        raise QubesError("dom0 is always running")
    names = [vm.name] + [v.name for v in app if v.is_hvm and v is not vm]
    states = hv.domain_states(names)
    if states[vm.name].state is not DomainState.HALTED:
        raise QubesError(f"VM '{vm.name}' is already {states[vm.name].state.value.lower()}")
    # A TemplateHVM and the HVMs based on it write the same disk: never together (B96).
    if vm.is_hvm:
        if vm.is_template:
            busy = [v.name for v in app.vms_based_on(vm)
                    if states[v.name].state is not DomainState.HALTED]
        else:
            busy = [vm.template.name] if vm.template is not None and \
                states[vm.template.name].state is not DomainState.HALTED else []
        if busy:
            raise QubesError(f"cannot start '{vm.name}' while {', '.join(busy)} is running: "
                             "they share one disk")


def _netvm_chain(app, hv, vm) -> list:
    """The halted netvms `vm` needs, outermost first."""
    chain, cur = [], vm.netvm if vm.HAS_NETVM else None
    while cur is not None and not cur.is_adminvm:
        chain.append(cur)
        cur = cur.netvm if cur.HAS_NETVM else None
    states = hv.domain_states([v.name for v in chain])
    return [v for v in reversed(chain) if states[v.name].state is DomainState.HALTED]


def start_vm(base_dir: str, host, hv, name: str, *, wait: bool = True,
             timeout: float | None = None, cdrom: str | None = None) -> StartResult:
    """Start `name` (and the halted netvms it needs), then wait for each ready line.

    `cdrom`: an image path (as the user gave it) attached read-only to `name`,
    not to its netvms, for this start only; a bad one is refused before the
    hypervisor is asked anything (B90).
    """
    result = StartResult()
    with read_collection(base_dir, host) as app:
        vm = app[name]
        image = domain.cdrom_for(vm, cdrom) if cdrom is not None else None
        _check_startable(app, hv, vm)
        order = _netvm_chain(app, hv, vm) + [vm]
    for each in order:
        _start_one(base_dir, host, hv, each.name, wait, timeout, result,
                   cdrom=image if each is vm else None)
    return result


def start_dispvm(base_dir: str, host, hv, template: str, *, timeout: float | None = None,
                 warn=None) -> StartResult:
    """Make a DisposableVM on `template` and start it; it is removed when it stops."""
    with read_collection(base_dir, host) as app:
        leftovers = dispvm.stale(app, hv)
    for name in leftovers:
        if dispvm.remove_if_stopped(base_dir, host, hv, name) and warn:
            warn(f"removed the DisposableVM '{name}' left from an earlier run")
    name = dispvm.create(base_dir, host, template)
    try:
        return start_vm(base_dir, host, hv, name, timeout=timeout)
    except BaseException:
        dispvm.remove_if_stopped(base_dir, host, hv, name)
        raise


def _check_memory(hv, vm) -> None:
    """Refuse before anything is defined when the host cannot hold the VM (B86, B87).

    Available = host RAM minus what running domains are assigned, QEMU's share
    included. Not the host's free memory: QEMU allocates guest memory lazily,
    so idle guests look as if their memory were free.
    """
    needed = int(vm.memory) + MEMORY_OVERHEAD_MB
    memory = hv.host_memory()
    available = max(0, memory.total_mb - memory.assigned_mb
                    - memory.domains * MEMORY_OVERHEAD_MB)
    if needed > available:
        raise QubesError(f"not enough memory to start '{vm.name}': {needed} MiB needed "
                         f"({MEMORY_OVERHEAD_MB} MiB of it for QEMU), {available} MiB available")


def _undo(exc: BaseException, clean_up, *args) -> None:
    """Clean up after a failed start; a failing clean-up is noted, the start's error kept."""
    try:
        clean_up(*args)
    except (QubesError, OSError) as undo:
        exc.add_note(f"and cleaning up after it failed too: {undo}")


def _start_one(base_dir, host, hv, name, wait, timeout, result: StartResult,
               cdrom=None) -> None:
    began = time.monotonic()
    with run_lock(base_dir):  # memory check to create; never during a clean-up
        with read_collection(base_dir, host) as app:
            vm = app[name]
            _check_startable(app, hv, vm)
            _check_memory(hv, vm)
            accel = accelerator.choose(hv, vm)
            nics = network.prepare(base_dir, hv, vm)
            try:
                spec = domain.build_spec(vm, base_dir, accel, nics, network.guest_args(vm),
                                         cdrom=cdrom)
            except BaseException as exc:
                _undo(exc, templates.discard_run_data, vm)  # an overlay made before (B87)
                raise
            limit = timeout if timeout is not None else vm.qrexec_timeout
            has_agent = vm.HAS_KERNEL
        try:
            note = hv.start(spec)  # a failed start leaves no domain defined
        except BaseException as exc:
            _undo(exc, watch.after_stop, base_dir, host, hv, name)  # its overlay, volatile
            raise
    result.started.append(name)
    if note:
        result.notes.append(note)
    watcher = watch.spawn(base_dir, name)
    if wait and has_agent:
        try:
            wait_ready(hv, name, spec.console_log, limit)
        except QubesError as exc:  # the VM was stopped: nothing of it may outlive us (B88)
            _undo(exc, watch.reap, base_dir, host, hv, name, watcher)
            raise
        result.ready_seconds[name] = time.monotonic() - began


def wait_ready(hv, name: str, console_log: str, limit: float) -> None:
    """Until the guest's ready line; a guest that stops or stays silent is an error (B88)."""
    deadline = time.monotonic() + limit
    while True:
        text = domain.read_log(console_log)
        if READY in text:
            return
        if FAILED in text:
            said = text.split(FAILED, 1)[1].split(b"\n", 1)[0].decode("ascii", "replace").strip()
            _give_up(hv, name, console_log, f"failed to boot ({said})")
        if hv.domain_states([name])[name].state is DomainState.HALTED:
            raise QubesError(f"VM '{name}' stopped while starting; see {console_log}")
        if time.monotonic() > deadline:
            _give_up(hv, name, console_log, f"not ready within {limit:g} s")
        time.sleep(POLL)


def _give_up(hv, name: str, console_log: str, why: str) -> None:
    try:
        hv.kill(name)
    except QubesError:
        pass
    hint = " (the console shows it ran out of memory)" \
        if b"Out of memory" in domain.read_log(console_log) else ""
    raise QubesError(f"VM '{name}' {why}{hint}; it was stopped; see {console_log}")


# --- stopping -------------------------------------------------------------------

def _running(hv, names) -> dict:
    states = hv.domain_states(names)
    return {n: states[n].state for n in names if states[n].state is not DomainState.HALTED}


def shutdown_order(app, names: list[str]) -> list[str]:
    """Clients before their netvms (B104): deepest in the network tree first."""
    def depth(vm) -> int:
        d, cur = 0, vm
        while cur.HAS_NETVM and cur.netvm is not None and d < 300:
            d, cur = d + 1, cur.netvm
        return d
    return sorted(names, key=lambda n: -depth(app[n]))


def shutdown_vms(base_dir: str, host, hv, names: list[str], *, force: bool = False,
                 wait: bool = False, timeout: float = 60.0, warn=None) -> list[str]:
    """Ask each VM to power off; with `wait`, kill what is still up after `timeout`.

    A VM that is already off is done, not an error: so is one that stops
    between this check and the hypervisor call, and a name the caller resolved
    that has left the collection since (a DisposableVM removed after it
    stopped; B92, B93). Returns the names still running at the end.
    """
    with read_collection(base_dir, host) as app:
        names = [n for n in names if app.get(n) is not None]
        for name in names:
            if app[name].is_adminvm:
                raise QubesError("cannot shut down or kill dom0")
        live = _running(hv, [v.name for v in app])
        order = shutdown_order(app, [n for n in names if n in live])
        leaving = set(order)
        for name in order:
            if live[name] is DomainState.PAUSED:
                raise QubesError(f"{name} is paused; unpause it first or use qvm-kill")
            vm = app[name]
            clients = [v.name for v in app if v.HAS_NETVM and v.netvm is vm
                       and v.name in live and v.name not in leaving]
            if vm.provides_network and clients and not force:
                raise QubesError(f"{name} has running clients: {', '.join(sorted(clients))} "
                                 "(shut them down first or use --force)")
    for name in order:
        hv.shutdown(name)  # one that stopped since the check is done
        if wait:
            _wait_halted(hv, [name], timeout, warn)
    if not wait:
        return []
    for name in order:
        _clean_up(base_dir, host, hv, name, warn)
    return list(_running(hv, order))


def _clean_up(base_dir, host, hv, name: str, warn) -> None:
    """after_stop, its failure a warning: the VM did stop, which is what was asked."""
    try:
        watch.after_stop(base_dir, host, hv, name)
    except QubesError as exc:
        if warn:
            warn(f"{name} stopped, but cleaning up after it failed: {exc}")


def _wait_halted(hv, names: list[str], timeout: float, warn) -> None:
    deadline = time.monotonic() + timeout
    while _running(hv, names):
        if time.monotonic() > deadline:
            for name in _running(hv, names):
                if warn:
                    warn(f"{name} did not shut down within {timeout:g} s; killing it")
                try:
                    hv.kill(name)
                except QubesError:
                    pass  # it stopped on its own meanwhile (B92)
            return
        time.sleep(POLL)


def kill_vm(base_dir: str, host, hv, name: str, warn=None) -> None:
    """Destroy `name`; halted when asked is an error (B95), halting meanwhile is not."""
    with read_collection(base_dir, host) as app:
        if app[name].is_adminvm:
            raise QubesError("cannot shut down or kill dom0")
    if hv.domain_states([name])[name].state is DomainState.HALTED:
        raise QubesError(f"VM '{name}' is not running")
    hv.kill(name)
    _clean_up(base_dir, host, hv, name, warn)


def pause_vm(base_dir: str, host, hv, name: str, pause: bool = True) -> None:
    with read_collection(base_dir, host) as app:
        if app[name].is_adminvm:
            raise QubesError("dom0 cannot be paused")
    state = hv.domain_states([name])[name].state
    if state is DomainState.HALTED:
        raise QubesError(f"VM '{name}' is not running")
    if pause and state is not DomainState.PAUSED:
        hv.pause(name)
    elif not pause and state is DomainState.PAUSED:
        hv.unpause(name)


def console_log(base_dir: str, host, name: str) -> str:
    with read_collection(base_dir, host) as app:
        return os.path.join(app[name].dir_path, domain.CONSOLE_LOG)
