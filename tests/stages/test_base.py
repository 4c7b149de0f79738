"""The stage contract as a stage written outside ctxproto meets it: names, results, errors."""

from __future__ import annotations

from typing import Any

from ctxproto import Context, Message, Pipeline, RecencyWindow
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


def test_a_subclass_of_a_registered_stage_is_not_named_as_its_parent():
    """Named ``recency_window``, it would be written to a config file as the parent,
    and load back as the parent."""

    class NarrowWindow(RecencyWindow):
        max_turns: int | None = 1

    pipeline = Pipeline([NarrowWindow()])
    assert [r.name for r in ask(pipeline).reports] == ["NarrowWindow"]
    assert pipeline.to_dict()["stages"][0]["type"] == "NarrowWindow"
    assert RecencyWindow.type_name == "recency_window"
