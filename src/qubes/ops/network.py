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

from qubes.errors import QubesError
from qubes.ops import agent
from qubes.ops.domain import agent_socket, owner_tag
from qubes.vmm.base import DomainState, NicSpec

INNER_MAC = "00:16:3E:5F:6C:%02X"   # a netvm's side of its clients' network, by netid


def network_of(base_dir: str, netvm) -> tuple[str, str]:
    """(libvirt network name, bridge name) of `netvm`'s clients' network."""
    tag = hashlib.sha256(owner_tag(base_dir).encode()).hexdigest()[:6]
    return f"qubes-{tag}-{netvm.name}", f"qb{tag}n{netvm.netid}"  # bridge: at most 15 chars


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


def current_uplink(vm):
    """The netvm `vm` is plugged into now (None: dom0 or no network)."""
    return _uplink(vm)


def replug(app, hv, vm, old) -> None:
    """After `vm.netvm` changed from `old` inside an open write transaction: re-plug it.

    Only a running VM is touched, and the new netvm must be running. If
    re-plugging fails the old link is restored and the error raised, so the
    transaction, and with it the property change, is dropped (B106, B107).
    """
    new = _uplink(vm)
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
            _configure(base_dir, vm)
    except QubesError:
        if new is not None:
            try:
                hv.detach_nic(vm.name, vm.mac)
            except QubesError:
                pass
        if old is not None:
            hv.attach_nic(vm.name, NicSpec(network_of(base_dir, old)[0], vm.mac))
        raise


def _configure(base_dir: str, vm) -> None:
    """Give the hot-plugged interface its new address (the guest's qubes-net script)."""
    command = f"qubes-net {vm.mac.lower()} {vm.ip} {vm.gateway}"
    code, output = agent.run_command(agent_socket(base_dir, vm.name), vm.name, command, 30)
    if code != 0:
        raise QubesError(f"VM '{vm.name}' could not configure its new interface: "
                         f"{output.decode(errors='replace').strip()[-300:]}")
