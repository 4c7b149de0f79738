"""The base of config schemas: a YAML boolean is no number, and a number is finite.

pydantic's lax mode, which lets a config say ``max_tokens: "500"``, also reads
``true`` as 1 and ``false`` as 0 for an int or float field. A boolean where a
count belongs is a slip (a key put under the wrong section, a flag's value
pasted beside it), and taken as 1 it ran silently wrong: ``max_prompt_tokens:
true`` was a one-token budget, refused on every request as a ``BudgetError``
that named no key, and a serve config's ``limits.max_body_bytes: true``
answered every request 413. YAML's ``.inf`` and ``.nan`` pass ``gt=0`` and
``ge=0`` checks alike; an infinite backend ``timeout`` ended the first turn in
an ``OverflowError`` from the socket, and an infinite ``read_timeout_s`` is no
limit at all.

Kept apart from ``ctxproto.config``, which imports ``Budget``, a model built on it.
``ConfigErrorModel`` lives here for the same reason (``Budget`` is one, and so is
every stage), and reaches ``ctxproto.config``'s error formatting when it raises.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ctxproto.errors import ConfigError

__all__ = ["ConfigErrorModel", "ConfigModel"]


class ConfigModel(BaseModel):
    """A config schema's base: ``true`` is refused where a number belongs, and so are
    ``.inf`` and ``.nan`` (``allow_inf_nan=False``, merged into a subclass's config)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, data: Any) -> Any:
        # A model validator, not a field one: pydantic allows no "before" validator
        # on a discriminator field (an upstream's ``type``). The ``ConfigError`` is
        # keyed, so the reader names the field under the section.
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(name, str) else None
            where = None if field is None else _boolean_for_a_number(value, field.annotation)
            if where is not None:
                key, given = where
                raise ConfigError(
                    f"Input should be a number, not a boolean, got {given}",
                    key=f"{name}{key}",
                )
        return data


class ConfigErrorModel(ConfigModel):
    """A base for pydantic models that users build in Python (stages, the budget, the
    framework adapters).

    A bad field is a ``ConfigError`` naming its key, as in a config file, not
    pydantic's ``ValidationError``: a dict given for a nested model
    (``generation={"max_tokens": 3}``) is validated by pydantic, so the model's
    own ``ConfigError`` would otherwise reach the caller wrapped in one. Listed
    before a framework's base class, so that it wraps that class's validation.
    """

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise self.config_error(exc, data) from None

    @classmethod
    def config_error(cls, exc: ValidationError, data: dict[str, Any]) -> ConfigError:
        """``exc`` as the ``ConfigError`` the caller gets; a subclass may name itself."""
        from ctxproto.config import validation_error_to_config_error  # imports this module

        return validation_error_to_config_error(exc, data=data)


def _boolean_for_a_number(value: Any, annotation: Any) -> tuple[str, bool] | None:
    """Where ``value`` is, or holds (a mapping's values, a list's items), a boolean
    where ``annotation`` takes a number and no boolean: the key below the field
    (``""`` for the field itself, ``.history``, ``[2]``) and the boolean."""
    members = _members(annotation)
    if isinstance(value, bool):
        takes_number = any(member in (int, float) for member in members)
        if takes_number and not any(member in (bool, Any, object) for member in members):
            return "", value
        return None
    for member in members:
        args = get_args(member)
        if isinstance(value, dict) and get_origin(member) is dict and len(args) == 2:
            items = [(f".{key}", item) for key, item in value.items()]
            inner = args[1]
        elif isinstance(value, list) and get_origin(member) is list and len(args) == 1:
            items = [(f"[{index}]", item) for index, item in enumerate(value)]
            inner = args[0]
        else:
            continue
        for key, item in items:
            found = _boolean_for_a_number(item, inner)
            if found is not None:
                return key + found[0], found[1]
    return None


def _members(annotation: Any) -> list[Any]:
    """``annotation`` as the types it admits: a union's members, ``Annotated`` unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]
