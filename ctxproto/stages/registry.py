"""Stage registry: names in config files map to stage classes.

Adding a built-in stage is one new module in ``ctxproto/stages/`` with a class
decorated ``@register_stage("name")``: every module of the package is imported
on the first lookup, so there is no list of stages to keep up to date.

Third-party packages register through the ``ctxproto.stages`` entry-point group
(``name = "package.module:StageClass"``). An entry point is loaded when a config
names it (or when every stage is listed), so that one plugin that cannot be
imported fails only the configs that use it. A name can mean one class only: an
entry point that claims a name already taken by another class is a
``ConfigError`` naming both, rather than one of them silently winning; so is, as
a ``UsageError`` (no config is involved), ``@register_stage`` with a taken name.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

from ctxproto.config import nearest_hint
from ctxproto.errors import ConfigError, UsageError
from ctxproto.stages.base import Stage, name_stage

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_stages",
    "builtin_stages",
    "config_name",
    "get_stage_class",
    "register_stage",
]

ENTRY_POINT_GROUP = "ctxproto.stages"

_registered: dict[str, type[Stage]] = {}
"""Stages registered with ``@register_stage``: the built-ins and any imported on purpose."""
_entry_points: dict[str, list[EntryPoint]] = {}
"""The entry points of the group by stage name, as found on ``_plugins_path``."""
_plugins: dict[str, type[Stage]] = {}
"""The entry-point stages loaded so far, by name."""
_plugins_path: tuple[str, ...] | None = None
"""The ``sys.path`` the entry points were read from; a new one is read again."""
_builtins_imported = False

_OWN_STAGES = (
    '; a stage of your own is found once its module, with @register_stage("name"), is'
    f" imported, or through a '{ENTRY_POINT_GROUP}' entry point of an installed package"
)
"""What an unknown name adds: a config names a stage outside ctxproto only through these."""

S = TypeVar("S", bound=type[Stage])


def register_stage(name: str) -> Callable[[S], S]:
    """Class decorator registering a stage under ``name`` (also its ``type_name``)."""

    def decorate(cls: S) -> S:
        missing = _unbuildable(cls)
        if missing:
            raise UsageError(f"@register_stage({name!r}): {missing}")
        existing = _registered.get(name)
        if existing is not None and existing is not cls:
            raise UsageError(
                f"{_qualified(cls)} cannot register the stage name '{name}': "
                f"{_qualified(existing)} already has it"
            )
        name_stage(cls, name)
        _registered[name] = cls
        return cls

    return decorate


def get_stage_class(name: str) -> type[Stage]:
    """The stage class registered as ``name``; unknown names list the known ones.

    Only the entry points named ``name`` are loaded.
    """
    _import_builtins()
    stage = _plugin(name) or _registered.get(name)
    if stage is None:
        known = sorted({*_registered, *_named_entry_points()})
        raise ConfigError(
            f"unknown stage '{name}'{nearest_hint(name, known)}",
            key="type",
            expected="one of " + ", ".join(known) + _OWN_STAGES,
        )
    return stage


def config_name(stage: type[Stage]) -> str:
    """The name under which a config file loads ``stage`` back; a ``UsageError`` if none does.

    ``type_name`` alone is not enough: a class name loads nothing, and an
    entry-point stage keeps its class name until a config names it. So the name
    is the one registered for the class, else that of an entry point whose value
    names the class (read without loading any other entry point); else, for a
    subclass, its nearest ancestor's, which loads as that ancestor with the same
    parameters.
    """
    _import_builtins()
    entry_points_by_name = _named_entry_points()  # first, as it forgets stale plugins
    for cls in stage.__mro__:
        if not issubclass(cls, Stage) or cls is Stage:
            continue
        if (_plugins.get(cls.type_name) or _registered.get(cls.type_name)) is cls:
            return cls.type_name
        target = (cls.__module__, cls.__qualname__)
        for name, named in entry_points_by_name.items():
            if any((entry_point.module, entry_point.attr) == target for entry_point in named):
                _plugin(name)  # checks that the name is this class's alone, and names it by it
                return name
    raise UsageError(
        f"stage '{stage.type_name}' ({_qualified(stage)}) has no name a config file loads:"
        f" register it with @register_stage(\"name\") or a '{ENTRY_POINT_GROUP}' entry point"
        " to write it to a config"
    )


def available_stages() -> list[str]:
    """Names of every registered stage, entry points included."""
    return sorted(_all_stages())


def builtin_stages() -> dict[str, type[Stage]]:
    """The stages shipped in ``ctxproto.stages``, by registered name (no entry points)."""
    _import_builtins()
    package = f"{__package__}."
    return {name: cls for name, cls in _registered.items() if cls.__module__.startswith(package)}


def _all_stages() -> dict[str, type[Stage]]:
    """Every stage, each entry point loaded (and so checked)."""
    _import_builtins()
    plugins = {name: _plugin(name) for name in _named_entry_points()}
    return {**_registered, **{name: cls for name, cls in plugins.items() if cls is not None}}


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


def _named_entry_points() -> dict[str, list[EntryPoint]]:
    """The group's entry points by name, read again whenever ``sys.path`` changed.

    Distributions are found on ``sys.path``, so within one process that is what
    changes the set of installed stages; the stages loaded for the old path are
    forgotten with it.
    """
    global _entry_points, _plugins, _plugins_path
    path = tuple(sys.path)
    if path != _plugins_path:
        named: dict[str, list[EntryPoint]] = {}
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            named.setdefault(entry_point.name, []).append(entry_point)
        _entry_points, _plugins, _plugins_path = named, {}, path
    return _entry_points


def _plugin(name: str) -> type[Stage] | None:
    """The stage the entry points named ``name`` load, or ``None`` when none is named so."""
    named = _named_entry_points().get(name)
    if not named:
        return None
    if name in _plugins:
        return _plugins[name]
    loaded = [(entry_point, _load(entry_point)) for entry_point in named]
    stage = _registered.get(name) or loaded[0][1]
    for entry_point, cls in loaded:
        if cls is not stage:
            raise ConfigError(
                f"entry point {_describe(entry_point)} claims the stage name "
                f"'{name}', already taken by {_qualified(stage)}",
                key=ENTRY_POINT_GROUP,
                expected="a stage name no other stage uses",
            )
    name_stage(stage, name)
    _plugins[name] = stage
    return stage


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
    missing = _unbuildable(cls)
    if missing:
        raise ConfigError(
            f"entry point {_describe(entry_point)}: {missing}",
            key=ENTRY_POINT_GROUP,
            expected="a Stage subclass that implements transform",
        )
    return cls


def _unbuildable(cls: type[Stage]) -> str | None:
    """Why a stage class cannot be built (it lacks ``transform``), or ``None`` when it can.

    Registered, such a class failed only when a config named it, in a ``TypeError``
    from pydantic's ``model_validate`` rather than an error naming the registration.
    """
    if not inspect.isabstract(cls):
        return None
    missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
    return f"{_qualified(cls)} does not implement {missing}, so it cannot be built"


def _describe(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    origin = f" of distribution '{dist.name}'" if dist is not None else ""
    return f"'{entry_point.name} = {entry_point.value}'{origin}"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
