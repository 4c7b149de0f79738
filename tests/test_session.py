"""The chat-session API: its logic over the scripted backend, end to end over the engine."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import PrivateAttr

from ctxproto import Budget, ConfigError, Context, Message, Pipeline, RecencyWindow, Stage
from ctxproto.documents import Document
from ctxproto.errors import StoreError
from ctxproto.runtime import GenerationParams, ScriptedBackend
from ctxproto.session import ChatSession, TurnResult
from ctxproto.stages import Transformed
from ctxproto.stores.session_state import SessionStateStore, open_session_store
from ctxproto.tokens import TokenCounter

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


@pytest.mark.models
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
    # The second turn's prompt starts with the first turn's prompt and answer,
    # token for token: the history renders the answer as the model generated it,
    # so every token the engine cached (all but the last one it generated) hits.
    assert first.prompt is not None
    first_prompt_ids = backend.engine.encode_chat(first.prompt.messages)
    generated = len(first_prompt_ids) + first.report.output_tokens
    assert second.report.cached_prefix_tokens == generated - 1
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


@pytest.mark.models
def test_repeated_question_is_answered_from_the_semantic_cache(tmp_path):
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    pipeline = Pipeline(
        [SemanticCacheLookup(path=str(tmp_path / "answers"), scope="query")],
        Budget(max_prompt_tokens=1024),
    )
    backend = ScriptedBackend(["Hold the button for 10 s.", "   ", "Unplug it twice."])
    session = ChatSession(pipeline, backend, system_prompt=SYSTEM)
    miss = session.ask("How do I factory-reset a Lumen bulb?")
    hit = session.ask("How do I factory-reset a Lumen bulb?")
    assert not miss.report.semantic_cache_hit
    assert hit.report.semantic_cache_hit
    assert hit.answer == miss.answer == "Hold the button for 10 s."
    assert hit.report.prompt_tokens == 0 and hit.prompt is None
    assert backend.calls == 1  # the hit never reached the model
    # An empty answer is not cached: the same question goes to the model again.
    assert session.ask("How do I set up a Lumen plug?").answer == "   "
    again = session.ask("How do I set up a Lumen plug?")
    assert not again.report.semantic_cache_hit and again.answer == "Unplug it twice."
    assert backend.calls == 3


@pytest.mark.models
def test_an_answer_cut_at_max_new_tokens_is_served_only_under_that_cap(tmp_path):
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    def session(max_new_tokens: int, backend: ScriptedBackend) -> ChatSession:
        cache = SemanticCacheLookup(path=str(tmp_path / "answers"), scope="query")
        return ChatSession(
            Pipeline([cache], Budget(max_prompt_tokens=1024)),
            backend,
            generation=GenerationParams(max_new_tokens=max_new_tokens),
        )

    question = "Which fuse does the T9 heater take?"
    reply = "It takes a 13 A fuse, the one in the plug."
    short = ScriptedBackend([reply, reply])
    cut = session(3, short).ask(question)
    assert cut.answer == "It takes a" and not cut.report.semantic_cache_hit
    again = session(3, short).ask(question)  # another conversation, the same cap
    assert again.report.semantic_cache_hit and again.answer == "It takes a"
    longer = ScriptedBackend([reply])
    whole = session(300, longer).ask(question)
    assert not whole.report.semantic_cache_hit and whole.answer == reply
    assert short.calls == 1 and longer.calls == 1


@pytest.mark.models
def test_an_answer_cut_short_of_its_cap_is_not_filed(tmp_path):
    """ "length" also ends an answer at the model's window: only the cap itself counts."""
    from ctxproto.stages.semantic_cache import SemanticCacheLookup

    pipeline = Pipeline([SemanticCacheLookup(path=str(tmp_path / "a"), scope="query")])
    context = Context(query=Message(role="user", content="Which fuse?"), answer_limit=32)

    def filed(output_tokens: int) -> bool:
        pipeline.after_answer(pipeline.run(context), "It takes a", "length", output_tokens)
        return pipeline.run(context).answer is not None

    assert not filed(20)  # the window ran out after 20 of the 32 tokens allowed
    assert filed(32)


class FailingStore(Stage):
    """A cache whose store is down when it files an answer."""

    type_name: ClassVar[str] = "failing_store"

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        return Transformed(context)

    def after_answer(self, context: Context, answer: str) -> None:
        raise StoreError("redis://cache:6379 failed: connection refused")


def test_a_cache_that_cannot_file_the_answer_loses_neither_answer_nor_turn(tmp_path, caplog):
    store = open_session_store(str(tmp_path / "history"), namespace="history")
    backend = ScriptedBackend(["Hold the button for 10 s."])
    session = ChatSession(Pipeline([FailingStore()]), backend, history_store=store)
    with caplog.at_level("WARNING", logger="ctxproto.pipeline"):
        turn = session.ask("How do I reset the bulb?")
    assert turn.answer == "Hold the button for 10 s."
    assert [m.content for m in session.history] == ["How do I reset the bulb?", turn.answer]
    assert "failing_store did not keep the answer" in caplog.text
    reopened = ChatSession(Pipeline(), backend, session_id=session.session_id, history_store=store)
    assert len(reopened.history) == 2


class AnswerRecorder(Stage):
    """A cache-like stage from outside ctxproto: it keeps every answer it is given."""

    type_name: ClassVar[str] = "answer_recorder"

    _answers: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @property
    def answers(self) -> list[tuple[str, str]]:
        return self._answers

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        return Transformed(context)

    def after_answer(self, context: Context, answer: str) -> None:
        self._answers.append((context.query_text, answer))


class CannedAnswer(Stage):
    """Answers one question itself, as a cache hit does."""

    type_name: ClassVar[str] = "canned_answer"

    question: str

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        if context.query_text != self.question:
            return Transformed(context)
        return Transformed(context.model_copy(update={"answer": "canned"}))


def test_every_stage_is_given_the_models_answer():
    recorder = AnswerRecorder()
    pipeline = Pipeline([recorder, CannedAnswer(question="Hours?")], name="hooks")
    backend = ScriptedBackend(["First answer.", "Second answer."])
    session = ChatSession(pipeline, backend, system_prompt=SYSTEM)

    session.ask("Is the Hub 2 waterproof?")
    assert "".join(session.stream("Does it need Wi-Fi?")) == "Second answer."
    assert recorder.answers == [
        ("Is the Hub 2 waterproof?", "First answer."),
        ("Does it need Wi-Fi?", "Second answer."),
    ]
    # A stage answered: the model was not asked, so there is no answer to hand on.
    assert session.ask("Hours?").answer == "canned"
    assert len(recorder.answers) == 2 and backend.calls == 2


def test_scripted_turns_report_the_backends_figures(tmp_path):
    store = SessionStateStore(tmp_path / "history")
    backend = ScriptedBackend(["one two three four", "five six"])
    params = GenerationParams(max_new_tokens=3)
    session = ChatSession(
        window_pipeline(),
        backend,
        system_prompt=SYSTEM,
        session_id="s1",
        generation=params,
        history_store=store,
    )
    first = session.ask("First question?")
    second = session.ask("Second question?")
    assert first.answer == "one two three"  # cut at max_new_tokens
    assert backend.requests[0].params == params
    assert backend.requests[1].messages[-2:] == [
        {"role": "assistant", "content": "one two three"},
        {"role": "user", "content": "Second question?"},
    ]
    assert first.report.output_tokens == 3
    assert second.report.cached_prefix_tokens > 0
    assert ChatSession(window_pipeline(), backend, session_id="s1", history_store=store).history
    assert (
        ChatSession(
            window_pipeline(), backend, session_id="s1", tenant_id="acme", history_store=store
        ).history
        == []
    )


def test_leaving_a_stream_early_cancels_it_and_keeps_no_half_turn():
    backend = ScriptedBackend(["a long answer that nobody reads"])
    session = ChatSession(window_pipeline(), backend, system_prompt=SYSTEM)
    deltas = session.stream("Tell me everything.")
    assert next(deltas) == "a "
    deltas.close()
    assert backend.cancelled == 1
    assert session.history == [] and session.last_turn is None


@pytest.mark.models
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


@pytest.mark.models
def test_chatbot_yaml_loads_with_its_backend_section(tmp_path, monkeypatch):
    from ctxproto import Document
    from ctxproto.retrieval import KnowledgeBase

    monkeypatch.chdir(tmp_path)
    index = KnowledgeBase(".ctxproto/knowledge-index")  # the retriever needs a store to open
    index.add_documents([Document(id="hub", text="The Hub 2 light is green when online.")])
    index.save()
    backend = ScriptedBackend(["Hello from the script."])
    session = ChatSession.from_yaml(EXAMPLES / "pipelines" / "chatbot.yaml", backend=backend)
    assert [s.type_name for s in session.pipeline.stages] == [
        "retriever",
        "relevance_filter",
        "semantic_cache",
        "summarizer",
    ]
    assert session.system_prompt.startswith("You are Nova")
    assert session.generation is not None
    assert session.generation.max_new_tokens == 128
    assert session.backend is backend


def test_bad_session_settings_name_the_key(tmp_path):
    config = tmp_path / "bot.yaml"
    config.write_text("budget:\n  max_prompt_tokens: 100\nbackend:\n  type: local\n  devise: cpu\n")
    with pytest.raises(ConfigError) as info:
        ChatSession.from_yaml(config)
    assert "backend.devise" in str(info.value) and str(config) in str(info.value)


def test_a_system_prompt_written_and_read_from_a_file_is_refused(tmp_path):
    (tmp_path / "prompt.txt").write_text("From the file.")
    config = tmp_path / "bot.yaml"
    config.write_text("system_prompt: Written.\nsystem_prompt_file: prompt.txt\n")
    with pytest.raises(ConfigError) as info:
        ChatSession.from_yaml(config, backend=ScriptedBackend(["unused"]))
    assert info.value.key == "system_prompt_file" and info.value.file == str(config)
    assert "not both" in str(info.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"\xff\xfe a prompt", "is not UTF-8 text"), (None, "cannot read file")],
)
def test_an_unreadable_system_prompt_file_names_the_config_and_key(tmp_path, content, problem):
    """A prompt file that is not UTF-8 ended ``from_yaml`` in a bare ``UnicodeDecodeError``."""
    prompt = tmp_path / "prompt.txt"
    if content is not None:
        prompt.write_bytes(content)
    config = tmp_path / "bot.yaml"
    config.write_text("system_prompt_file: prompt.txt\n")
    with pytest.raises(ConfigError) as info:
        ChatSession.from_yaml(config, backend=ScriptedBackend(["unused"]))
    assert info.value.key == "system_prompt_file" and info.value.file == str(config)
    assert problem in str(info.value) and str(prompt) in str(info.value)


def test_a_chatbot_config_read_as_a_pipeline_says_how_to_load_it():
    from ctxproto.pipeline import CHATBOT_KEYS
    from ctxproto.session import _SessionSettings

    assert set(CHATBOT_KEYS) == set(_SessionSettings.model_fields)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(EXAMPLES / "pipelines" / "chatbot.yaml")
    assert info.value.key == "backend" and "ChatSession.from_yaml" in str(info.value)


def test_bad_generation_setting_names_file_and_key(tmp_path):
    config = tmp_path / "bot.yaml"
    config.write_text("budget:\n  max_prompt_tokens: 100\ngeneration:\n  max_new_tokens: -3\n")
    with pytest.raises(ConfigError) as info:
        ChatSession.from_yaml(config)
    assert info.value.file == str(config)
    assert info.value.key == "generation.max_new_tokens"


@pytest.mark.models
def test_chatbot_example_prompt_only_grows_between_its_rare_folds(tmp_path):
    """Each turn's prompt starts with the last one's prompt and answer, as a prefix cache needs.

    20 turns of the ``bench chat`` support chat over ``chatbot.yaml``: the
    prompt may change below its end only after a turn whose documents were
    placed with the question (they are not kept in the history) or at a fold
    of the summary. Folding every 3 turns, as this config used to, rewrote it
    5 times; the stated facts must still be in the prompt when asked for.
    """
    from ctxproto.bench.chat_paths import build_chat_pipeline
    from ctxproto.bench.chat_workload import build_workload
    from ctxproto.tokens import get_counter

    pipeline = build_chat_pipeline(tmp_path, EXAMPLES)
    script = build_workload(1, 20, get_counter(), seed=0)[0]

    def answer(messages: list[dict[str, Any]]) -> str:
        # An answer of its own per question: the cache does not file an answer the model
        # already gave in the conversation (a loop), so one reply to everything would be.
        question = " ".join(str(messages[-1]["content"]).split()[-6:])
        return f"Sure, about {question!r}: restart the device, then pair it again in the app."

    session = ChatSession(
        pipeline,
        ScriptedBackend(answer),
        system_prompt=(EXAMPLES / "system_prompt.md").read_text(encoding="utf-8"),
        session_id=script.id,
        generation=GenerationParams(max_new_tokens=32),
    )
    previous: TurnResult | None = None
    rewrites = folds = 0
    for turn in script.turns:
        result = session.ask(turn.text)
        if turn.asks is not None:
            assert result.prompt is None or turn.asks.answer in result.prompt.text
        if result.prompt is None:  # answered by the semantic cache
            continue
        summarizer = next(r for r in result.report.stages if r.name == "summarizer")
        folded = summarizer.counters.get("checkpoints", 0) > 0
        folds += folded
        if previous is not None and previous.prompt is not None:
            extended = result.prompt.text.startswith(previous.prompt.text + previous.answer)
            documents = "## Reference documents" in previous.prompt.messages[-1]["content"]
            rewrites += not extended
            assert extended or documents or folded
        previous = result
    assert folds <= 1
    assert rewrites <= 4


# What the answer to each knowledge question of the support chat must contain.
KNOWLEDGE_ANSWERS = {
    "How do I factory-reset a Lumen bulb?": "off and on five times",
    "What does a solid amber light on the Hub 2 mean?": "no internet",
    "How long is the warranty on the Thermo T3?": "3-year warranty",
    "How many days do I have to return a device?": "within 30 days",
    "Can I use the Plug Mini with a space heater?": "Never use it with space heaters",
    "What does error E4 on the thermostat mean?": "E4: the C-wire is missing",
    "How long does express shipping take?": "Express shipping takes 1 to 2 business days",
    "How many days of clips does the Cam Indoor keep?": "7 days free",
}


@pytest.mark.models
def test_chatbot_example_places_the_answer_it_retrieved_for_each_knowledge_question(tmp_path):
    """``chatbot.yaml`` places half of what it retrieves: never the half without the answer.

    The system prompt of the example states these answers too, so only the placed
    documents are looked at.
    """
    from ctxproto.bench.chat_paths import build_chat_pipeline
    from ctxproto.bench.chat_workload import KB_QUESTIONS
    from ctxproto.messages import Message

    pipeline = build_chat_pipeline(tmp_path, EXAMPLES)
    assert set(KNOWLEDGE_ANSWERS) == {question for question, _ in KB_QUESTIONS}
    for question, answer in KNOWLEDGE_ANSWERS.items():
        result = pipeline.run(Context(query=Message(role="user", content=question)))
        placed = [d.text for d in result.context.documents]
        filtered = next(r for r in result.reports if r.name == "relevance_filter")
        assert any(answer in text for text in placed), (question, placed)
        assert filtered.tokens_out < filtered.tokens_in


def test_the_prefix_cache_keeps_only_what_the_next_turn_repeats(tmp_path):
    """A turn whose documents were placed with its question asks the backend to cache
    the messages before that question only; each of them is sent again next turn."""
    from ctxproto.bench.chat_paths import build_chat_pipeline
    from ctxproto.bench.chat_workload import build_workload
    from ctxproto.tokens import get_counter

    backend = ScriptedBackend(lambda _messages: "Restart the device, then pair it again.")
    session = ChatSession(
        build_chat_pipeline(tmp_path, EXAMPLES),
        backend,
        system_prompt=(EXAMPLES / "system_prompt.md").read_text(encoding="utf-8"),
        generation=GenerationParams(max_new_tokens=32),
    )
    for turn in build_workload(1, 12, get_counter(), seed=0)[0].turns:
        session.ask(turn.text)
    requests = backend.requests
    hinted = [r for r in requests if r.params.cache_messages is not None]
    assert 0 < len(hinted) < len(requests)
    for request in requests:
        keep = request.params.cache_messages
        documents = "## Reference documents" in request.messages[-1]["content"]
        assert keep == (len(request.messages) - 1 if documents else None)
    for request, following in itertools.pairwise(requests):
        keep = request.params.cache_messages
        folded = following.messages[0] != request.messages[0]
        if keep is not None and not folded:
            assert following.messages[:keep] == request.messages[:keep]


class PlacedManual(Stage):
    """Places one manual page with every question, as a retriever does."""

    type_name: ClassVar[str] = "placed_manual"

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        page = Document(id="manual", text="Hold the reset button for 10 seconds.")
        return Transformed(context.model_copy(update={"documents": [page]}))


@pytest.mark.parametrize(
    ("stages", "generation", "expected"),
    [
        ([PlacedManual()], None, 1),
        ([PlacedManual()], GenerationParams(max_new_tokens=8), 1),
        ([PlacedManual()], GenerationParams(cache_messages=0), 0),  # the caller's own
        ([], None, None),  # the question as written: everything may stay
    ],
)
def test_cache_messages_is_set_only_when_the_question_was_changed(stages, generation, expected):
    backend = ScriptedBackend(["Hold it for 10 seconds."])
    pipeline = Pipeline(stages, documents_position="query")
    session = ChatSession(pipeline, backend, system_prompt="Be brief.", generation=generation)
    session.ask("How do I reset it?")
    assert backend.requests[-1].params.cache_messages == expected
    if generation is not None:
        assert backend.requests[-1].params.max_new_tokens == generation.max_new_tokens


@pytest.mark.models
def test_backend_section_switches_speculation(lm):
    from ctxproto.session import BackendConfig, build_backend

    for speculate in (True, False):
        with build_backend(BackendConfig(speculate=speculate)) as backend:
            assert backend.engine.speculate is speculate  # type: ignore[attr-defined]


@pytest.mark.models
def test_backend_section_picks_the_eviction_order(lm):
    from ctxproto.session import BackendConfig, build_backend

    for eviction in ("lru", "reuse"):
        config = BackendConfig.model_validate({"eviction": eviction})
        with build_backend(config) as backend:
            assert backend.engine.cache.eviction == eviction  # type: ignore[attr-defined]


def test_an_empty_question_is_refused_and_no_turn_is_kept():
    backend = ScriptedBackend(["An answer to nothing."])
    session = ChatSession(Pipeline([RecencyWindow(max_turns=4)]), backend, system_prompt=SYSTEM)
    for question in ("", "  \n"):
        with pytest.raises(ConfigError, match="question"):
            session.ask(question)
        with pytest.raises(ConfigError, match="question"):
            "".join(session.stream(question))
    assert backend.calls == 0 and session.history == []


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ({"version": 2, "history": []}, "no chat history of version 1"),
        ({"version": 1, "history": [{"role": "wizard", "content": "hi"}]}, "invalid message"),
    ],
)
def test_a_stored_history_that_is_not_one_is_a_store_error_naming_the_session(
    tmp_path, state, says
):
    store = SessionStateStore(tmp_path, namespace="history")
    store.put("default", "s1", state)
    with pytest.raises(StoreError, match=says) as raised:
        ChatSession(
            Pipeline([RecencyWindow(max_turns=4)]),
            ScriptedBackend(["unused"]),
            session_id="s1",
            history_store=store,
        )
    assert "session 's1'" in str(raised.value) and str(tmp_path) in str(raised.value)


def test_a_question_that_is_not_text_is_refused_naming_it():
    """A message dict or None failed with "AttributeError: ... no attribute 'strip'"."""
    backend = ScriptedBackend(["unused"])
    session = ChatSession(Pipeline([RecencyWindow(max_turns=4)]), backend)
    for question in ({"role": "user", "content": "hi"}, None):
        with pytest.raises(ConfigError, match="the user's text alone") as raised:
            session.ask(question)  # type: ignore[arg-type]
        assert raised.value.key == "question"
        with pytest.raises(ConfigError, match="the user's text alone"):
            "".join(session.stream(question))  # type: ignore[arg-type]
    assert backend.calls == 0 and session.history == []


def test_documents_without_an_id_are_refused_naming_the_document():
    """A bare string reached the caller as pydantic's ValidationError for ``Context``;
    a dict with an id and text is a document, as in a request body."""
    backend = ScriptedBackend(["From the manual."])
    session = ChatSession(Pipeline([RecencyWindow(max_turns=4)]), backend)
    with pytest.raises(ConfigError, match=r"Document\(id=\.\.\., text=\.\.\.\)") as raised:
        session.ask("hi", documents=["the manual"])  # type: ignore[list-item]
    assert raised.value.key == "documents[0]"
    assert backend.calls == 0 and session.history == []
    turn = session.ask("hi", documents=[{"id": "manual", "text": "the manual"}])  # type: ignore[list-item]
    assert turn.answer == "From the manual."
    assert any("the manual" in m["content"] for m in backend.requests[0].messages)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (lambda p, b: (b, p), r"pipeline first: ChatSession\(pipeline, backend\)"),
        (lambda p, b: (p, "local"), r"backend is 'local', not a Backend: .*build_backend"),
        (lambda p, b: ("chat.yaml", b), r"not a Pipeline: .*Pipeline.from_yaml\(path\)"),
    ],
    ids=["swapped", "backend-named", "pipeline-path"],
)
def test_a_pipeline_or_backend_of_the_wrong_kind_is_refused_saying_what_to_pass(arguments, says):
    """Each failed as an AttributeError ('warm_up', 'generate') naming neither argument."""
    from ctxproto.errors import UsageError

    pipeline, backend = arguments(Pipeline([RecencyWindow(max_turns=4)]), ScriptedBackend([]))
    with pytest.raises(UsageError, match=says):
        ChatSession(pipeline, backend)


def test_generation_given_as_a_dict_is_validated_as_generation_params():
    """A dict failed at the first turn with an AttributeError; a chatbot config's
    ``generation:`` section takes the same keys, so Python takes them too."""
    backend = ScriptedBackend(["one two three four five six seven"])
    pipeline = Pipeline([RecencyWindow(max_turns=4)])
    session = ChatSession(pipeline, backend, generation={"max_new_tokens": 5})
    assert session.generation == GenerationParams(max_new_tokens=5)
    turn = session.ask("Count to seven.")
    assert turn.answer == "one two three four five" and turn.report.output_tokens == 5
    with pytest.raises(ConfigError) as raised:
        ChatSession(pipeline, backend, generation={"max_tokens": 5})
    assert raised.value.key == "generation.max_tokens"
    with pytest.raises(ConfigError, match="GenerationParams") as raised:
        ChatSession(pipeline, backend, generation=5)  # type: ignore[arg-type]
    assert raised.value.key == "generation"
    with pytest.raises(ConfigError, match="GenerationParams") as raised:  # a TypeError
        ChatSession(pipeline, backend, generation={1: 2})  # type: ignore[dict-item]
    assert raised.value.key == "generation"


def test_a_system_prompt_that_is_not_text_is_refused_when_the_session_is_built():
    """A list reached the caller at the first turn, as pydantic's ValidationError."""
    with pytest.raises(ConfigError, match=r"is \['x'\], not text") as raised:
        ChatSession(
            Pipeline([RecencyWindow(max_turns=4)]),
            ScriptedBackend([]),
            system_prompt=["x"],  # type: ignore[arg-type]
        )
    assert raised.value.key == "system_prompt"


@pytest.mark.parametrize(
    ("given", "key"),
    [({"session_id": 5}, "session_id"), ({"tenant_id": None}, "tenant_id")],
    ids=["session-id-int", "tenant-id-none"],
)
def test_a_session_or_tenant_id_that_is_not_text_is_refused_when_the_session_is_built(given, key):
    """Either reached the first turn, where the error was blamed on the documents:
    "Input should be a valid string, got 5 (expected Document(id=..., text=...) ...)"."""
    with pytest.raises(ConfigError, match="not text") as raised:
        ChatSession(Pipeline([RecencyWindow(max_turns=4)]), ScriptedBackend([]), **given)
    assert raised.value.key == key


def test_a_turn_error_outside_the_documents_is_not_blamed_on_them():
    """The documents' error path named whichever field failed as a document."""
    backend = ScriptedBackend(["unused"])
    session = ChatSession(Pipeline([RecencyWindow(max_turns=4)]), backend)
    session.tenant_id = 5  # type: ignore[assignment]  # set after the checks in __init__
    with pytest.raises(ConfigError) as raised:
        session.ask("hi", documents=[Document(id="manual", text="the manual")])
    assert raised.value.key == "tenant_id"
    assert "Document(" not in str(raised.value)
    assert backend.calls == 0


def test_an_infinite_backend_timeout_is_refused_when_the_config_loads(tmp_path):
    """It loaded, and the first turn ended in an OverflowError from the socket."""
    config = tmp_path / "bot.yaml"
    config.write_text(
        "backend:\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n  timeout: .inf\n"
    )
    with pytest.raises(ConfigError, match="finite number") as info:
        ChatSession.from_yaml(config)
    assert info.value.key == "backend.timeout" and info.value.file == str(config)
