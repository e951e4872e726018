"""Every compression test counts tokens offline."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(offline_encodings: object) -> None:
    """Install the encodings before each test of this folder."""
