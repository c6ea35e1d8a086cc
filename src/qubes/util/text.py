"""Text from other programs, decoded safely whatever its language or encoding."""
from __future__ import annotations


def printable(untrusted: str, limit: int = 200) -> str:
    """A name from an archive, safe to print: escapes instead of terminal control codes."""
    if len(untrusted) <= limit and untrusted.isprintable():
        return untrusted  # the usual name: called for every member of a home
    text = "".join(c if c.isprintable() else c.encode("unicode_escape",
                                                      "backslashreplace").decode("ascii")
                   for c in untrusted)
    return text if len(text) <= limit else text[:limit] + "…"


def decode_output(raw: bytes, limit: int = 2000) -> str:
    """UTF-8 where it is, escapes where it is not; control characters shown, not obeyed."""
    text = raw.decode("utf-8", errors="backslashreplace").strip()
    text = "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit] + "…"
