"""The host side of the guest command channel, against a fake guest on a real socket."""
from __future__ import annotations

import base64
import socket
import threading

import pytest

from qubes.errors import QubesError
from qubes.ops import agent


def fake_guest(path, answer):
    """Serve one connection: read one command line, write what `answer` returns."""
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(4096)
        nonce, cmd, *given = line.split()
        cmd = base64.b64decode(cmd)
        if given:  # the command's input travels in a third field: shown after a "<"
            cmd += b"<" + base64.b64decode(given[0])
        conn.sendall(answer(nonce, cmd))
        conn.close()
        srv.close()
    threading.Thread(target=serve, daemon=True).start()


def test_output_and_exit_code_come_back(tmp_path):
    sock = tmp_path / "a"
    fake_guest(sock, lambda n, cmd: base64.encodebytes(b"out of " + cmd) + n + b" 7\n")
    assert agent.run_command(str(sock), "vm", "echo hi") == (7, b"out of echo hi")


def test_input_travels_with_the_command_and_has_a_limit(tmp_path):
    sock = tmp_path / "a"
    fake_guest(sock, lambda n, cmd: base64.encodebytes(cmd) + n + b" 0\n")
    assert agent.run_command(str(sock), "vm", "cat", stdin=b"data\n") == (0, b"cat<data\n")
    with pytest.raises(QubesError, match="input for VM 'vm' is larger than 1048576 bytes"):
        agent.run_command(str(sock), "vm", "cat", stdin=bytes(agent.MAX_INPUT + 1))


def test_an_abandoned_answer_before_ours_is_skipped(tmp_path):
    sock = tmp_path / "a"
    stale = base64.encodebytes(b"old output") + b"0123456789abcdef01234567 0\n"
    fake_guest(sock, lambda n, cmd: stale + base64.encodebytes(b"new") + n + b" 0\n")
    assert agent.run_command(str(sock), "vm", "x") == (0, b"new")


def test_a_guest_that_hangs_up_or_is_absent_is_named(tmp_path):
    sock = tmp_path / "a"
    fake_guest(sock, lambda n, cmd: b"")
    with pytest.raises(QubesError, match="VM 'vm' closed its command channel"):
        agent.run_command(str(sock), "vm", "x")
    with pytest.raises(QubesError, match="VM 'vm' has no command channel"):
        agent.run_command(str(tmp_path / "none"), "vm", "x")


def test_a_silent_guest_times_out(tmp_path):
    sock = tmp_path / "a"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock))
    srv.listen(1)
    with pytest.raises(QubesError, match="did not answer within 0.5 s"):
        agent.run_command(str(sock), "vm", "x", timeout=0.5)
    srv.close()
