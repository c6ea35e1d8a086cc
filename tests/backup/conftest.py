"""Fixtures shared by the backup tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def passfile(tmp_path, request):
    """The test module's passphrase (its PASS) in a file, as --passphrase-file reads it."""
    p = tmp_path / "pass"
    p.write_text(request.module.PASS + "\n", encoding="utf-8")
    return p
