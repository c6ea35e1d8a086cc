"""Host facts read from the local system (TOOLS.md §4.3: used in offline mode too)."""
from __future__ import annotations

import os


class LocalHost:
    """Memory and CPUs of this machine; kernels under `<base>/vm-kernels/`."""

    def __init__(self, base_dir: str):
        self.base_dir = base_dir
        self.memory_total_mb = _meminfo_total_mb()
        self.cpus = os.cpu_count() or 1

    def kernel_installed(self, version: str) -> bool:
        return os.path.isfile(os.path.join(self.base_dir, "vm-kernels", version, "vmlinuz"))


def _meminfo_total_mb() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1024
