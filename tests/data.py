"""Where the evaluation data lives, the documented way: $SEMPROXY_EVAL_DATA, else ../shared/data next to the
repository (as the bench scripts read it)."""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def eval_data() -> Path:
    """The evaluation data folder (read at each call, so the environment of the moment decides)."""
    override = os.environ.get("SEMPROXY_EVAL_DATA")
    return Path(override) if override else REPOSITORY.parent / "shared" / "data"
