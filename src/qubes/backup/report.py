"""Progress and problems as data: the library reports, the tools render.

A long operation never prints; it calls a `Reporter`. Every problem is a
`Problem` record naming VM, archive member and stage, and the final status
is computed from the records (CASES.md B05, B06).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from qubes.util.text import printable



@dataclass(frozen=True)
class Problem:
    stage: str
    cause: str
    vm: str | None = None
    member: str | None = None

    def __str__(self) -> str:
        where = []
        if self.vm:
            where.append(f"VM {self.vm}")
        if self.member:
            where.append(f"member {printable(self.member)}")  # from the archive
        prefix = ", ".join(where)
        return f"{prefix}: {self.cause} (stage: {self.stage})" if prefix else \
            f"{self.cause} (stage: {self.stage})"


class Reporter(Protocol):
    def progress(self, done: int, total: int) -> None: ...

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def problem(self, problem: Problem) -> None: ...


@dataclass
class CollectingReporter:
    """Keeps everything; tests and the tools' renderers build on it."""

    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    last_progress: tuple[int, int] = (0, 0)

    def progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)

    def message(self, text: str) -> None:
        self.messages.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)
