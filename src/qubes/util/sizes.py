"""Size parsing and the size formats of the tools (TOOLS.md §14)."""
from __future__ import annotations

import os

_SUFFIXES = {"K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}


def parse_size(untrusted: str) -> int:
    """Bytes from `123`, `10K`, `2GB`…; ValueError with `Invalid size: <s>.` otherwise."""
    s = untrusted.strip().upper()
    if s.isdigit() and s.isascii():
        return int(s)
    for suffix in ("KB", "MB", "GB", "K", "M", "G"):
        if s.endswith(suffix):
            num = s[: -len(suffix)].strip()
            if num.isdigit() and num.isascii():
                return int(num) * _SUFFIXES[suffix]
    raise ValueError(f"Invalid size: {untrusted}.")


def size_to_human(n: int) -> str:
    if n < 1024:
        return str(n)
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{round(n, 1)} {unit}"
    return f"{round(n / 1024, 1)} GiB"


def disk_usage(path: str) -> int:
    """Allocated bytes under `path` (like `du -s --block-size=1`), links not followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    total = st.st_blocks * 512
    if os.path.isdir(path) and not os.path.islink(path):
        for entry in os.scandir(path):
            total += disk_usage(entry.path)
    return total
