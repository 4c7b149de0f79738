"""Folder parameters of stages that keep state on disk, checked when the stage is configured.

A summarizer ``state_path`` or a semantic-cache ``path`` that is a file, or sits
where nothing can be written, used to pass validation and fail on the first
request with a traceback from deep inside the store. As a pydantic type the
check runs when the stage is built, so a config file names the key and the CLI
exits 2 before any work. Nothing is created here: the store makes its folder
on first use.

``FolderOrRedisURL`` also takes a ``redis://`` URL: the stores behind it then
live on a server that several proxy replicas share (``ctxproto.stores.location``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator

from ctxproto.stores.store_url import redact_url, store_location

__all__ = ["FolderOrRedisURL", "WritableFolder", "check_store_location", "check_writable_folder"]


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


def check_store_location(value: str) -> str:
    """``value`` unchanged when it is a Redis URL with a host, or a usable folder.

    Only the form of a URL is checked here; whether the server answers is found
    when the store opens, so a config can be validated on a machine that cannot
    reach it.
    """
    kind = store_location(value)
    if kind == "postgresql":
        raise ValueError(
            f"{redact_url(value)}: PostgreSQL holds retrieval stores only; "
            "give a folder or a redis:// URL"
        )
    if kind == "path":
        return check_writable_folder(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (parsing the port is the check)
    except ValueError as exc:
        raise ValueError(f"{redact_url(value)} is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"{redact_url(value)} names no host")
    return value


FolderOrRedisURL = Annotated[str, AfterValidator(check_store_location)]
"""A folder as for ``WritableFolder``, or a ``redis://`` URL of a server replicas share."""
