"""The host side of the guest command channel (guest/__init__.py has the protocol).

Commands run by the guest's init as root, one at a time; their input is sent
with them (not streamed), and output comes back when the command ends, stdout
and stderr together.
"""
from __future__ import annotations

import base64
import os
import re
import socket
import time

from qubes.errors import QubesError

MAX_OUTPUT = 64 * 1024 * 1024
MAX_INPUT = 1024 * 1024   # sent in one line, which the guest's shell reads byte by byte
_ANSWER = re.compile(rb"[0-9a-f]{24} -?[0-9]+\r?")


def run_command(socket_path: str, name: str, command: str, timeout: float = 60.0,
                stdin: bytes | None = None) -> tuple[int, bytes]:
    """Run `command` in the guest, `stdin` as its input (none: empty); (exit code, output)."""
    if stdin is not None and len(stdin) > MAX_INPUT:
        raise QubesError(f"input for VM '{name}' is larger than {MAX_INPUT} bytes")
    nonce = os.urandom(12).hex().encode()
    line = nonce + b" " + base64.b64encode(command.encode())
    if stdin:
        line += b" " + base64.b64encode(stdin)
    line += b"\n"
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(line)
            return _answer(sock, nonce, deadline, name)
    except FileNotFoundError:
        raise QubesError(f"VM '{name}' has no command channel (is it running?)") from None
    except (TimeoutError, socket.timeout):
        raise QubesError(f"VM '{name}' did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise QubesError(f"cannot talk to VM '{name}': {exc.strerror or exc}") from None


def _answer(sock, nonce: bytes, deadline: float, name: str) -> tuple[int, bytes]:
    buf = b""
    while True:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv(1 << 16)
        if not data:
            raise QubesError(f"VM '{name}' closed its command channel")
        buf += data
        if len(buf) > MAX_OUTPUT * 4 // 3 + 1024:
            raise QubesError(f"VM '{name}' sent more than {MAX_OUTPUT} bytes of output")
        lines = buf.split(b"\n")
        for i, text in enumerate(lines[:-1]):
            if text.startswith(nonce + b" "):
                # An earlier, abandoned command's answer may precede ours: skip it.
                start = max((j + 1 for j in range(i) if _ANSWER.fullmatch(lines[j])), default=0)
                try:
                    code = int(text.split()[1])
                    output = base64.b64decode(b"".join(lines[start:i]).replace(b"\r", b""))
                except (ValueError, IndexError) as exc:
                    raise QubesError(f"VM '{name}' sent a malformed answer") from exc
                return code, output
