"""The stage registry: built-ins found by module, entry points, names that collide."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

import ctxproto.stages
from ctxproto import ConfigError, Context, Pipeline, UsageError
from ctxproto.stages import (
    Stage,
    Transformed,
    available_stages,
    builtin_stages,
    get_stage_class,
    register_stage,
)
from ctxproto.tokens import TokenCounter


def install_distribution(
    root: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, entry_points: str
) -> None:
    """A real installed distribution: a module and a dist-info folder on ``sys.path``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[ctxproto.stages]\n{entry_points}\n")
    monkeypatch.syspath_prepend(str(root))


SHOUTER = """
    from ctxproto.stages import Stage, Transformed

    class Shouter(Stage):
        suffix: str = "!"

        def transform(self, context, counter):
            query = context.query.model_copy(
                update={"content": context.query.content.upper() + self.suffix}
            )
            return Transformed(context.model_copy(update={"query": query}))
"""


def test_third_party_stage_registers_through_entry_point(tmp_path, monkeypatch):
    install_distribution(
        tmp_path, monkeypatch, "acme_stages", SHOUTER, "shout = acme_stages:Shouter"
    )

    pipeline = Pipeline.from_dict(
        {"stages": [{"type": "shout", "init_parameters": {"suffix": "?!"}}]}
    )
    result = pipeline.run_messages([{"role": "user", "content": "hello"}])
    assert result.prompt is not None
    assert result.prompt.messages[-1]["content"] == "HELLO?!"
    assert "shout" in available_stages()
    assert pipeline.to_dict()["stages"] == [{"type": "shout", "init_parameters": {"suffix": "?!"}}]


def test_an_entry_point_stage_used_from_python_is_written_under_its_entry_point_name(
    tmp_path, monkeypatch
):
    """Before a config named it, it was written under its class name, which loads
    nothing; finding its name loads no other entry point, a broken one included."""
    install_distribution(
        tmp_path,
        monkeypatch,
        "python_only_stages",
        SHOUTER,
        "loud = python_only_stages:Missing\nshout = python_only_stages:Shouter",
    )
    shouter = importlib.import_module("python_only_stages").Shouter
    pipeline = Pipeline([shouter(suffix="?!")])

    text = pipeline.to_yaml()
    assert yaml.safe_load(text)["stages"] == [
        {"type": "shout", "init_parameters": {"suffix": "?!"}}
    ]
    assert Pipeline.from_dict(yaml.safe_load(text)).stages == pipeline.stages
    assert [r.name for r in pipeline.run_messages([{"role": "user", "content": "hi"}]).reports] == [
        "shout"
    ]


def test_a_subclass_of_an_entry_point_stage_is_written_as_its_parent(tmp_path, monkeypatch):
    install_distribution(
        tmp_path, monkeypatch, "parent_stages", SHOUTER, "shout = parent_stages:Shouter"
    )

    class LoudShouter(importlib.import_module("parent_stages").Shouter):  # type: ignore[misc]
        suffix: str = "!!!"

    stages = Pipeline([LoudShouter()]).to_dict()["stages"]
    assert stages == [{"type": "shout", "init_parameters": {"suffix": "!!!"}}]


def test_entry_point_named_like_a_builtin_is_an_error(tmp_path, monkeypatch):
    install_distribution(
        tmp_path,
        monkeypatch,
        "rogue_stages",
        SHOUTER,
        "recency_window = rogue_stages:Shouter",
    )
    with pytest.raises(ConfigError) as info:
        available_stages()
    message = str(info.value)
    assert "recency_window = rogue_stages:Shouter" in message
    assert "rogue-stages" in message
    assert "ctxproto.stages.recency_window.RecencyWindow" in message
    # Not only listing: building a pipeline that uses the name fails the same way.
    with pytest.raises(ConfigError, match="rogue_stages:Shouter"):
        Pipeline.from_dict({"stages": [{"type": "recency_window"}]})


def test_entry_point_that_does_not_load_names_itself(tmp_path, monkeypatch):
    install_distribution(
        tmp_path, monkeypatch, "broken_stages", SHOUTER, "loud = broken_stages:Missing"
    )
    with pytest.raises(ConfigError, match=r"'loud = broken_stages:Missing'.*cannot be loaded"):
        get_stage_class("loud")


def test_an_entry_point_that_does_not_load_fails_only_the_configs_that_name_it(
    tmp_path, monkeypatch
):
    """One broken plugin in the environment used to fail every config, those naming
    built-in stages only included, with an error located at their ``stages[0].type``."""
    install_distribution(
        tmp_path,
        monkeypatch,
        "half_broken_stages",
        SHOUTER,
        "loud = half_broken_stages:Missing\nshout = half_broken_stages:Shouter",
    )
    pipeline = Pipeline.from_dict({"stages": [{"type": "recency_window"}, {"type": "shout"}]})
    assert [stage.type_name for stage in pipeline.stages] == ["recency_window", "shout"]
    with pytest.raises(ConfigError, match="'loud = half_broken_stages:Missing'"):
        Pipeline.from_dict({"stages": [{"type": "loud"}]})
    with pytest.raises(ConfigError, match="cannot be loaded"):
        available_stages()  # listing loads every one, and so checks it
    with pytest.raises(ConfigError) as unknown:
        get_stage_class("no_such_stage")
    assert "loud" in str(unknown.value)  # listed as known without being loaded


ABSTRACT = """
    from ctxproto.stages import Stage

    class Unfinished(Stage):
        suffix: str = "!"
"""


def test_an_entry_point_to_a_stage_without_transform_is_named(tmp_path, monkeypatch):
    """It used to fail as pydantic's ``TypeError: Can't instantiate abstract class``."""
    install_distribution(
        tmp_path, monkeypatch, "unfinished_stages", ABSTRACT, "todo = unfinished_stages:Unfinished"
    )
    with pytest.raises(ConfigError) as raised:
        Pipeline.from_dict({"stages": [{"type": "todo"}]}, source="chat.yaml")
    message = str(raised.value)
    assert "'todo = unfinished_stages:Unfinished' of distribution 'unfinished-stages'" in message
    assert "unfinished_stages.Unfinished does not implement transform" in message
    assert (raised.value.file, raised.value.key) == ("chat.yaml", "stages[0].type")


def test_registering_a_stage_without_transform_is_refused():
    """A misuse of the Python API, no config involved: a ``UsageError``, not a ``ConfigError``."""
    with pytest.raises(UsageError, match=r"Unfinished does not implement transform") as raised:

        @register_stage("test_registry_unfinished")
        class Unfinished(Stage):
            pass

    assert not isinstance(raised.value, ConfigError)

    assert "test_registry_unfinished" not in available_stages()


def test_registry_forgets_a_distribution_no_longer_on_the_path(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        install_distribution(
            tmp_path, patch, "gone_stages", SHOUTER, "whisper = gone_stages:Shouter"
        )
        assert "whisper" in available_stages()
    assert "whisper" not in available_stages()


def test_unknown_stage_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        get_stage_class("no_such_stage")
    assert "recency_window" in str(info.value)


def test_unknown_stage_says_how_a_stage_of_ones_own_is_found():
    """A stage written in a file of one's own is unknown to ``ctxproto run`` until an
    installed package names it; the error used to list the built-in names only."""
    with pytest.raises(ConfigError) as info:
        get_stage_class("no_such_stage")
    assert 'once its module, with @register_stage("name"), is imported' in str(info.value)
    assert "'ctxproto.stages' entry point of an installed package" in str(info.value)


def test_every_stage_module_registers_its_stages():
    """A stage module needs no import list: each concrete stage in it is registered."""
    registered = set(builtin_stages().values())
    package = ctxproto.stages
    for module_info in pkgutil.iter_modules(package.__path__, prefix="ctxproto.stages."):
        module = importlib.import_module(module_info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            defined_here = cls.__module__ == module.__name__
            if defined_here and issubclass(cls, Stage) and not inspect.isabstract(cls):
                assert cls in registered, f"{cls.__qualname__} lacks @register_stage"
    assert {cls.__name__ for cls in registered} >= {"RecencyWindow", "SemanticCacheLookup"}


def test_builtin_stages_are_reachable_from_the_package():
    from ctxproto.stages.dedup import Dedup

    assert ctxproto.stages.Dedup is Dedup
    with pytest.raises(AttributeError):
        _ = ctxproto.stages.NoSuchStage


def sample_parameters(stage: type[Stage], folder: Path) -> dict[str, Any]:
    """Values for a stage's required parameters; the ones stages have are folder paths."""
    parameters: dict[str, Any] = {}
    for name, field in stage.model_fields.items():
        if field.is_required():
            assert field.annotation is str, f"give {stage.__name__}.{name} a sample value here"
            parameters[name] = str(folder / name)
    return parameters


@pytest.mark.parametrize("name", available_stages())
def test_every_stage_round_trips_through_yaml(name, tmp_path):
    stage_class = get_stage_class(name)
    stage = stage_class.model_validate(sample_parameters(stage_class, tmp_path))
    pipeline = Pipeline([stage], name=f"{name}-round-trip")

    text = yaml.safe_dump(pipeline.to_dict(), sort_keys=False)
    loaded = Pipeline.from_dict(yaml.safe_load(text))

    assert loaded.stages == [stage]
    assert type(loaded.stages[0]) is stage_class
    assert loaded.to_dict() == pipeline.to_dict()
    assert yaml.safe_dump(loaded.to_dict(), sort_keys=False) == text


def test_two_classes_cannot_register_one_name():
    @register_stage("test_registry_once")
    class First(Stage):
        def transform(self, context: Context, counter: TokenCounter) -> Transformed:
            return Transformed(context)

    with pytest.raises(UsageError, match="First already has it") as raised:

        @register_stage("test_registry_once")
        class Second(First):
            pass

    assert not isinstance(raised.value, ConfigError)  # no config file is involved

    assert get_stage_class("test_registry_once") is First
