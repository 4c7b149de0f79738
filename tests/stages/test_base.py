"""The stage contract as a stage written outside ctxproto meets it: names, results, errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ctxproto import ConfigError, Context, Message, Pipeline, RecencyWindow, UsageError
from ctxproto.stages import Stage, Transformed
from ctxproto.tokens import TokenCounter


def ask(pipeline: Pipeline) -> Any:
    return pipeline.run(Context(query=Message(role="user", content="Hi?")))


class Unregistered(Stage):
    """A stage used from Python only: no ``@register_stage``, no ``type_name``."""

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        return Transformed(context, {"seen": 1})


def test_an_unregistered_stage_runs_under_its_class_name():
    result = ask(Pipeline([Unregistered()]))
    assert [(r.name, r.counters) for r in result.reports] == [("Unregistered", {"seen": 1})]


def test_a_subclass_of_a_registered_stage_keeps_its_parents_name():
    """Named by its class, it was written to a config file under a name that loads
    nothing; under its parent's name it loads back as the parent, with its parameters."""

    class NarrowWindow(RecencyWindow):
        max_turns: int | None = 1

    pipeline = Pipeline([NarrowWindow()])
    assert [r.name for r in ask(pipeline).reports] == ["recency_window"]
    assert pipeline.to_dict()["stages"][0]["type"] == "recency_window"
    assert Pipeline.from_dict(pipeline.to_dict()).stages == [RecencyWindow(max_turns=1)]
    assert RecencyWindow.type_name == "recency_window"


class UnregisteredBase(Stage):
    """A base of one's own stages, registered by none."""

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        return Transformed(context)


class FirstOfBase(UnregisteredBase):
    pass


class SecondOfBase(UnregisteredBase):
    pass


def test_a_class_name_is_not_inherited():
    """Each subclass of an unregistered base reports itself, not the base."""
    reports = ask(Pipeline([FirstOfBase(), SecondOfBase()])).reports
    assert [r.name for r in reports] == ["FirstOfBase", "SecondOfBase"]


def test_an_unregistered_stage_is_not_written_to_a_config():
    """Its class name, written as its type, made a config file that did not load."""
    pipeline = Pipeline([Unregistered()])
    with pytest.raises(UsageError) as raised:
        pipeline.to_yaml()
    assert not isinstance(raised.value, ConfigError)  # no config file is involved
    message = str(raised.value)
    assert f"stage 'Unregistered' ({__name__}.Unregistered)" in message
    assert '@register_stage("name")' in message
    assert "'ctxproto.stages' entry point" in message


class Returns(Stage):
    """A stage whose ``transform`` returns whatever it is given, as a broken one would."""

    value: Any = None

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        return self.value(context)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("result", "got"),
    [
        (lambda context: context, "got Context"),
        (lambda context: (context, {}), "got tuple"),
        (lambda context: Transformed(context.model_dump()), "got dict"),
    ],
    ids=["context alone", "tuple", "context as a dict"],
)
def test_a_result_that_is_not_transformed_names_the_stage_and_the_rule(result, got):
    with pytest.raises(UsageError) as raised:
        ask(Pipeline([Returns(value=result)]))
    message = str(raised.value)
    assert message.startswith(f"stage 'Returns' ({__name__}.Returns): ")
    assert "transform must return Transformed(context, counters)" in message
    assert message.endswith(got)


@pytest.mark.parametrize(
    ("counters", "problem"),
    [
        ({"note": "hello"}, "counter 'note' must be a number, got 'hello'"),
        ({"kept": None}, "counter 'kept' must be a number, got None"),
        ({3: 1}, "counter names must be text, got 3"),
        ([1, 2], "counters must be a dict of names to numbers, got [1, 2]"),
    ],
    ids=["text", "none", "number as a name", "list"],
)
def test_counters_that_are_not_numbers_name_the_stage_and_the_counter(counters, problem):
    stage = Returns(value=lambda context: Transformed(context, counters))
    with pytest.raises(UsageError) as raised:
        ask(Pipeline([stage]))
    assert str(raised.value) == f"stage 'Returns' ({__name__}.Returns): {problem}"


def test_counters_may_be_whole_or_fractional_numbers_and_flags():
    counters = {"kept": 3, "ratio": 0.5, "target_met": True}
    stage = Returns(value=lambda context: Transformed(context, counters))
    assert ask(Pipeline([stage])).reports[0].counters == {"kept": 3, "ratio": 0.5, "target_met": 1}


# -- the README's "Writing a stage", as a user follows it ---------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Writing a stage") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.M | re.S)


@pytest.fixture(scope="module")
def greetings() -> ModuleType:
    """The README's stage, in the file ``greetings.py`` the README has the user write."""
    module = ModuleType("greetings")
    exec(readme_blocks("python")[0], module.__dict__)  # the README's own code, as written
    return module


def test_the_readme_stage_runs_from_python_and_from_a_config(greetings):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "How do I reset it?"},
        {"role": "assistant", "content": "Hold the button."},
        {"role": "user", "content": "Thanks"},
    ]
    in_python = Pipeline([greetings.GreetingDropper()]).run_messages(messages)
    from_config = Pipeline.from_dict(
        {"stages": [{"type": "drop_greetings", "init_parameters": {"words": ["hi"]}}]}
    ).run_messages(messages)

    assert in_python.summary()["stages"][0]["name"] == "drop_greetings"
    assert in_python.summary()["stages"][0]["counters"] == {"dropped": 1}
    assert [m["content"] for m in in_python.summary()["messages"]] == [
        "How do I reset it?",
        "Hold the button.",
        "Thanks",
    ]
    assert from_config.reports[0].counters == {"dropped": 1}


def test_a_bad_parameter_of_the_readme_stage_names_the_file_and_the_key(greetings):
    with pytest.raises(ConfigError) as raised:
        Pipeline.from_dict(
            {"stages": [{"type": "drop_greetings", "init_parameters": {"word": ["hi"]}}]},
            source="chat.yaml",
        )
    assert raised.value.file == "chat.yaml"
    assert raised.value.key == "stages[0].init_parameters.word"


def test_the_readme_packaging_names_the_readme_stage(greetings):
    project = tomllib.loads(readme_blocks("toml")[0])
    entry_points = project["project"]["entry-points"]["ctxproto.stages"]
    assert project["tool"]["setuptools"]["py-modules"] == [greetings.__name__]
    assert entry_points == {"drop_greetings": f"{greetings.__name__}:GreetingDropper"}
    assert greetings.GreetingDropper.type_name == "drop_greetings"


@pytest.mark.parametrize(
    ("parameters", "key", "says"),
    [
        ({"max_turns": -1}, "max_turns", "greater than or equal to 0"),
        ({"max_turns": "x"}, "max_turns", "valid integer"),
        ({"max_turn": 2}, "max_turn", "one of: max_tokens, max_turns, start_on_user"),
    ],
)
def test_a_stage_built_from_python_with_a_bad_parameter_names_the_stage_and_the_key(
    parameters: dict[str, Any], key: str, says: str
) -> None:
    """Built from Python, a stage raised pydantic's ValidationError, outside the
    exception tree, where a config file gets a ConfigError naming the key."""
    with pytest.raises(ConfigError) as caught:
        RecencyWindow(**parameters)
    assert caught.value.key == key
    assert "stage 'recency_window'" in str(caught.value)
    assert says in str(caught.value)
