"""The chat-session API end to end: real engine, real stores, short prompts."""

import asyncio
from pathlib import Path

import pytest

from ctxproto import Budget, ConfigError, Pipeline, RecencyWindow
from ctxproto.session import ChatSession
from ctxproto.stores.session_state import SessionStateStore

pytestmark = pytest.mark.models

SYSTEM = "You are a helpful assistant for Lumen Home smart devices. Answer briefly."
EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def backend():
    from ctxproto.runtime import Engine, LocalBackend

    engine = Engine()
    with LocalBackend(engine) as local:
        yield local
    engine.close()


@pytest.fixture
def params():
    from ctxproto.runtime import GenerationParams

    return GenerationParams(max_new_tokens=6)


def window_pipeline() -> Pipeline:
    return Pipeline([RecencyWindow(max_turns=20)], Budget(max_prompt_tokens=1024))


def test_turns_report_savings_and_reuse_the_prefix(backend, params, tmp_path):
    store = SessionStateStore(tmp_path / "history")
    session = ChatSession(
        window_pipeline(),
        backend,
        system_prompt=SYSTEM,
        session_id="s1",
        generation=params,
        history_store=store,
    )
    first = session.ask("My order number is LH-77. What colour is the Hub 2 light when online?")
    second = session.ask("And when it has no internet?")
    assert first.answer and second.answer
    assert second.report.turn == 2
    assert second.report.prompt_tokens > first.report.prompt_tokens
    # The second turn's prompt starts with the first turn's prompt and answer.
    assert second.report.cached_prefix_tokens >= first.report.prompt_tokens
    assert second.report.ttft_ms <= second.report.latency_ms
    assert [r.name for r in second.report.stages] == ["recency_window"]

    resumed = ChatSession(
        window_pipeline(), backend, session_id="s1", generation=params, history_store=store
    )
    assert [m.content for m in resumed.history][:1] == [
        "My order number is LH-77. What colour is the Hub 2 light when online?"
    ]
    other_tenant = ChatSession(
        window_pipeline(),
        backend,
        session_id="s1",
        tenant_id="acme",
        generation=params,
        history_store=store,
    )
    assert other_tenant.history == []


def test_repeated_question_is_answered_from_the_semantic_cache(backend, params, tmp_path):
    from ctxproto.stages import SemanticCacheLookup

    pipeline = Pipeline(
        [SemanticCacheLookup(path=str(tmp_path / "answers"), scope="query")],
        Budget(max_prompt_tokens=1024),
    )
    session = ChatSession(pipeline, backend, system_prompt=SYSTEM, generation=params)
    miss = session.ask("How do I factory-reset a Lumen bulb?")
    computed_before = backend.engine.stats().computed_tokens
    hit = session.ask("How do I factory-reset a Lumen bulb?")
    assert not miss.report.semantic_cache_hit
    assert hit.report.semantic_cache_hit
    assert hit.answer == miss.answer
    assert hit.report.prompt_tokens == 0 and hit.prompt is None
    assert backend.engine.stats().computed_tokens == computed_before
    other_question = session.ask("How do I factory-reset a Lumen plug?")
    assert not other_question.report.semantic_cache_hit


def test_stream_and_async(backend, params):
    session = ChatSession(window_pipeline(), backend, system_prompt=SYSTEM, generation=params)
    deltas = list(session.stream("Name one Lumen device."))
    assert session.last_turn is not None
    assert "".join(deltas) == session.last_turn.answer
    # A streamed turn reports the engine's metrics, like a blocking one: the second
    # turn starts with the first turn's prompt and answer, which the cache holds.
    again = list(session.stream("Name one more, please."))
    report = session.last_turn.report
    assert "".join(again) == session.last_turn.answer
    assert 0 < report.cached_prefix_tokens < report.prompt_tokens
    assert 1 <= report.output_tokens <= params.max_new_tokens  # the model's own tokens
    result = asyncio.run(session.aask("Name another one."))
    assert result.report.turn == 3
    assert len(session.history) == 6


def test_chatbot_yaml_loads_with_its_backend_section(tmp_path, monkeypatch, backend):
    monkeypatch.chdir(tmp_path)
    session = ChatSession.from_yaml(EXAMPLES / "pipelines" / "chatbot.yaml", backend=backend)
    assert [s.type_name for s in session.pipeline.stages] == [
        "retriever",
        "semantic_cache",
        "summarizer",
    ]
    assert session.system_prompt.startswith("You are Nova")
    assert session.generation.max_new_tokens == 128


def test_bad_session_settings_name_the_key(tmp_path):
    config = tmp_path / "bot.yaml"
    config.write_text("budget:\n  max_prompt_tokens: 100\nbackend:\n  type: local\n  devise: cpu\n")
    with pytest.raises(ConfigError) as info:
        ChatSession.from_yaml(config)
    assert "backend.devise" in str(info.value) and str(config) in str(info.value)


def test_bad_generation_setting_names_file_and_key(tmp_path):
    config = tmp_path / "bot.yaml"
    config.write_text("budget:\n  max_prompt_tokens: 100\ngeneration:\n  max_new_tokens: -3\n")
    with pytest.raises(ConfigError) as info:
        ChatSession.from_yaml(config)
    assert info.value.file == str(config)
    assert info.value.key == "generation.max_new_tokens"
