"""Render a long operation's reports: a bar on a terminal, JSON lines for programs.

The bar shows bytes done and total, rate and time left; nothing is drawn when
stderr is not a terminal. `--progress json` writes one JSON object per event
to stderr (standard output may carry the backup itself).
"""
from __future__ import annotations

import json
import sys
import time

from qubes.backup.report import CollectingReporter, Problem

WIDTH = 30
INTERVAL = 0.25


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ProgressReporter(CollectingReporter):
    """Collects everything (for the final summary) and renders progress as it comes."""

    def __init__(self, mode: str = "auto", stream=None):
        super().__init__()
        self.stream = stream or sys.stderr
        if mode == "auto":
            try:
                mode = "bar" if self.stream.isatty() else "none"
            except (AttributeError, ValueError):
                mode = "none"
        self.mode = mode
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def progress(self, done: int, total: int) -> None:
        super().progress(done, total)
        now = time.monotonic()
        final = total and done >= total
        if not final and now - self._last < INTERVAL:
            return
        self._last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 and total >= done else None
        if self.mode == "json":
            self._json({"event": "progress", "done": done, "total": total,
                        "rate": round(rate), "seconds_left": None if left is None else round(left, 1)})
        elif self.mode == "bar":
            frac = min(done / total, 1.0) if total else 0.0
            bar = "#" * int(frac * WIDTH) + "." * (WIDTH - int(frac * WIDTH))
            eta = "--:--" if left is None else f"{int(left) // 60}:{int(left) % 60:02d}"
            self.stream.write(f"\r[{bar}] {frac * 100:5.1f}%  {_human(done)} / {_human(total)}"
                              f"  {_human(rate)}/s  {eta} left ")
            self.stream.flush()
            self._drawn = True

    def _json(self, record: dict) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False

    def message(self, text: str) -> None:
        super().message(text)
        if self.mode == "json":
            self._json({"event": "message", "text": text})

    def warning(self, text: str) -> None:
        super().warning(text)
        if self.mode == "json":
            self._json({"event": "warning", "text": text})

    def problem(self, problem: Problem) -> None:
        super().problem(problem)
        if self.mode == "json":
            self._json({"event": "problem", "vm": problem.vm, "member": problem.member,
                        "stage": problem.stage, "cause": problem.cause})

    def finish(self, ok: bool) -> None:
        self._end_line()
        if self.mode == "json":
            self._json({"event": "finished", "ok": ok,
                        "seconds": round(time.monotonic() - self.start, 2)})


def add_progress_option(parser) -> None:
    parser.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto",
                        help="progress display: a bar on a terminal (auto), JSON lines on "
                             "stderr for programs, or none")
