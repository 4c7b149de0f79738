"""Tool-call arguments between a JSON string (ctxproto, OpenAI) and a dict (the frameworks).

The frameworks keep parsed arguments; parsing and serializing again would
change the string the model wrote (spacing, key order, escapes), so the
adapters carry the raw string alongside and take it back when it still
parses to the framework's arguments.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["arguments_string", "parse_arguments"]


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """The arguments as a dict, or ``None`` when they are not a JSON object."""
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def arguments_string(args: dict[str, Any] | str, raw: Any = None) -> str:
    """``raw`` when it is a string that still parses to ``args``; else ``args`` serialized."""
    if isinstance(args, str):
        return args
    if isinstance(raw, str) and parse_arguments(raw) == args:
        return raw
    return json.dumps(args, ensure_ascii=False)
