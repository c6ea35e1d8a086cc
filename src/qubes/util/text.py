"""Text from other programs and archives, decoded and shown safely whatever its
language or encoding."""
from __future__ import annotations


def _escape(text: str, keep: str = "", limit: int | None = None) -> str:
    """Every non-printable character (control codes, bidi overrides, undecodable bytes)
    as an escape, except those in `keep`; cut to `limit` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c in keep else
                       c.encode("unicode_escape", "backslashreplace").decode("ascii")
                       for c in text)
    return text if limit is None or len(text) <= limit else text[:limit] + "…"


def printable(untrusted: str, limit: int = 200) -> str:
    """A name from an archive, safe to print on one line."""
    return _escape(untrusted, limit=limit)


def decode_output(raw: bytes, limit: int = 2000) -> str:
    """UTF-8 where it is, escapes where it is not; control characters shown, not obeyed."""
    return _escape(raw.decode("utf-8", errors="backslashreplace").strip(), "\n\t", limit)


def terminal_safe(text: str) -> str:
    """Text fit for a terminal or a log: line breaks and tabs kept, the rest escaped."""
    return _escape(text, "\n\t\r")


class SafeTextStream:
    """Wraps sys.stdout/sys.stderr of a tool: a backstop, so that a message that missed
    `printable()` at its source (a name or value from an archive or an untrusted
    qubes.xml) still cannot drive the terminal with escape codes. Line breaks pass, so
    names in messages must still be escaped where they are put in. Raw bytes
    (`.buffer`, as qvm-run -p writes a guest's output) pass unchanged."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(terminal_safe(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)
