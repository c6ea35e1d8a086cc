"""What the model needs to know about the host, as a small protocol."""
from __future__ import annotations

from typing import Protocol


class HostInfo(Protocol):
    memory_total_mb: int
    cpus: int

    def kernel_installed(self, version: str) -> bool: ...


class FixedHost:
    """A host with given figures (tests and scripts that must not depend on this machine)."""

    def __init__(self, memory_total_mb: int = 16384, cpus: int = 4, kernels=()):
        self.memory_total_mb = memory_total_mb
        self.cpus = cpus
        self.kernels = set(kernels)

    def kernel_installed(self, version: str) -> bool:
        return version in self.kernels
