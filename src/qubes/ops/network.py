"""Networks: each NetVM/ProxyVM has an isolated network for its clients (issue 4 §8).

The network is a libvirt network over a host bridge with no address, so the
host takes no part in it. A client gets an interface on its netvm's network
with its spec MAC; a netvm gets one on its own network, where it holds the
gateway address of its clients. Addresses reach the guest on the kernel
command line (`qubes.if=MAC,ADDRESS,GATEWAY`), or over the command channel
when the netvm of a running VM changes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from qubes.errors import QubesError
from qubes.ops import agent
from qubes.ops.domain import agent_socket, owner_tag
from qubes.vmm.base import DomainState, NicSpec

INNER_MAC = "00:16:3E:5F:6C:%02X"   # a netvm's side of its clients' network, by netid


def _tag(base_dir: str) -> str:
    return hashlib.sha256(owner_tag(base_dir).encode()).hexdigest()[:6]


def prefix(base_dir: str) -> str:
    """What the names of this collection's networks start with."""
    return f"qubes-{_tag(base_dir)}-"


def network_of(base_dir: str, netvm) -> tuple[str, str]:
    """(libvirt network name, bridge name) of `netvm`'s clients' network."""
    return prefix(base_dir) + netvm.name, f"qb{_tag(base_dir)}n{netvm.netid}"  # bridge: <= 15


def inner_mac(netvm) -> str:
    return INNER_MAC % (netvm.netid % 256)


def _uplink(vm):
    netvm = vm.netvm if vm.HAS_NETVM else None
    return None if netvm is None or netvm.is_adminvm else netvm


def prepare(base_dir: str, hv, vm) -> tuple[NicSpec, ...]:
    """Make the networks `vm` needs and describe its interfaces."""
    nics = []
    uplink = _uplink(vm)
    if uplink is not None:
        network, bridge = network_of(base_dir, uplink)
        hv.ensure_network(network, bridge)
        nics.append(NicSpec(network, vm.mac))
    if vm.provides_network and not vm.is_adminvm:
        network, bridge = network_of(base_dir, vm)
        hv.ensure_network(network, bridge)
        nics.append(NicSpec(network, inner_mac(vm)))
    return tuple(nics)


def guest_args(vm) -> list[str]:
    """Kernel command line words that configure the guest's interfaces."""
    words = []
    if _uplink(vm) is not None:
        words.append(f"qubes.if={vm.mac.lower()},{vm.ip},{vm.gateway}")
    if vm.provides_network and not vm.is_adminvm:
        words.append(f"qubes.if={inner_mac(vm).lower()},{vm.gateway_address},")
        words.append(f"qubes.if={inner_mac(vm).lower()},10.138.{vm.netid}.1,")  # DispVMs
        words.append("qubes.netvm=1")
    return words


@dataclass(frozen=True)
class Link:
    """Where a VM is plugged in and the address it has there (netvm None: no network)."""

    netvm: object | None
    ip: str | None = None
    gateway: str | None = None


def current_link(vm) -> Link:
    """The netvm `vm` is plugged into now (None: dom0 or no network), with its address."""
    uplink = _uplink(vm)
    return Link(uplink, vm.ip, vm.gateway) if uplink is not None else Link(None)


def replug(app, hv, vm, before: Link) -> None:
    """After `vm.netvm` changed from `before` inside an open write transaction: re-plug it.

    Only a running VM is touched, and the new netvm must be running. If
    re-plugging fails the old link is restored, old address included, and the
    error raised, so the transaction, and with it the property change, is
    dropped (B106, B107); if even that fails, the error says the VM is offline.
    """
    old, new = before.netvm, _uplink(vm)
    if hv.offline or old is new:
        return
    names = [vm.name] + ([new.name] if new is not None else [])
    states = hv.domain_states(names)
    if states[vm.name].state is DomainState.HALTED:
        return
    if new is not None and states[new.name].state is DomainState.HALTED:
        raise QubesError(f"the new netvm '{new.name}' is not running; start it first")
    base_dir = app.base_dir
    if old is not None:
        hv.detach_nic(vm.name, vm.mac)
    try:
        if new is not None:
            network, bridge = network_of(base_dir, new)
            hv.ensure_network(network, bridge)
            hv.attach_nic(vm.name, NicSpec(network, vm.mac))
            _configure(base_dir, vm, vm.ip, vm.gateway)
    except QubesError as exc:
        _plug_back(base_dir, hv, vm, before, new is not None, exc)
        raise


def _plug_back(base_dir: str, hv, vm, before: Link, detach_new: bool, exc) -> None:
    """Undo a failed move; what cannot be undone becomes a note on `exc`."""
    if detach_new:
        try:
            hv.detach_nic(vm.name, vm.mac)  # not attached (attach failed): nothing to do
        except QubesError:
            pass
    if before.netvm is None:
        return
    try:
        hv.attach_nic(vm.name, NicSpec(network_of(base_dir, before.netvm)[0], vm.mac))
        _configure(base_dir, vm, before.ip, before.gateway)  # a re-plugged NIC has no address
    except QubesError as undo:
        exc.add_note(f"putting the old link back failed as well ({undo}): '{vm.name}' has no "
                     "network now; restart it to get it back")


def _configure(base_dir: str, vm, ip: str, gateway: str) -> None:
    """Give the hot-plugged interface its address (the guest's qubes-net script)."""
    command = f"qubes-net {vm.mac.lower()} {ip} {gateway}"
    code, output = agent.run_command(agent_socket(base_dir, vm.name), vm.name, command, 30)
    if code != 0:
        raise QubesError(f"VM '{vm.name}' could not configure its new interface: "
                         f"{output.decode(errors='replace').strip()[-300:]}")
