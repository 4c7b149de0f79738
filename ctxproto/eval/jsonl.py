"""A user's own evaluation set: one JSON item per line (schema in docs/eval.md).

A bad line — bytes that are not UTF-8, invalid JSON, a missing field, a wrong
type, neither documents nor messages — is recorded with its line number and
skipped; the rest of the file is still evaluated, and the CLI prints every
problem. A file with no valid line at all is a ``DatasetError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctxproto.config import validation_error_to_config_error
from ctxproto.context import ChatRequest
from ctxproto.documents import Document
from ctxproto.errors import DatasetError
from ctxproto.eval.dataset import Dataset, DatasetProblem, EvalItem
from ctxproto.eval.metrics import normalize_answer
from ctxproto.limits import excerpt
from ctxproto.messages import Message, text_only

__all__ = ["JsonlDataset", "JsonlDocument", "JsonlItem"]

_UNDECODED = re.compile("[\udc80-\udcff]")
"""A byte that is not UTF-8, as the ``surrogateescape`` error handler reads it."""


class JsonlDocument(BaseModel):
    """A document of a JSONL item."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str


class JsonlItem(BaseModel):
    """One line of a user's evaluation file.

    ``messages`` is the conversation before the question (OpenAI chat format; a
    leading system message becomes the system prompt); ``question`` is asked last.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1)
    documents: list[JsonlDocument] | None = None
    messages: list[Message] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return text_only(data)

    @model_validator(mode="after")
    def _has_context(self) -> JsonlItem:
        if not self.documents and not self.messages:
            raise ValueError("an item needs 'documents' or 'messages' (or both)")
        if any(not answer.strip() for answer in self.answers):
            raise ValueError("'answers' must not contain empty strings")
        # Matched after SQuAD normalization: an item whose every answer it empties
        # ("A", "...") is found in no prompt, the full one included, and read as lost by
        # every system. One such alias beside a real answer is skipped when scoring.
        if not any(normalize_answer(answer) for answer in self.answers):
            shown = excerpt(self.answers[0]) if len(self.answers) == 1 else "every answer"
            raise ValueError(
                f"{'answer ' if len(self.answers) == 1 else ''}{shown} is empty once "
                "normalized (lower case, no punctuation, no a/an/the), so no text could "
                "contain it"
            )
        return self

    def to_item(self) -> EvalItem:
        messages = [*(self.messages or []), Message(role="user", content=self.question)]
        documents = [Document(id=d.id, text=d.text) for d in self.documents or []]
        request = ChatRequest(messages=messages, documents=documents)
        return EvalItem(id=self.id, context=request.to_context(), answers=list(self.answers))


class JsonlDataset(Dataset):
    """Items read from a JSONL file; bad lines are kept in ``problems`` by line number."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.name = path.name
        self._items = self._read()

    def _read(self) -> list[EvalItem]:
        items: list[EvalItem] = []
        seen: set[str] = set()
        try:
            # utf-8-sig: a byte order mark (Windows editors, spreadsheet exports) would
            # otherwise make the first line invalid JSON and drop its item. Bytes that
            # are not UTF-8 come through as lone surrogates, so that they make a bad
            # line of their own: a strict decode refused the whole file, naming no line.
            with open(self.path, encoding="utf-8-sig", errors="surrogateescape") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    item = self._parse(number, line)
                    if item is None:
                        continue
                    if item.id in seen:
                        self._problem(number, f"duplicate id {excerpt(item.id)}")
                        continue
                    seen.add(item.id)
                    items.append(item)
        except OSError as exc:
            raise DatasetError(f"{self.path}: cannot read: {exc.strerror}") from exc
        if not items:
            detail = "; ".join(str(p) for p in self.problems[:5])
            raise DatasetError(
                f"{self.path}: no valid item" + (f" ({detail})" if detail else " (empty file)")
            )
        return items

    def _parse(self, number: int, line: str) -> EvalItem | None:
        undecoded = _UNDECODED.search(line)
        if undecoded is not None:
            byte = ord(undecoded.group()) - 0xDC00  # surrogateescape's code for the byte
            column = undecoded.start() + 1
            self._problem(number, f"not UTF-8 text (byte 0x{byte:02x} at column {column})")
            return None
        try:
            # Without its line end: in a string left open, json saw the newline and said
            # "Invalid control character" at the end of the line, not where the string began.
            raw: Any = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            # Some of json's messages end in "at" ("Invalid control character at"):
            # said as they are, the line read "... at at column 12".
            reason = exc.msg.removesuffix(" at")
            self._problem(number, f"invalid JSON: {reason} at column {exc.colno}")
            return None
        try:
            return JsonlItem.model_validate(raw).to_item()
        except ValidationError as exc:  # said as a request file's: key, no "Value error, "
            self._problem(number, str(validation_error_to_config_error(exc, data=raw)))
            return None

    def _problem(self, number: int, message: str) -> None:
        self.problems.append(DatasetProblem(f"{self.path.name}:{number}", message))

    def items(self, limit: int | None = None) -> Iterator[EvalItem]:
        yield from self._items[:limit] if limit is not None else self._items
