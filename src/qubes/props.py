"""Declarative, validated properties whose unset state means "follow the default".

A `Property` learns its name from `__set_name__`, validates at set time
(CASES.md B61, B80, B83) and keeps persistence out: the store decides what to
write from `is_default()`. Imports only `qubes.errors`.
"""
from __future__ import annotations

from typing import Any, Callable

from qubes.errors import InvalidValueError, ReadOnlyPropertyError

_UNSET = object()


class Property:
    """A typed attribute of a `PropertyHolder`.

    `convert(holder, untrusted_value) -> value` turns a typed value or a
    string (from the command line or qubes.xml) into the trusted value or
    raises ValueError with the reason. `default` is a value or a callable
    taking the holder.
    """

    def __init__(self, *, default: Any = None, convert: Callable | None = None,
                 doc: str = "", read_only: bool = False, order: int = 100):
        self.default = default
        self.convert = convert
        self.doc = doc
        self.read_only = read_only
        self.order = order
        self.name = ""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, holder, owner=None):
        if holder is None:
            return self
        value = holder._values.get(self.name, _UNSET)
        if value is not _UNSET:
            return value
        return self.default(holder) if callable(self.default) else self.default

    def __set__(self, holder, untrusted_value):
        if self.read_only:
            raise ReadOnlyPropertyError(self.name)
        holder._values[self.name] = self.check(holder, untrusted_value)

    def __delete__(self, holder):
        holder._values.pop(self.name, None)

    def check(self, holder, untrusted_value):
        """The trusted value for `untrusted_value`, or InvalidValueError."""
        if self.convert is None:
            return untrusted_value
        try:
            return self.convert(holder, untrusted_value)
        except ValueError as exc:
            raise InvalidValueError(self.name, str(exc)) from None


class PropertyHolder:
    """Base of everything with properties; `_values` holds only the explicit ones."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    @classmethod
    def property_list(cls) -> list[Property]:
        seen: dict[str, Property] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                if isinstance(attr, Property):
                    seen[attr.name] = attr
        return sorted(seen.values(), key=lambda p: (p.order, p.name))

    @classmethod
    def get_property(cls, name: str) -> Property | None:
        attr = getattr(cls, name, None)
        return attr if isinstance(attr, Property) else None

    def is_default(self, name: str) -> bool:
        return name not in self._values

    def set_raw(self, name: str, value: Any) -> None:
        """Set without conversion (the loader uses it for already-checked values)."""
        self._values[name] = value


# --- converters shared by the model -----------------------------------------

def to_bool(_holder, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "on", "yes", "1"):
            return True
        if low in ("false", "off", "no", "0"):
            return False
    raise ValueError(f"'{value}' is not a boolean (use True or False)")


def positive_int(what: str) -> Callable:
    def convert(_holder, value) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{what} must be a positive integer")
        if isinstance(value, str):
            text = value.strip()
            if not (text.isascii() and text.lstrip("+").isdigit()):
                raise ValueError(f"{what} must be a positive integer, not '{value}'")
            value = int(text)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{what} must be a positive integer, not '{value}'")
        return value
    return convert


def non_negative_int(_holder, value) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"'{value}' is not a non-negative integer")


def to_str(_holder, value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{value}' is not text")
    if any(ord(c) < 32 for c in value):
        raise ValueError("control characters are not allowed")
    return value
