"""Offline mode: state questions answer "halted", runtime actions raise OfflineError."""
from __future__ import annotations

from typing import Iterable

from qubes.errors import OfflineError
from qubes.vmm.base import DomainInfo, DomainState


class OfflineHypervisor:
    offline = True
    uri = "offline"

    def domain_states(self, names: Iterable[str]) -> dict[str, DomainInfo]:
        return {name: DomainInfo(DomainState.HALTED) for name in names}

    def owned_domains(self, owner: str) -> dict:
        return {}

    def networks(self, prefix: str) -> list[str]:
        return []

    def _refuse(self, *_args) -> None:
        raise OfflineError()

    start = shutdown = kill = pause = unpause = undefine = attach_nic = detach_nic = _refuse
    ensure_network = remove_network = _refuse
    host_memory_mb = host_free_memory_mb = host_memory = host_cpu_times = _refuse

    def host_cpus(self) -> int:
        raise OfflineError()

    def close(self) -> None:
        pass
