"""The error tree every layer raises and the exit codes the tools map it to.

A `QubesError` carries a message fit for the user; the tools print it after
`ERROR: ` and exit 1. Imports nothing from `qubes`.
"""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Published exit codes of every command (TOOLS.md §1.1)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    SIGNAL_BASE = 128


class QubesError(Exception):
    """An error whose message can be shown to the user as it is."""

    def __str__(self) -> str:
        return self.args[0] if self.args else self.__class__.__name__


class NoSuchVMError(QubesError):
    def __init__(self, name: str):
        super().__init__(f"A VM with the name '{name}' does not exist in the system.")
        self.name = name


class VMExistsError(QubesError):
    def __init__(self, name: str):
        super().__init__(f"A VM with the name '{name}' already exists in the system.")
        self.name = name


class InvalidNameError(QubesError):
    """A VM name breaks one of the naming rules; the message names the rule."""

    def __init__(self, name: str, rule: str):
        super().__init__(f"Invalid VM name '{name}': {rule}")
        self.name = name
        self.rule = rule


class PropertyError(QubesError):
    """Base of the property errors; `.prop` names the property."""

    def __init__(self, message: str, prop: str):
        super().__init__(message)
        self.prop = prop


class NoSuchPropertyError(PropertyError):
    def __init__(self, prop: str):
        super().__init__(f"Wrong property name: '{prop}'", prop)


class PropertyNotAvailableError(PropertyError):
    def __init__(self, prop: str):
        super().__init__(f"Property '{prop}' not available for this VM", prop)


class ReadOnlyPropertyError(PropertyError):
    def __init__(self, prop: str):
        super().__init__(f"Property '{prop}' is read-only", prop)


class InvalidValueError(PropertyError):
    """A value was refused at set time; the message says why."""

    def __init__(self, prop: str, reason: str):
        super().__init__(f"Invalid value for {prop}: {reason}", prop)
        self.reason = reason


class StoreError(QubesError):
    """qubes.xml could not be read, locked or saved; `.path` names the file."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class VMMError(QubesError):
    """The hypervisor refused or failed an operation."""


class OfflineError(VMMError):
    def __init__(self) -> None:
        super().__init__("VMM operations disabled in offline mode")


class StorageError(QubesError):
    """A VM's files could not be created, copied or removed."""


class ImagePathError(QubesError):
    """An image given for one start (`--cdrom`) cannot be used; `.path` is as the user gave it."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path
