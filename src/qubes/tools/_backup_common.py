"""What qvm-backup and qvm-backup-restore share: passphrase input and terminal questions.

Questions are asked only on a terminal; with `--passphrase-file` and no
terminal both commands run to the end unasked.
"""
from __future__ import annotations

import getpass
import os
import sys

from qubes.errors import QubesError


def is_tty() -> bool:
    try:
        return os.isatty(sys.stdin.fileno()) and os.isatty(sys.stderr.fileno())
    except (ValueError, OSError):
        return False


def read_passphrase(path: str | None, *, confirm: bool) -> bytes:
    """UTF-8 bytes of the passphrase: first line of FILE (`-` = stdin), else a prompt."""
    if path is not None:
        try:
            if path == "-":
                line = sys.stdin.buffer.readline()
            else:
                with open(path, "rb") as f:
                    line = f.readline()
        except OSError as exc:
            raise QubesError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
        passphrase = line.rstrip(b"\n").rstrip(b"\r")
        try:
            passphrase.decode("utf-8")
        except UnicodeDecodeError:
            raise QubesError(f"the passphrase in {path} is not UTF-8 text") from None
    elif is_tty():
        first = getpass.getpass("Please enter the passphrase: ")
        if confirm and getpass.getpass("Enter again for verification: ") != first:
            raise QubesError("Password mismatch")
        passphrase = first.encode("utf-8")
    else:
        raise QubesError("no passphrase: use --passphrase-file FILE (- for standard input) "
                         "when not running on a terminal")
    if not passphrase:
        raise QubesError("the passphrase is empty")
    return passphrase


def confirm(question: str, assume_yes: bool) -> bool:
    """Ask on a terminal; without one (or with --yes) the answer is yes."""
    if assume_yes or not is_tty():
        return True
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip() in ("y", "Y")


def add_common_options(parser) -> None:
    parser.add_argument("--passphrase-file", metavar="FILE",
                        help="read the passphrase from the first line of FILE (- = stdin)")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask 'Do you want to proceed?'")
    parser.add_argument("--tmpdir", metavar="DIR", help="where temporary chunk files go")
    parser.add_argument("-q", "--quiet", action="store_true")
