import asyncio
import math
import threading
import time

import pytest

from ctxproto.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
)
from ctxproto.models.fused_decoder import fused_rows
from ctxproto.runtime import Completion, Engine, GenerationParams, LocalBackend
from ctxproto.runtime import engine as engine_module
from ctxproto.runtime.radix_cache import common_prefix_length
from tests.conftest import needs_avx512, record_unfused_rows
from tests.runtime.conftest import SYSTEM, chat

pytestmark = pytest.mark.models

GREEDY = GenerationParams(max_new_tokens=12)
QUESTIONS = [
    "How long is the warranty on the R7 router?",
    "How long do I have to return a product?",
    "Which products does Acme sell?",
    "Hi!",
]


def run(
    engine: Engine, messages: list[dict[str, str]], params: GenerationParams = GREEDY
) -> tuple[list[int], Completion]:
    handle = engine.submit(engine.encode_chat(messages), params)
    completion = handle.result()
    return handle.token_ids, completion


def test_greedy_with_cache_equals_without_token_for_token(engine, plain_engine):
    for question in QUESTIONS[:2]:
        cached_ids, cached = run(engine, chat(question))
        plain_ids, plain = run(plain_engine, chat(question))
        assert cached_ids == plain_ids
        assert cached.text == plain.text
    # The second question shares the system prompt but diverges inside a cached span:
    # it was split, and only the rest computed.
    assert 0 < cached.metrics.cached_tokens < cached.metrics.prompt_tokens
    assert plain.metrics.cached_tokens == 0


def test_same_prompt_again_reuses_all_but_the_last_token(engine):
    messages = chat("What does the S1 switch do?")
    first_ids, _ = run(engine, messages)
    again_ids, again = run(engine, messages)
    assert again_ids == first_ids
    assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1


def test_equal_after_evictions_and_cap_holds(lm, plain_engine):
    prompts = [
        chat(q, system=f"Rule {i}: answer in one sentence.") for i, q in enumerate(QUESTIONS)
    ]
    token_bytes = 30 * 2 * 3 * 64 * 4  # SmolLM2-135M in float32
    cap = 60 * token_bytes  # about one prompt and its answer
    with Engine(cache_bytes=cap) as small:
        results = [run(small, p) for p in [*prompts, prompts[0], prompts[1]]]
        stats = small.stats()
    assert stats.evictions > 0
    assert stats.bytes_in_use <= cap
    for messages, (ids, _) in zip([*prompts, prompts[0], prompts[1]], results, strict=True):
        assert ids == run(plain_engine, messages)[0]


def test_equal_under_batching(engine, plain_engine):
    params = [GenerationParams(max_new_tokens=n) for n in (4, 12, 8, 12)]
    handles = [
        engine.submit(engine.encode_chat(chat(q)), p)
        for q, p in zip(QUESTIONS, params, strict=True)
    ]
    for handle in handles:
        handle.result()
    for question, p, handle in zip(QUESTIONS, params, handles, strict=True):
        assert handle.token_ids == run(plain_engine, chat(question), p)[0]


def test_requests_admitted_together_into_an_empty_batch_equal_alone(engine, plain_engine):
    """The first request to join an empty batch lends it its cache object: its length was
    read after the merge, as the padded width, so a shorter first joiner decoded unmasked
    at wrong positions, and its answer was garbage."""
    short, long = chat("Hi!", system="Be brief."), chat(QUESTIONS[0])
    assert len(engine.encode_chat(short)) < len(engine.encode_chat(long))
    with engine._wake:  # both queued before the scheduler's next round: admitted together
        handles = [
            engine.submit(engine.encode_chat(messages), GREEDY, cache_namespace="together")
            for messages in (short, long)
        ]
    for messages, handle in zip((short, long), handles, strict=True):
        handle.result(timeout=120)
        assert handle.token_ids == run(plain_engine, messages)[0]


def test_next_turn_reuses_the_previous_answer(engine):
    first_turn = chat("Tell me about the M2 mesh extender.")
    _, answer = run(engine, first_turn)
    prompt_one = len(engine.encode_chat(first_turn))
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": "And its price?"},
    ]
    _, follow_up = run(engine, second_turn)
    assert follow_up.metrics.cached_tokens > prompt_one


def test_cache_messages_keeps_only_the_messages_sent_again(engine, plain_engine):
    """Documents placed with a question are not cached for a next turn that drops them."""
    messages = [
        {"role": "system", "content": "Rule: answer from the reference documents only."},
        {
            "role": "user",
            "content": "## Reference documents\n[kb] The R7 router has four ports.\n\n"
            "## Question\nHow many ports does the R7 have?",
        },
    ]
    backend = LocalBackend(engine, cache_namespace="cache-messages")
    hinted = backend.generate(messages, GenerationParams(max_new_tokens=12, cache_messages=1))
    assert hinted.text == plain_engine.generate(messages, GREEDY).text
    # What stayed is what a next turn without the documents repeats: the system message.
    next_turn = [messages[0], {"role": "user", "content": "How many ports does the R7 have?"}]
    repeated = common_prefix_length(engine.encode_chat(next_turn), engine.encode_chat(messages))
    assert repeated < len(engine.encode_chat(messages)) // 2
    again = backend.generate(messages, GREEDY)
    assert again.metrics.cached_tokens == repeated
    assert again.text == hinted.text
    # Without the hint, prompt and answer stay.
    assert (
        backend.generate(messages, GREEDY).metrics.cached_tokens
        == len(engine.encode_chat(messages)) - 1
    )
    with pytest.raises(ConfigError, match="cache_messages"):
        GenerationParams(cache_messages=-1)
    with pytest.raises(ConfigError, match="negative"):
        engine.submit(engine.encode_chat(messages), GREEDY, cache_tokens=-1)


@needs_avx512  # with AVX2 a prefill is one forward through torch's kernels
def test_a_long_prefill_runs_in_pieces_through_the_fused_layers(engine, plain_engine, monkeypatch):
    """A prompt several times longer than the fused layers take is prefilled piece by
    piece through them (docs/runtime.md, "Prefill in pieces"), with or without a
    cached prefix, and answers as the reference engine does."""
    rows = fused_rows(engine.model)
    assert rows is not None and fused_rows(plain_engine.model) == rows
    unfused = record_unfused_rows(engine.model, monkeypatch)

    def notes(first: int) -> str:
        return " ".join(
            f"Ticket {n} was closed on day {n % 28 + 1}." for n in range(first, first + 40)
        )

    long_system = f"{SYSTEM} Past tickets: {notes(0)}"
    computed = []
    for question in ("Which ticket was closed last?", f"New tickets: {notes(100)} Any open?"):
        messages = chat(question, system=long_system)
        ids, completion = run(engine, messages)
        computed.append(completion.metrics.prompt_tokens - completion.metrics.cached_tokens)
        assert ids == run(plain_engine, messages)[0]
    # The first computed all but what an earlier test left cached, the second reused
    # the system prompt and computed its question: each several pieces long.
    assert min(computed) > 3 * rows and completion.metrics.cached_tokens > 3 * rows
    assert unfused == []


def test_stream_deltas_join_to_the_completion(engine):
    messages = chat("Say hello to the customer.")
    deltas = list(engine.stream(messages, GREEDY))
    assert len(deltas) > 1
    assert "".join(deltas) == engine.generate(messages, GREEDY).text


def test_cancel_stops_generation_and_engine_keeps_serving(engine):
    handle = engine.submit(engine.encode_chat(chat("Write a long story.")), GenerationParams())
    stream = handle.deltas()
    next(stream)
    stream.close()  # leaving the stream cancels the request
    completion = handle.result()
    assert completion.finish_reason == "cancelled"
    assert completion.metrics.output_tokens < 256
    assert engine.generate(chat("Hi!"), GenerationParams(max_new_tokens=2)).text


def test_a_stream_closed_or_dropped_before_its_first_delta_cancels(engine):
    """The request is queued when the stream is made: a generator closed before it
    started ran none of its code, so the answer went on to ``max_new_tokens``."""
    long = GenerationParams(max_new_tokens=200, ignore_eos=True)
    handle = engine.submit(engine.encode_chat(chat("Write a long story.")), long)
    handle.deltas().close()
    dropped = engine.submit(engine.encode_chat(chat("Write a long poem.")), long)
    dropped.deltas()  # never read, and garbage at once
    for left in (handle, dropped):
        completion = left.result()
        assert completion.finish_reason == "cancelled"
        assert completion.metrics.output_tokens < 200
    stream = engine.stream(chat("Write a long song."), long)
    stream.close()  # Engine.stream's iterator too
    assert engine.generate(chat("Hi!"), GenerationParams(max_new_tokens=2)).text


def test_a_stream_closed_while_another_thread_reads_it_cancels_and_does_not_raise(engine):
    """A close racing the thread that waits in ``next`` (as the proxy reads deltas in
    a worker thread) raised "generator already executing" to the closer."""
    long = GenerationParams(max_new_tokens=200, ignore_eos=True)
    handle = engine.submit(engine.encode_chat(chat("Write a long story.")), long)
    deltas = handle.deltas()
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.extend(deltas))
    reader.start()
    deadline = time.monotonic() + 60
    while not deltas._source.gi_running and time.monotonic() < deadline:
        time.sleep(0.001)
    deltas.close()
    reader.join(timeout=60)
    assert not reader.is_alive()
    completion = handle.result()
    assert completion.finish_reason == "cancelled"
    assert completion.metrics.output_tokens < 200


def test_closing_with_an_infinite_timeout_waits_for_the_scheduler(lm):
    """``close(timeout=math.inf)`` raised ``OverflowError`` from ``Thread.join``."""
    extra = Engine()
    assert extra.generate(chat("Hi!"), GenerationParams(max_new_tokens=1)).text is not None
    extra.close(timeout=math.inf)
    assert extra._thread is not None and not extra._thread.is_alive()


def test_stop_string_ends_the_answer(engine):
    messages = chat(QUESTIONS[2])
    full = engine.generate(messages, GREEDY).text
    words = full.split()
    assert len(words) > 3
    stop = " " + words[2]
    stopped = engine.generate(messages, GenerationParams(max_new_tokens=12, stop=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(stop)]


def test_seeded_sampling_is_reproducible(engine):
    params = GenerationParams(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=7)
    messages = chat("Invent a name for a router.")
    first = engine.generate(messages, params).text
    assert engine.generate(messages, params).text == first


def test_async_entry_point_matches_sync(engine):
    messages = chat(QUESTIONS[0])

    async def both() -> list[Completion]:
        calls = [engine.agenerate(messages, GREEDY) for _ in range(2)]
        return list(await asyncio.gather(*calls))

    first, second = asyncio.run(both())
    assert first.text == second.text == engine.generate(messages, GREEDY).text


def test_metrics_follow_the_definitions(engine):
    ids = engine.encode_chat(chat(QUESTIONS[3]))
    completion = engine.submit(ids, GenerationParams(max_new_tokens=6)).result()
    metrics = completion.metrics
    assert metrics.prompt_tokens == len(ids)
    assert 0 < metrics.ttft_ms <= metrics.latency_ms
    assert metrics.output_tokens <= 6
    if metrics.output_tokens > 1:
        expected_tpot = (metrics.latency_ms - metrics.ttft_ms) / (metrics.output_tokens - 1)
        assert metrics.tpot_ms == pytest.approx(expected_tpot)
    assert metrics.output_tokens_per_s == pytest.approx(
        metrics.output_tokens / (metrics.latency_ms / 1000)
    )
    stats = engine.stats()
    assert stats.cached_tokens + stats.computed_tokens > 0
    assert 0.0 <= stats.hit_rate <= 1.0


def test_bad_inputs_fail_clearly(engine):
    with pytest.raises(ConfigError, match="at least one message"):
        engine.generate([])
    with pytest.raises(ConfigError, match="empty"):
        engine.submit([])
    with pytest.raises(ConfigError, match="context window"):
        engine.submit([1] * (engine.context_window + 5))
    with pytest.raises(ConfigError, match="invalid message"):
        engine.generate([{"role": "robot", "content": "hi"}])


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("device", "gpu"),
        ("device", "cuda:99"),  # no CUDA here, or not that many GPUs
        ("dtype", "float33"),
        ("cache_bytes", -1),
        ("offload_bytes", -1),
    ],
)
def test_bad_engine_settings_are_a_config_error_naming_them(setting, value):
    """A device typo or a GPU the machine lacks raised torch's RuntimeError or
    AssertionError, an unknown dtype an AttributeError, and a negative cache size was
    named as the cache's own ``max_bytes``, once the model had loaded."""
    with pytest.raises(ConfigError) as caught:
        Engine(**{setting: value})
    assert caught.value.key == setting


def test_token_ids_outside_the_vocabulary_are_a_config_error(engine):
    vocabulary = engine.model.config.vocab_size
    for outside in (-5, vocabulary, 10**7):
        with pytest.raises(ConfigError, match=f"token id {outside} ") as caught:
            engine.submit([1, 2, outside], GREEDY)
        assert caught.value.key == "prompt"
    last = engine.submit([1, 2, vocabulary - 1], GenerationParams(max_new_tokens=1)).result()
    assert last.metrics.prompt_tokens == 3


def test_a_prompt_that_is_not_token_ids_is_a_config_error(engine):
    """A string or a nested list was a bare TypeError, a 2-D tensor (what a tokenizer
    returns) a RuntimeError, and float ids failed in the model as a BackendError."""
    torch = pytest.importorskip("torch")
    shapes = (torch.tensor([[1, 2, 3]]), torch.tensor([[5]]), torch.tensor(5))
    for prompt in ("Hello", b"Hello", [[1, 2, 3]], [1.0, 2.0], *shapes, 7):
        with pytest.raises(ConfigError, match="integers") as caught:
            engine.submit(prompt, GREEDY)
        assert caught.value.key == "prompt"
    one = GenerationParams(max_new_tokens=1)
    ids = engine.encode_chat(chat("Hi!"))
    expected = engine.submit(ids, one).result().text
    assert engine.submit(torch.tensor(ids), one).result().text == expected  # ints of torch's


def test_local_backend_serves_the_interface(engine):
    backend = LocalBackend(engine)
    messages = chat(QUESTIONS[1], system=SYSTEM)
    completion = backend.generate(messages, GREEDY)
    assert "".join(backend.stream(messages, GREEDY)) == completion.text
    assert asyncio.run(backend.agenerate(messages, GREEDY)).text == completion.text
    backend.close()  # the engine was passed in: it stays open
    assert engine.generate(messages, GREEDY).text == completion.text


def test_tenants_do_not_share_cached_prefixes(engine):
    params = GenerationParams(max_new_tokens=2)
    messages = chat("Do you ship to Norway?")
    tenant_a = LocalBackend(engine, cache_namespace="tenant-a")
    tenant_b = LocalBackend(engine, cache_namespace="tenant-b")
    tenant_a.generate(messages, params)
    assert tenant_b.generate(messages, params).metrics.cached_tokens == 0
    assert tenant_a.generate(messages, params).metrics.cached_tokens > 0


def test_a_failure_caching_an_answer_ended_at_prefill_fails_that_request_only(engine, monkeypatch):
    """A request whose first token ends it is cached and answered in the admission step:
    a failure there must fail it like a failed prefill, not stop the scheduler."""
    insert = engine.cache.insert
    inserts = 0

    def insert_failing_the_second_time(tokens, kv, namespace=""):
        nonlocal inserts
        inserts += 1
        if inserts == 2:  # the prefill stored the prompt; this stores prompt and answer
            raise RuntimeError("out of device memory")
        return insert(tokens, kv, namespace)

    monkeypatch.setattr(engine.cache, "insert", insert_failing_the_second_time)
    one_token = GenerationParams(max_new_tokens=1)
    handle = engine.submit(engine.encode_chat(chat(QUESTIONS[3])), one_token)
    with pytest.raises(BackendError, match="out of device memory"):
        handle.result(timeout=20)
    assert inserts == 2
    monkeypatch.undo()
    assert engine.generate(chat(QUESTIONS[3]), one_token).finish_reason == "length"


def test_a_request_that_cannot_join_the_batch_leaves_the_running_one_intact(engine, monkeypatch):
    """The join's copy failing at a later layer (out of memory) failed the joiner and left
    the running request decoding over a cache half merged with it."""
    from ctxproto.runtime import batch as batch_module

    params = GenerationParams(max_new_tokens=24, ignore_eos=True)
    alone = engine.generate(chat(QUESTIONS[0]), params).text
    pad_left = batch_module._pad_left
    calls = 0

    def failing_at_the_sixth_layer(tensor, width):
        nonlocal calls
        calls += 1
        if calls == 21:  # 2 caches x keys and values x 5 layers done
            raise RuntimeError("out of memory")
        return pad_left(tensor, width)

    running = engine.submit_chat(chat(QUESTIONS[0]), params)
    deltas = running.deltas()
    first = next(deltas) + next(deltas)  # the second token is a decode step's: in the batch
    monkeypatch.setattr(batch_module, "_pad_left", failing_at_the_sixth_layer)
    joiner = engine.submit_chat(chat(QUESTIONS[1]), params)
    with pytest.raises(BackendError, match="out of memory"):
        joiner.result(timeout=60)
    assert first + "".join(deltas) == alone
    assert calls >= 21


def test_a_scheduler_fault_fails_every_request_and_later_submits_at_once(lm, monkeypatch):
    """Whatever escapes the scheduler loop, no caller waits forever on the thread it stopped."""
    with Engine(max_batch_size=2) as engine:
        prompt = engine.encode_chat(chat("Write a long story."))
        running = engine.submit(prompt, GenerationParams(max_new_tokens=200, ignore_eos=True))
        deltas = running.deltas()
        next(deltas)  # it is decoding now (and kept: closing the stream would cancel it)

        def fault(request: object) -> int:
            raise RuntimeError("scheduler fault")

        monkeypatch.setattr(engine, "_cached_length", fault)
        waiting = engine.submit(prompt, GREEDY)
        for handle in (running, waiting):
            with pytest.raises(BackendError, match="scheduler fault"):
                handle.result(timeout=20)
        with pytest.raises(BackendUnavailableError, match="scheduler fault"):
            engine.submit(prompt, GREEDY)


def test_a_result_not_awaited_past_its_timeout_is_cancelled(engine):
    """The caller stopped waiting: a timeout error, and the request stops at its next step."""
    long = GenerationParams(max_new_tokens=200, ignore_eos=True)
    handle = engine.submit(engine.encode_chat(chat("Write a long story.")), long)
    with pytest.raises(BackendTimeoutError, match="no answer within"):
        handle.result(timeout=0.01)
    completion = handle.result(timeout=20)
    assert completion.finish_reason == "cancelled"
    assert completion.metrics.output_tokens < 200


def test_a_result_with_an_infinite_timeout_waits_for_the_answer(engine):
    """A timeout past what a lock can wait (``math.inf``, 1e10 s) was an OverflowError."""
    for timeout in (math.inf, 1e10):
        handle = engine.submit(engine.encode_chat(chat("Hi!")), GenerationParams(max_new_tokens=2))
        assert handle.result(timeout=timeout).metrics.output_tokens > 0


def test_a_failed_prefill_counts_no_prompt_tokens(engine, monkeypatch):
    """The hit rate is over prompts the engine computed or reused, not ones it failed on."""

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(engine_module, "prefill", out_of_memory)
    before = engine.stats()
    handle = engine.submit(engine.encode_chat(chat(QUESTIONS[0])), GREEDY)
    with pytest.raises(BackendError, match="out of device memory"):
        handle.result(timeout=20)
    after = engine.stats()
    assert (after.cached_tokens, after.computed_tokens) == (
        before.cached_tokens,
        before.computed_tokens,
    )


def test_a_failed_request_raises_its_error_on_every_later_wait(engine, monkeypatch):
    """The error event was read once: a second wait (a retry loop, ``result()`` after a
    failed stream) blocked on a queue that gets nothing more, for ever without a timeout."""

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of device memory")

    monkeypatch.setattr(engine_module, "prefill", out_of_memory)
    handle = engine.submit(engine.encode_chat(chat(QUESTIONS[0])), GREEDY)
    with pytest.raises(BackendError, match="out of device memory"):
        list(handle.deltas())
    depths = []
    for wait in (handle.result, handle.result, lambda timeout: list(handle.deltas())):
        with pytest.raises(BackendError, match="out of device memory") as caught:
            wait(timeout=5)
        depths.append(len(caught.traceback))
    # Raised again from where it was raised, not atop every earlier wait's frames.
    assert depths[0] == depths[1]


ENGINE_LEFT_OPEN = """
import atexit, threading

def report():  # registered first, so it runs after the engine module's own exit hook
    running = any(t.name == "ctxproto-engine" and t.is_alive() for t in threading.enumerate())
    print("running" if running else "stopped", flush=True)

atexit.register(report)
from ctxproto.runtime import Engine, GenerationParams
engine = Engine()
engine.generate([{"role": "user", "content": "Hi"}], GenerationParams(max_new_tokens=2))
"""


@pytest.mark.models
def test_an_engine_left_open_is_stopped_before_the_interpreter_exits():
    """Left running into shutdown, its daemon thread could be inside torch when the
    runtime's threads were torn down: "terminate called without an active exception"."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_LEFT_OPEN],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "stopped"
