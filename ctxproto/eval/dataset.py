"""The evaluation dataset interface: items with a context and gold answers.

Every dataset — a user's JSONL file or a generated one (``needle``,
``chat-needle``) — yields ``EvalItem``s. An item holds the full, uncompressed
``Context`` a pipeline receives, the gold answers, and metadata that reports
group by (needle depth, context length, source). Datasets that read files keep a
list of ``DatasetProblem``s (bad lines, a truncated file) so that nothing is
dropped silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ctxproto.context import Context
from ctxproto.errors import DatasetError

__all__ = [
    "DEFAULT_CONTEXT_LENGTHS",
    "DEFAULT_DEPTHS",
    "Dataset",
    "DatasetOptions",
    "DatasetProblem",
    "EvalItem",
    "load_dataset",
]

DEFAULT_CONTEXT_LENGTHS = (1000, 2000, 4000, 8000)
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)


@dataclass(frozen=True)
class EvalItem:
    """One evaluation case: the full context, its gold answers, and grouping metadata."""

    id: str
    context: Context
    answers: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetProblem:
    """Something a loader skipped, with where it was (a line number, a record)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class DatasetOptions(BaseModel):
    """Knobs of the generated datasets; a JSONL file ignores them."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    context_lengths: list[int] = Field(default_factory=lambda: list(DEFAULT_CONTEXT_LENGTHS))
    depths: list[int] = Field(default_factory=lambda: list(DEFAULT_DEPTHS))
    turns: int = Field(default=30, ge=4)
    max_conversation_tokens: int = Field(default=8000, gt=0)


class Dataset(ABC):
    """A named source of items. ``items(limit)`` is deterministic for given options."""

    name: str

    def __init__(self) -> None:
        self.problems: list[DatasetProblem] = []

    @abstractmethod
    def items(self, limit: int | None = None) -> Iterator[EvalItem]:
        """Yield up to ``limit`` items (the dataset's natural size when ``None``)."""

    def describe(self) -> dict[str, Any]:
        """What report.json records about the dataset."""
        return {"name": self.name, "problems": [str(p) for p in self.problems]}


def load_dataset(spec: str, options: DatasetOptions | None = None) -> Dataset:
    """``needle``, ``chat-needle``, or the path of a JSONL file in the documented schema."""
    options = options or DatasetOptions()
    if spec == "needle":
        from ctxproto.eval.needle import NeedleDataset

        return NeedleDataset(options)
    if spec == "chat-needle":
        from ctxproto.eval.chat_needle import ChatNeedleDataset

        return ChatNeedleDataset(options)
    path = Path(spec)
    if not path.is_file():
        raise DatasetError(
            f"dataset '{spec}' is neither 'needle', 'chat-needle' nor a readable JSONL file"
        )
    from ctxproto.eval.jsonl import JsonlDataset

    return JsonlDataset(path)
