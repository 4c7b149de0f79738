import asyncio
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from ctxproto import (
    Budget,
    ChatRequest,
    ConfigError,
    Context,
    Message,
    Pipeline,
    RecencyWindow,
    UsageError,
)
from ctxproto.config import PipelineConfig
from ctxproto.stages import Stage, Transformed, available_stages, register_stage
from ctxproto.tokens import TokenCounter

EXAMPLES = Path(__file__).parents[1] / "examples"


def support_request() -> ChatRequest:
    return ChatRequest.from_json_file(str(EXAMPLES / "requests" / "support_chat.json"))


def test_minimal_example_fits_budget_and_saves_tokens():
    pipeline = Pipeline.from_yaml(EXAMPLES / "pipelines" / "minimal.yaml")
    result = pipeline.run(support_request())
    assert result.prompt is not None and result.prompt.budget is not None
    assert result.prompt_tokens <= result.prompt.budget
    assert result.prompt_tokens < result.original_tokens
    assert result.original_tokens > 3000
    summary = result.summary()
    assert summary["stages"][0]["name"] == "recency_window"
    assert set(summary["stages"][0]) >= {"name", "tokens_in", "tokens_out", "ms"}
    assert summary["messages"][-1]["content"].startswith("Please do note it.")


def test_yaml_round_trip(tmp_path):
    pipeline = Pipeline(
        [RecencyWindow(max_turns=6, start_on_user=False)],
        Budget(
            max_prompt_tokens=1800,
            context_window=8192,
            reserve_answer_tokens=100,
            section_caps={"history": 400},
        ),
        name="roundtrip",
        render="text",
    )
    path = tmp_path / "p.yaml"
    text = pipeline.to_yaml(path)
    loaded = Pipeline.from_yaml(path)
    assert loaded.to_dict() == pipeline.to_dict()
    assert loaded.to_yaml() == text
    assert loaded.stages == pipeline.stages
    request = support_request()
    assert loaded.run(request).prompt == pipeline.run(request).prompt


def test_serialization_is_the_config_schema():
    """``to_dict`` is a dumped ``PipelineConfig``: every setting, each non-default here."""
    pipeline = Pipeline(
        [RecencyWindow(max_turns=3)],
        Budget(max_prompt_tokens=900, context_window=2048, reserve_answer_tokens=64),
        name="schema",
        render="text",
        documents_position="query",
    )
    data = pipeline.to_dict()
    assert set(data) == set(PipelineConfig.model_fields)
    assert PipelineConfig.model_validate(data).model_dump(mode="json") == data
    loaded = Pipeline.from_dict(yaml.safe_load(yaml.safe_dump(data)))
    assert loaded.to_dict() == data
    assert (loaded.name, loaded.render, loaded.documents_position) == ("schema", "text", "query")
    assert loaded.budget == pipeline.budget
    assert loaded.stages == pipeline.stages


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        ("budgte:\n  max_prompt_tokens: 10\n", "budgte", "budget"),
        ("budget:\n  max_prompt_tokns: 10\n", "budget.max_prompt_tokns", "max_prompt_tokens"),
        (
            "stages:\n  - type: recency_window\n    init_parameters:\n      max_tokns: 5\n",
            "stages[0].init_parameters.max_tokns",
            "max_tokens",
        ),
        (
            "stages:\n  - type: recency_window\n    init_parameters:\n      max_turns: many\n",
            "stages[0].init_parameters.max_turns",
            "integer",
        ),
        ("stages:\n  - type: recency_windw\n", "stages[0].type", "recency_window"),
        (
            "stages:\n  - type: recency_window\n    params: {}\n",
            "stages[0].params",
            "expected one of: init_parameters, type",
        ),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message
    assert info.value.key == key
    if hint:
        assert hint in message


@pytest.mark.parametrize("parameters", ["max_turns: -1", "max_tokns: 5", "self: 3"])
def test_a_bad_stage_parameter_names_the_stage_once(tmp_path, parameters):
    text = f"stages:\n  - type: recency_window\n    init_parameters:\n      {parameters}\n"
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(write(tmp_path, text))
    assert str(info.value).count("stage 'recency_window':") == 1, str(info.value)


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        Pipeline.from_yaml(write(tmp_path, "stages: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        Pipeline.from_yaml(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        Pipeline.from_yaml(tmp_path / "missing.yaml")


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        Pipeline.from_yaml(path)


@register_stage("test_answering_stage")
class AnsweringStage(Stage):
    answer: str = "cached"

    def transform(self, context, counter):
        return Transformed(context.model_copy(update={"answer": self.answer}), {"hits": 1})


def test_a_stage_that_answers_stops_the_pipeline():
    pipeline = Pipeline.from_dict(
        {"stages": [{"type": "test_answering_stage"}, {"type": "recency_window"}]}
    )
    result = pipeline.run(support_request())
    assert result.answer == "cached"
    assert result.prompt is None
    assert [r.name for r in result.reports] == ["test_answering_stage"]
    assert "test_answering_stage" in available_stages()


def test_run_messages_takes_messages_as_openai_returns_them():
    """An assistant message fed back as the OpenAI SDK gives it (``refusal``,
    ``annotations``) used to be refused by pydantic's own error."""
    result = Pipeline().run_messages(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
            {"role": "user", "content": "Bye"},
        ]
    )
    assert result.prompt is not None
    assert [m["content"] for m in result.prompt.messages] == ["Hi", "Hello!", "Bye"]


def test_run_messages_refuses_an_invalid_request_as_a_usage_error():
    """The caller's mistake is a ``ConfigError`` naming the message, not a bare
    ``ValidationError`` outside the exception tree."""
    unanswered = {
        "role": "assistant",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}],
    }
    with pytest.raises(ConfigError, match=r"messages\[1\]"):
        Pipeline().run_messages([{"role": "user", "content": "Hi"}, unanswered])


def test_run_messages_refuses_messages_with_no_user_message():
    """An assistant message alone gave a prompt of no messages, and no error."""
    with pytest.raises(ConfigError, match="needs a user message") as raised:
        Pipeline([RecencyWindow(max_turns=4)]).run_messages(
            [{"role": "assistant", "content": "Hello, how can I help?"}]
        )
    assert raised.value.key == "messages"


@pytest.mark.parametrize(
    ("request_", "kind"),
    [
        ([{"role": "user", "content": "Hi"}], "list"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "dict"),
    ],
    ids=["message list", "request body"],
)
def test_run_refuses_what_is_not_a_request_with_the_call_that_runs_it(request_, kind):
    """A message list or a request body passed to ``run`` failed with
    ``AttributeError: 'list' object has no attribute 'system_prompt'``."""
    with pytest.raises(UsageError) as raised:
        Pipeline([RecencyWindow(max_turns=2)]).run(request_)
    assert str(raised.value).startswith(
        f"Pipeline.run takes a ChatRequest or a Context, not {kind}: "
        "pipeline.run_messages(messages) runs on OpenAI message dicts"
    )


def test_the_call_named_for_a_request_body_refuses_a_bad_one_with_a_config_error():
    """It named ``ChatRequest.model_validate(body)``, which raises pydantic's
    ``ValidationError``, not the ``ConfigError`` the SDK promises for a bad request."""
    body = {"messages": [{"role": "user", "contnet": "Hi"}], "model": "any"}
    with pytest.raises(UsageError) as raised:
        Pipeline([RecencyWindow(max_turns=2)]).run(body)  # type: ignore[arg-type]
    assert "pipeline.run(ChatRequest.from_dict(body)) on a request body" in str(raised.value)
    with pytest.raises(ConfigError) as refused:
        ChatRequest.from_dict(body)
    assert refused.value.key == "messages[0].contnet"
    good = ChatRequest.from_dict({**body, "messages": [{"role": "user", "content": "Hi"}]})
    assert good.messages[0].content == "Hi" and good.model_extra == {"model": "any"}


def test_a_budget_that_is_not_a_budget_is_refused_when_the_pipeline_is_built():
    """``Pipeline(stages, 1500)`` was taken, then the first run failed with
    ``AttributeError: 'int' object has no attribute 'section_caps'``."""
    with pytest.raises(UsageError) as raised:
        Pipeline([RecencyWindow(max_turns=2)], 1500)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "budget is 1500, not a Budget: give Budget(max_prompt_tokens=...), or None for no limit"
    )


def test_run_messages_refuses_an_audio_part_rather_than_drop_it():
    """``run_messages`` sent on a prompt without the audio, and said nothing."""
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    spoken = {"role": "user", "content": [{"type": "text", "text": "Transcribe:"}, audio]}
    with pytest.raises(ConfigError, match=r"messages\[0\]\.content.*'input_audio'"):
        Pipeline().run_messages([spoken])


def test_a_failing_stage_is_named_on_its_exception():
    class Broken(Stage):
        type_name: ClassVar[str] = "broken_for_test"

        def transform(self, context: Context, counter: TokenCounter) -> Transformed:
            raise RuntimeError("tensor shapes do not match")

    pipeline = Pipeline([RecencyWindow(max_turns=2), Broken()], name="support")
    with pytest.raises(RuntimeError, match="tensor shapes") as raised:
        pipeline.run(Context(query=Message(role="user", content="Hi?")))
    assert raised.value.__notes__ == ["raised by stages[1] (broken_for_test) of 'support'"]


def test_arun_runs_the_stages_without_blocking_the_event_loop():
    """The stage waits for a callback the loop runs next: a run on the loop held it up."""
    loop_ran = threading.Event()

    class WaitsForTheLoop(Stage):
        type_name: ClassVar[str] = "waits_for_the_loop_for_test"

        def transform(self, context: Context, counter: TokenCounter) -> Transformed:
            if not loop_ran.wait(timeout=5):
                raise TimeoutError("the event loop ran nothing while the pipeline ran")
            return Transformed(context)

    pipeline = Pipeline([WaitsForTheLoop(), RecencyWindow(max_turns=2)])
    request = ChatRequest.from_openai([{"role": "user", "content": "Hi?"}])

    async def run() -> list[str]:
        asyncio.get_running_loop().call_soon(loop_ran.set)
        result = await pipeline.arun(request)
        assert result.prompt is not None
        return [report.name for report in result.reports]

    assert asyncio.run(run()) == ["waits_for_the_loop_for_test", "recency_window"]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [RecencyWindow(max_turns=2), RecencyWindow],
            "stages[1] is the class RecencyWindow, not a stage: give an instance, "
            "RecencyWindow(...)",
        ),
        (
            RecencyWindow(max_turns=2),
            "stages must be a list of stages: Pipeline([RecencyWindow(...)])",
        ),
        ([lambda context: context], "stages[0] is <function <lambda> at"),
    ],
    ids=["class", "one stage", "function"],
)
def test_what_is_not_a_stage_is_refused_when_the_pipeline_is_built(stages, message):
    """It used to fail at the first run, in a ``TypeError`` or ``AttributeError``
    from ``warm_up`` naming neither the stage nor the fix."""
    with pytest.raises(UsageError) as raised:
        Pipeline(stages)
    assert str(raised.value).startswith(message)
