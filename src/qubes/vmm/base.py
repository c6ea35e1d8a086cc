"""What the core needs from a hypervisor, as a protocol, plus the power states."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Protocol

from qubes.errors import OfflineError, VMMError  # noqa: F401  (re-exported)


class DomainState(str, enum.Enum):
    """Power states as the tools show them (VMM.md §3)."""

    RUNNING = "Running"
    HALTED = "Halted"
    PAUSED = "Paused"
    TRANSIENT = "Transient"
    HALTING = "Halting"
    DYING = "Dying"
    CRASHED = "Crashed"
    SUSPENDED = "Suspended"
    NA = "NA"

    @property
    def is_running(self) -> bool:
        return self in (DomainState.RUNNING, DomainState.TRANSIENT, DomainState.HALTING,
                        DomainState.PAUSED)


class DomainInfo:
    """One domain's runtime figures from a bulk listing."""

    __slots__ = ("state", "xid", "memory_kib", "cpu_time_ns")

    def __init__(self, state: DomainState, xid: int = -1, memory_kib: int = 0,
                 cpu_time_ns: int = 0):
        self.state = state
        self.xid = xid
        self.memory_kib = memory_kib
        self.cpu_time_ns = cpu_time_ns


@dataclass(frozen=True)
class HostMemory:
    """The host's RAM and how much of it running domains are assigned, in MiB."""

    total_mb: int
    assigned_mb: int   # the guests' memory of every running domain, ours or not
    domains: int       # how many domains run (each has QEMU's own overhead too)


@dataclass(frozen=True)
class DiskSpec:
    path: str
    target: str            # vda, vdb, ...
    fmt: str = "raw"       # raw or qcow2
    readonly: bool = False


@dataclass(frozen=True)
class CdromSpec:
    """A read-only CD-ROM for one start; ops checked that `path` exists and is usable."""

    path: str              # absolute: libvirtd does not share the caller's directory
    block: bool = False    # a host block device rather than an image file


@dataclass(frozen=True)
class NicSpec:
    network: str           # a libvirt network (ensure_network made it)
    mac: str


@dataclass(frozen=True)
class DomainSpec:
    """Everything a domain definition is made from; built by ops from VM properties.

    `owner` marks the domain as ours (the qubes.xml directory it belongs to), so
    domains of other collections on the same libvirtd are never touched.
    """

    name: str
    uuid: str
    owner: str
    memory_mb: int
    maxmem_mb: int
    vcpus: int
    disks: tuple[DiskSpec, ...]
    console_log: str
    agent_socket: str
    kernel: str | None = None      # None: boot from the first disk (HVM)
    initramfs: str | None = None
    cmdline: str = ""
    nics: tuple[NicSpec, ...] = ()
    accel: str = "qemu"            # libvirt domain type: "qemu" (TCG) or "kvm"
    cdrom: CdromSpec | None = None  # this start only: the next spec decides again


class Hypervisor(Protocol):
    offline: bool
    uri: str

    def domain_states(self, names: Iterable[str]) -> dict[str, DomainInfo]:
        """Runtime info for every named domain in one listing; missing = halted."""
        ...

    def start(self, spec: DomainSpec) -> str | None:
        """(Re)define the domain from `spec` and start it; returns a note for the user."""
        ...

    def shutdown(self, name: str) -> None: ...

    def kill(self, name: str) -> None: ...

    def pause(self, name: str) -> None: ...

    def unpause(self, name: str) -> None: ...

    def undefine(self, name: str, owner: str) -> None: ...

    def owned_domains(self, owner: str) -> dict[str, tuple[DomainState, str]]:
        """Every defined domain marked as belonging to `owner`: name -> (state, uuid)."""
        ...

    def ensure_network(self, network: str, bridge: str) -> None:
        """An isolated network on its own host bridge (no address, no forwarding)."""
        ...

    def remove_network(self, network: str, bridge: str | None = None) -> None:
        """The network and its bridge gone (either may be gone already); without
        `bridge`, the one the network names."""
        ...

    def networks(self, prefix: str) -> list[str]:
        """Names of the networks whose name starts with `prefix`."""
        ...

    def attach_nic(self, name: str, nic: NicSpec) -> None: ...

    def detach_nic(self, name: str, mac: str) -> None: ...

    def host_memory_mb(self) -> int: ...

    def host_free_memory_mb(self) -> int: ...

    def host_memory(self) -> HostMemory:
        """Total RAM and what running domains are assigned of it, in one listing."""
        ...

    def host_cpu_times(self) -> tuple[int, int]:
        """(busy, total) CPU nanoseconds of the host, for usage between two samples."""
        ...

    def host_cpus(self) -> int: ...

    def close(self) -> None: ...
