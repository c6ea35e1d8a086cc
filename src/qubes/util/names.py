"""VM name rules (QUBES-XML.md §11), shared by the CLI, the model and restore."""
from __future__ import annotations

import re

from qubes.errors import InvalidNameError

MAX_NAME_LENGTH = 31
RESERVED_NAMES = frozenset({"none", "true", "false"})
_ALLOWED = re.compile(r"[a-zA-Z0-9_-]*")


def validate_vm_name(untrusted_name: object) -> str:
    """Return the name if it obeys every rule, else raise naming the broken one."""
    if not isinstance(untrusted_name, str) or not untrusted_name:
        raise InvalidNameError(str(untrusted_name or ""), "the name is empty")
    name = untrusted_name
    shown = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    if not ("a" <= name[0].lower() <= "z" and name[0].isascii()):
        raise InvalidNameError(shown, "it must start with a letter (a-z, A-Z)")
    if not _ALLOWED.fullmatch(name):
        bad = next(c for c in name if not _ALLOWED.fullmatch(c))
        shown_bad = bad if bad.isprintable() else f"U+{ord(bad):04X}"
        raise InvalidNameError(
            shown,
            f"character '{shown_bad}' is not allowed; use only letters a-z, A-Z, digits, "
            "'_' and '-'",
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            shown, f"it is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    if name.lower() in RESERVED_NAMES:
        raise InvalidNameError(shown, f"'{name}' is a reserved word")
    return name
