"""What a framework's message has no field for, carried in its extras.

- The pinned flag (``Message.pinned``) rides under ``PINNED_KEY``.
- Tool-call arguments: the frameworks keep them parsed; parsing and
  serializing again would change the string the model wrote (spacing, key
  order, escapes), so the adapters carry the OpenAI form of the calls in
  ``additional_kwargs["tool_calls"]`` (where langchain-openai and llama-index's
  OpenAI LLM keep it too) and take the raw string back when it still parses
  to the framework's arguments.

A framework keeps any value in its extras, so the pinned flag read back is
checked: ``True`` or ``False`` (``pinned_flag``). Both adapters refuse a tool
call with no id alike (``call_id``).
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ctxproto.errors import ConfigError

__all__ = [
    "PINNED_KEY",
    "arguments_string",
    "call_id",
    "parse_arguments",
    "pinned_flag",
    "raw_arguments",
]

PINNED_KEY = "ctxproto_pinned"
"""Where ``pinned`` travels: a message's ``additional_kwargs``, a node's metadata."""


def pinned_flag(extra: Mapping[str, Any], where: str, *, key: str) -> bool:
    """``extra[PINNED_KEY]``: absent or null is ``False``; a value that is not a boolean is a
    ``ConfigError`` naming ``where`` it was read, under ``key``.

    Read by its truth, the string ``"false"`` (from a store or a form that keeps its
    values as strings) pinned the message; read as ``is True``, ``"true"`` would
    quietly leave unpinned what was meant to be kept. Either way a slip ran silently
    wrong, so it is refused, as a boolean given where a number belongs is in a config.
    """
    value = extra.get(PINNED_KEY)
    if value is None:  # absent, or a column store's null for a node without the key
        return False
    if isinstance(value, np.bool_):  # read back from an array-backed store
        return bool(value)
    if not isinstance(value, bool):
        raise ConfigError(
            f"{where}['{PINNED_KEY}'] is {reprlib.repr(value)}, not a boolean",
            key=key,
            expected="true or false",
        )
    return value


def call_id(value: str | None, name: str | None) -> str:
    """A tool call's id; none at all is a ``ConfigError``: a tool result answers its
    call by id, so no result could ever be matched to the call. An empty id is an
    id: a result with ``tool_call_id=""`` answers it, the SDK's messages take it,
    and histories written by earlier versions hold it (a LlamaIndex call with no id
    was stored as ``""``), so refused, they could no longer be read back."""
    if value is None:
        raise ConfigError(
            f"tool call '{name or ''}' has no id", key="messages", expected="a tool-call id"
        )
    return value


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """The arguments as a dict, or ``None`` when they are not a JSON object."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def raw_arguments(extra: Mapping[str, Any]) -> dict[str, str]:
    """Argument strings by tool-call id, from the OpenAI form in ``extra["tool_calls"]``."""
    raw: dict[str, str] = {}
    calls = extra.get("tool_calls")
    # Only a lookup of exact strings, which anything but a list or tuple of calls holds
    # none of (as a malformed call is skipped below), not a TypeError from iterating it.
    for call in calls if isinstance(calls, list | tuple) else []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            arguments = call["function"].get("arguments")
            if isinstance(call.get("id"), str) and isinstance(arguments, str):
                raw[call["id"]] = arguments
    return raw


def arguments_string(args: dict[str, Any] | str, raw: str | None = None) -> str:
    """``raw`` when it still parses to ``args``; else ``args`` serialized."""
    if isinstance(args, str):
        return args
    if raw is not None and parse_arguments(raw) == args:
        return raw
    return json.dumps(args, ensure_ascii=False)
