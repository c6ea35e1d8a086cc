"""Backup errors: each says what is wrong and names the member or VM at fault."""
from __future__ import annotations

from qubes.errors import QubesError


class BackupError(QubesError):
    """A backup cannot be read or written; `.member` names the archive member."""

    def __init__(self, message: str, member: str | None = None):
        super().__init__(message)
        self.member = member


class BackupOutputError(BackupError):
    """The destination (or the temporary space) could not take the backup."""


class WrongPassphraseError(BackupError):
    def __init__(self) -> None:
        super().__init__("backup-header: HMAC verification failed with every algorithm: "
                         "the passphrase is wrong, or the backup header has been modified",
                         "backup-header")


class UnsafeArchiveError(BackupError):
    """Authenticated content that would write outside the restore area (B41)."""
