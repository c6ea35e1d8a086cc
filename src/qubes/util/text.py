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


def terminal_safe(text: str) -> str:
    """Text fit for a terminal or a log: line breaks and tabs kept, every other control or
    format character (ESC, CSI, bidi overrides) and undecodable byte shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t\r" else
                   c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


class SafeTextStream:
    """Wraps sys.stdout/sys.stderr so that no message, whatever its source (an archive
    member name, a value from an untrusted qubes.xml), can drive the terminal. Raw bytes
    (`.buffer`, as qvm-run -p writes a guest's output) pass unchanged."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(terminal_safe(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)
