"""The admin token semproxy makes for itself when the operator set none: the admin endpoints are never open
by accident, and the dashboard works out of the box for whoever can read the data dir (as Jupyter does).

The token lives in `<data_dir>/admin_token`, readable by its owner only; `semproxy admin-token` prints it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

FILE_NAME = "admin_token"


def token_file(data_dir: Path) -> Path:
    """Where the generated token is kept."""
    return data_dir / FILE_NAME


def ensure_admin_token(data_dir: Path) -> str:
    """The data dir's admin token, made on first use. Processes that start together agree on one token:
    the first to create the file wins (O_EXCL) and the others read it."""
    path = token_file(data_dir)
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_when_written(path)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(token + "\n")
    return token


def _read_when_written(path: Path) -> str:
    for _ in range(100):  # the creator writes one short line right after creating the file
        with contextlib.suppress(FileNotFoundError):
            return _read(path)
        time.sleep(0.01)
    return _read(path)


def _read(path: Path) -> str:
    token = path.read_text(encoding="ascii").strip()
    if not token:  # another process made the file and has not written it yet
        raise FileNotFoundError(path)
    return token
