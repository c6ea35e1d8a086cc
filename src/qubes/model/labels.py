"""The eight colour labels of R2 (QUBES-XML.md §12)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    index: int
    name: str
    color: str

    @property
    def icon(self) -> str:
        return f"appvm-{self.name}"

    @property
    def dispvm_icon(self) -> str:
        return f"dispvm-{self.name}"


LABELS = {
    label.name: label
    for label in (
        Label(1, "red", "0xcc0000"),
        Label(2, "orange", "0xf57900"),
        Label(3, "yellow", "0xedd400"),
        Label(4, "green", "0x73d216"),
        Label(5, "gray", "0x555753"),
        Label(6, "blue", "0x3465a4"),
        Label(7, "purple", "0x75507b"),
        Label(8, "black", "0x000000"),
    )
}


def get_label(untrusted_name) -> Label:
    if isinstance(untrusted_name, Label):
        return untrusted_name
    label = LABELS.get(str(untrusted_name).strip().lower())
    if label is None:
        raise ValueError(
            f"no such label '{untrusted_name}'; valid labels: {', '.join(LABELS)}"
        )
    return label
