"""Network interfaces of a VM (filled in with the per-netvm networks)."""
from __future__ import annotations


def prepare(app, hv, vm) -> tuple:
    """The interfaces `vm` gets at start; none until netvm networks exist."""
    return ()
