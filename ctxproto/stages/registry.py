"""Stage registry: names in config files map to stage classes.

Built-in stages register with ``@register_stage``; third-party packages register
through the ``ctxproto.stages`` entry-point group, loaded on first lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

from ctxproto.errors import ConfigError
from ctxproto.stages.base import Stage

__all__ = ["ENTRY_POINT_GROUP", "available_stages", "get_stage_class", "register_stage"]

ENTRY_POINT_GROUP = "ctxproto.stages"

_registry: dict[str, type[Stage]] = {}
_entry_points_loaded = False

S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    """Class decorator registering a stage under ``name`` (also its ``type_name``)."""

    def decorate(cls: S) -> S:
        existing = _registry.get(name)
        if existing is not None and existing is not cls:
            raise ConfigError(f"already registered by {existing!r}", key=name)
        cls.type_name = name
        _registry[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        cls = entry_point.load()
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise ConfigError(
                f"entry point '{entry_point.name}' does not name a Stage subclass",
                key=ENTRY_POINT_GROUP,
            )
        _registry.setdefault(entry_point.name, cls)
        cls.type_name = entry_point.name


def get_stage_class(name: str) -> type[Stage]:
    """The stage class registered as ``name``; unknown names list the known ones."""
    import ctxproto.stages  # noqa: F401 - registers the built-in stages

    if name not in _registry:
        _load_entry_points()
    try:
        return _registry[name]
    except KeyError:
        raise ConfigError(
            f"unknown stage '{name}'",
            key="type",
            expected="one of " + ", ".join(sorted(_registry)),
        ) from None


def available_stages() -> list[str]:
    """Names of every registered stage, entry points included."""
    import ctxproto.stages  # noqa: F401

    _load_entry_points()
    return sorted(_registry)
