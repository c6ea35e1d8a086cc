"""The host as the tools show it: accelerator, memory and CPU, from libvirt."""
from __future__ import annotations

import time
from dataclasses import dataclass

from qubes.ops import accel


@dataclass(frozen=True)
class HostFigures:
    uri: str
    accelerator: str          # "kvm", "tcg", or why it is not known yet
    cpus: int
    memory_total_mb: int
    memory_free_mb: int
    cpu_usage_percent: float  # of all CPUs, over the sample


def figures(hv, sample_seconds: float = 1.0) -> HostFigures:
    busy0, total0 = hv.host_cpu_times()
    time.sleep(sample_seconds)
    busy1, total1 = hv.host_cpu_times()
    usage = 100.0 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
    return HostFigures(uri=hv.uri, accelerator=accel.cached() or
                       "not decided yet (the first VM start probes KVM)",
                       cpus=hv.host_cpus(), memory_total_mb=hv.host_memory_mb(),
                       memory_free_mb=hv.host_free_memory_mb(),
                       cpu_usage_percent=max(0.0, min(100.0, usage)))
