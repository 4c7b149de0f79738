"""What a framework's message has no field for, carried in its extras.

- The pinned flag (``Message.pinned``) rides under ``PINNED_KEY``.
- Tool-call arguments: the frameworks keep them parsed; parsing and
  serializing again would change the string the model wrote (spacing, key
  order, escapes), so the adapters carry the OpenAI form of the calls in
  ``additional_kwargs["tool_calls"]`` (where langchain-openai and llama-index's
  OpenAI LLM keep it too) and take the raw string back when it still parses
  to the framework's arguments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["PINNED_KEY", "arguments_string", "parse_arguments", "raw_arguments"]

PINNED_KEY = "ctxproto_pinned"
"""Where ``pinned`` travels: a message's ``additional_kwargs``, a node's metadata."""


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """The arguments as a dict, or ``None`` when they are not a JSON object."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def raw_arguments(extra: Mapping[str, Any]) -> dict[str, str]:
    """Argument strings by tool-call id, from the OpenAI form in ``extra["tool_calls"]``."""
    raw = {}
    for call in extra.get("tool_calls", []):
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
