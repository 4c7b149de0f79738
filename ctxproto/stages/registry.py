"""Stage registry: names in config files map to stage classes.

Adding a built-in stage is one new module in ``ctxproto/stages/`` with a class
decorated ``@register_stage("name")``: every module of the package is imported
on the first lookup, so there is no list of stages to keep up to date.

Third-party packages register through the ``ctxproto.stages`` entry-point group
(``name = "package.module:StageClass"``). A name can mean one class only: an
entry point that claims a name already taken by another class is a
``ConfigError`` naming both, rather than one of them silently winning.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

from ctxproto.errors import ConfigError
from ctxproto.stages.base import Stage

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_stages",
    "builtin_stages",
    "get_stage_class",
    "register_stage",
]

ENTRY_POINT_GROUP = "ctxproto.stages"

_registered: dict[str, type[Stage]] = {}
"""Stages registered with ``@register_stage``: the built-ins and any imported on purpose."""
_plugins: dict[str, type[Stage]] = {}
"""Stages named by entry points, as found on ``_plugins_path``."""
_plugins_path: tuple[str, ...] | None = None
"""The ``sys.path`` the entry points were read from; a new one is read again."""
_builtins_imported = False

S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    """Class decorator registering a stage under ``name`` (also its ``type_name``)."""

    def decorate(cls: S) -> S:
        existing = _registered.get(name)
        if existing is not None and existing is not cls:
            raise ConfigError(
                f"{_qualified(cls)} cannot register the stage name '{name}': "
                f"{_qualified(existing)} already has it"
            )
        cls.type_name = name
        _registered[name] = cls
        return cls

    return decorate


def get_stage_class(name: str) -> type[Stage]:
    """The stage class registered as ``name``; unknown names list the known ones."""
    stages = _all_stages()
    try:
        return stages[name]
    except KeyError:
        raise ConfigError(
            f"unknown stage '{name}'",
            key="type",
            expected="one of " + ", ".join(sorted(stages)),
        ) from None


def available_stages() -> list[str]:
    """Names of every registered stage, entry points included."""
    return sorted(_all_stages())


def builtin_stages() -> dict[str, type[Stage]]:
    """The stages shipped in ``ctxproto.stages``, by registered name (no entry points)."""
    _import_builtins()
    package = f"{__package__}."
    return {name: cls for name, cls in _registered.items() if cls.__module__.startswith(package)}


def _all_stages() -> dict[str, type[Stage]]:
    _import_builtins()
    _load_entry_points()
    return {**_registered, **_plugins}


def _import_builtins() -> None:
    """Import every module of ``ctxproto.stages``; their decorators register them."""
    global _builtins_imported
    if _builtins_imported:
        return
    package = importlib.import_module("ctxproto.stages")
    for module in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
        if not module.name.rpartition(".")[2].startswith("_"):
            importlib.import_module(module.name)
    _builtins_imported = True


def _load_entry_points() -> None:
    """Read the entry-point group again whenever ``sys.path`` changed since the last read.

    Distributions are found on ``sys.path``, so within one process that is what
    changes the set of installed stages.
    """
    global _plugins, _plugins_path
    path = tuple(sys.path)
    if path == _plugins_path:
        return
    found: dict[str, type[Stage]] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        cls = _load(entry_point)
        taken = found.get(entry_point.name) or _registered.get(entry_point.name)
        if taken is not None and taken is not cls:
            raise ConfigError(
                f"entry point {_describe(entry_point)} claims the stage name "
                f"'{entry_point.name}', already taken by {_qualified(taken)}",
                key=ENTRY_POINT_GROUP,
                expected="a stage name no other stage uses",
            )
        cls.type_name = entry_point.name
        found[entry_point.name] = cls
    _plugins, _plugins_path = found, path


def _load(entry_point: EntryPoint) -> type[Stage]:
    try:
        cls = entry_point.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"entry point {_describe(entry_point)} cannot be loaded: {exc}", key=ENTRY_POINT_GROUP
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(
            f"entry point {_describe(entry_point)} does not name a Stage subclass",
            key=ENTRY_POINT_GROUP,
        )
    return cls


def _describe(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    origin = f" of distribution '{dist.name}'" if dist is not None else ""
    return f"'{entry_point.name} = {entry_point.value}'{origin}"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
