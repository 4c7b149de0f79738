"""Folder parameters of stages that keep state on disk, checked when the stage is configured.

A summarizer ``state_path`` or a semantic-cache ``path`` that is a file, or sits
where nothing can be written, used to pass validation and fail on the first
request with a traceback from deep inside the store. As a pydantic type the
check runs when the stage is built, so a config file names the key and the CLI
exits 2 before any work. Nothing is created here: the store makes its folder
on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["WritableFolder", "check_writable_folder"]


def check_writable_folder(value: str) -> str:
    """``value`` unchanged when it is, or can be created as, a folder this process can write."""
    try:
        _check(Path(value).expanduser(), value)
    except OSError as exc:  # a parent we may not even look into
        raise ValueError(f"cannot use {value} as a folder: {exc.strerror}") from None
    return value


def _check(path: Path, value: str) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{value} is a file, not a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is a file, so {value} cannot be created as a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing} is not writable")


WritableFolder = Annotated[str, AfterValidator(check_writable_folder)]
"""A folder path that exists and is writable, or can be created."""
