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

    def host_memory_mb(self) -> int:
        raise OfflineError()

    def host_cpus(self) -> int:
        raise OfflineError()

    def close(self) -> None:
        pass
