"""The qvm-ls table layout (TOOLS.md §3.4): right-aligned cells between rule lines."""
from __future__ import annotations

from typing import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of the table, without trailing newlines.

    Each column is `w + 1` characters wide (w = the longest of header and
    cells), followed by ` |`; rule lines are `'-' * (w + 1) + '-+'`.
    There is a rule above and below the header and none after the last row.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    rule = "".join("-" * (w + 1) + "-+" for w in widths)

    def line(cells: Sequence[str]) -> str:
        return "".join(cell.rjust(w + 1) + " |" for cell, w in zip(cells, widths))

    return [rule, line(headers), rule] + [line(row) for row in rows]
