"""What the core needs from a hypervisor, as a protocol, plus the power states."""
from __future__ import annotations

import enum
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


class Hypervisor(Protocol):
    offline: bool
    uri: str

    def domain_states(self, names: Iterable[str]) -> dict[str, DomainInfo]:
        """Runtime info for every named domain in one listing; missing = halted."""
        ...

    def host_memory_mb(self) -> int: ...

    def host_cpus(self) -> int: ...

    def close(self) -> None: ...
