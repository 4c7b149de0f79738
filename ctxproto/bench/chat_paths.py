"""The ways ``ctxproto bench chat`` serves the same workload, turn by turn.

Full history every turn, as a chatbot without context management sends it:

- ``generate_turns``: plain ``transformers`` ``generate``, no KV reuse — the
  first baseline this benchmark had, kept for continuity;
- ``full_history_turns``: any ``Backend`` — the bundled engine with its
  prefix-KV cache, or llama.cpp's server with ``cache_prompt`` — which reuse
  the unchanged prefix of the conversation from one turn to the next.

And ``ctxproto_turns``: a ``ChatSession`` (retrieval, semantic cache,
checkpointed summary) in front of any ``Backend``.

With ``window_tokens`` the full-history paths drop the oldest turns until the
conversation fits, as chat apps do when it outgrows the model's context.
With ``round_robin`` the sessions take turns (turn 1 of every session, then
turn 2, ...), as concurrent users reach one server, instead of one after the
other. All record the same per-turn fields, so the benchmark compares them
line by line.
"""

from __future__ import annotations

import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxproto.bench.chat_workload import SessionScript
from ctxproto.eval.metrics import best_subspan_em
from ctxproto.messages import Message
from ctxproto.models.embedder import get_embedder
from ctxproto.models.openmp import releasing_thread_pool
from ctxproto.pipeline import Pipeline
from ctxproto.session import ChatSession
from ctxproto.tokens import TokenCounter

__all__ = [
    "KnowledgeSetup",
    "TurnRecord",
    "build_chat_pipeline",
    "ctxproto_turns",
    "full_history_turns",
    "generate_turns",
    "serving_order",
]


@dataclass
class TurnRecord:
    """One served turn."""

    session: str
    turn: int
    kind: str
    prompt_tokens: int
    prefill_tokens: int
    output_tokens: int
    ttft_ms: float
    seconds: float
    semantic_hit: bool = False
    fact_in_prompt: bool | None = None
    fact_answered: bool | None = None
    question: str = ""
    answer: str = ""


class _FirstTokenClock:
    """A ``generate`` streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class _History:
    """The full conversation so far, cut from the oldest turn to fit a token window."""

    def __init__(
        self, system_prompt: str, counter: TokenCounter, window_tokens: int | None
    ) -> None:
        self.system = {"role": "system", "content": system_prompt}
        self.counter = counter
        self.window_tokens = window_tokens
        self.turns: list[tuple[dict[str, str], dict[str, str], int]] = []

    def messages(self, question: str) -> list[dict[str, str]]:
        """System prompt, the newest turns that fit, the question."""
        kept = self.turns
        if self.window_tokens is not None:
            used = self._count("system", self.system["content"]) + self._count("user", question)
            start = len(kept)
            while start > 0 and used + kept[start - 1][2] <= self.window_tokens:
                start -= 1
                used += kept[start][2]
            kept = kept[start:]
        pairs = [m for user, answer, _ in kept for m in (user, answer)]
        return [self.system, *pairs, {"role": "user", "content": question}]

    def add(self, question: str, answer: str) -> None:
        cost = self._count("user", question) + self._count("assistant", answer)
        self.turns.append(
            ({"role": "user", "content": question}, {"role": "assistant", "content": answer}, cost)
        )

    def _count(self, role: str, text: str) -> int:
        return self.counter.count_message(Message(role=role, content=text))


def serving_order(
    scripts: Sequence[SessionScript], round_robin: bool = False
) -> Iterator[tuple[int, int]]:
    """``(script, turn)`` indices in serving order: session by session, or round robin."""
    if not round_robin:
        for s, script in enumerate(scripts):
            for t in range(len(script.turns)):
                yield s, t
        return
    for t in range(max((len(script.turns) for script in scripts), default=0)):
        for s, script in enumerate(scripts):
            if t < len(script.turns):
                yield s, t


def generate_turns(
    scripts: list[SessionScript],
    system_prompt: str,
    max_new_tokens: int,
    counter: TokenCounter,
    *,
    window_tokens: int | None = None,
    round_robin: bool = False,
    fixed_length: bool = False,
) -> Iterator[TurnRecord]:
    """Full history, plain ``generate``, greedy: one record per turn as it is served.

    ``fixed_length``: every answer is ``max_new_tokens`` long, as on every path."""
    import torch

    from ctxproto.models.loader import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(), load_tokenizer()

    def serve(messages: list[dict[str, str]]) -> _Served:
        start = time.perf_counter()
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        clock = _FirstTokenClock()
        with torch.no_grad(), releasing_thread_pool():  # idle workers slow the engines
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens if fixed_length else None,
                do_sample=False,
                streamer=clock,
                pad_token_id=tokenizer.eos_token_id,
            )
        answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        end = time.perf_counter()
        prompt = int(ids.shape[1])
        return _Served(
            answer,
            prompt_tokens=prompt,
            prefill_tokens=prompt,
            output_tokens=int(out.shape[1]) - prompt,
            ttft_ms=((clock.first or end) - start) * 1000.0,
            seconds=end - start,
        )

    return _full_history(scripts, system_prompt, counter, serve, window_tokens, round_robin)


def full_history_turns(
    scripts: list[SessionScript],
    system_prompt: str,
    max_new_tokens: int,
    backend: Any,
    counter: TokenCounter,
    *,
    window_tokens: int | None = None,
    round_robin: bool = False,
    fixed_length: bool = False,
) -> Iterator[TurnRecord]:
    """Full history through ``backend`` (its own prefix cache decides what is recomputed)."""
    from ctxproto.runtime import GenerationParams

    params = GenerationParams(max_new_tokens=max_new_tokens, ignore_eos=fixed_length)

    def serve(messages: list[dict[str, str]]) -> _Served:
        start = time.perf_counter()
        completion = backend.generate(messages, params)
        seconds = time.perf_counter() - start
        metrics = completion.metrics
        return _Served(
            completion.text.strip(),
            prompt_tokens=metrics.prompt_tokens,
            prefill_tokens=metrics.prompt_tokens - metrics.cached_tokens,
            output_tokens=metrics.output_tokens,
            ttft_ms=metrics.ttft_ms,
            seconds=seconds,
        )

    return _full_history(scripts, system_prompt, counter, serve, window_tokens, round_robin)


@dataclass
class _Served:
    """What one full-history path measured serving one turn."""

    answer: str
    prompt_tokens: int
    prefill_tokens: int
    output_tokens: int
    ttft_ms: float
    seconds: float


def _full_history(
    scripts: list[SessionScript],
    system_prompt: str,
    counter: TokenCounter,
    serve: Callable[[list[dict[str, str]]], _Served],
    window_tokens: int | None,
    round_robin: bool,
) -> Iterator[TurnRecord]:
    """The turn loop both full-history paths share: each turn's prompt is the session's
    history (windowed), and its answer joins that history; ``serve`` answers one prompt."""
    histories = [_History(system_prompt, counter, window_tokens) for _ in scripts]
    for s, index in serving_order(scripts, round_robin):
        script, history = scripts[s], histories[s]
        turn = script.turns[index]
        messages = history.messages(turn.user_message)
        served = serve(messages)
        fact_in_prompt = None
        if turn.asks is not None:
            fact_in_prompt = any(turn.asks.answer in m["content"] for m in messages)
        yield TurnRecord(
            session=script.id,
            turn=index + 1,
            kind=turn.kind,
            prompt_tokens=served.prompt_tokens,
            prefill_tokens=served.prefill_tokens,
            output_tokens=served.output_tokens,
            ttft_ms=served.ttft_ms,
            seconds=served.seconds,
            fact_in_prompt=fact_in_prompt,
            fact_answered=_answered(served.answer, turn.asks),
            question=turn.text,
            answer=served.answer,
        )
        history.add(turn.user_message, served.answer)


# Where each stage of examples/pipelines/chatbot.yaml keeps its state.
_STATE_PARAMETERS = {"retriever": "store", "semantic_cache": "path", "summarizer": "state_path"}


@dataclass(frozen=True)
class KnowledgeSetup:
    """A knowledge base other than the bundled one, and how ctxproto retrieves from it.

    ``retriever`` overrides the retriever's parameters of ``chatbot.yaml``;
    ``after_retriever`` are stage specs placed right after it (a relevance
    filter that compresses what was retrieved, say), instead of the document
    filters ``chatbot.yaml`` has there.
    """

    store: Path
    retriever: dict[str, Any]
    after_retriever: tuple[dict[str, Any], ...] = ()


def build_chat_pipeline(
    workdir: Path, examples: Path, knowledge: KnowledgeSetup | None = None
) -> Pipeline:
    """``examples/pipelines/chatbot.yaml`` with its stores in ``workdir``, the index built.

    With ``knowledge`` the retriever reads that store, which is already built.
    """
    from ctxproto.retrieval import KnowledgeBase, read_documents
    from ctxproto.session import load_chatbot_config

    config = examples / "pipelines" / "chatbot.yaml"
    data, _ = load_chatbot_config(config)
    stages: list[dict[str, Any]] = []
    for spec in data.get("stages", []):
        if knowledge is not None and _filters_documents(spec):
            continue
        parameter = _STATE_PARAMETERS.get(spec.get("type"))
        if parameter:
            spec.setdefault("init_parameters", {})[parameter] = str(workdir / spec["type"])
        stages.append(spec)
        if knowledge is not None and spec.get("type") == "retriever":
            spec["init_parameters"].update(knowledge.retriever, store=str(knowledge.store))
            stages.extend(knowledge.after_retriever)
    data["stages"] = stages
    pipeline = Pipeline.from_dict(data, source=str(config))
    if knowledge is None:
        base = KnowledgeBase(workdir / "retriever")
        base.add_documents(read_documents(examples / "knowledge"))
        base.save()
    return pipeline


def _filters_documents(spec: dict[str, Any]) -> bool:
    targets = spec.get("init_parameters", {}).get("targets", ())
    return spec.get("type") == "relevance_filter" and list(targets) == ["documents"]


def ctxproto_turns(
    scripts: list[SessionScript],
    system_prompt: str,
    max_new_tokens: int,
    examples: Path,
    backend: Any,
    *,
    round_robin: bool = False,
    knowledge: KnowledgeSetup | None = None,
    fixed_length: bool = False,
) -> Iterator[TurnRecord]:
    """Every session through one ``ChatSession`` pipeline in front of ``backend``."""
    from ctxproto.runtime import GenerationParams

    with tempfile.TemporaryDirectory(prefix="ctxproto-bench-") as tmp:
        pipeline = build_chat_pipeline(Path(tmp), examples, knowledge)
        params = GenerationParams(max_new_tokens=max_new_tokens, ignore_eos=fixed_length)
        sessions = [
            ChatSession(
                pipeline,
                backend,
                system_prompt=system_prompt,
                session_id=script.id,
                generation=params,
            )
            for script in scripts
        ]
        # A semantic-cache hit sends no prompt: it replays an answer the model wrote
        # earlier, so it keeps the fact exactly when that answer's prompt did.
        retained_by_answer: dict[str, bool] = {}
        # The embedder is one per process: this path remembers its own embeddings, or
        # a second ctxproto path would find each turn's already made by the first.
        embedder, memo = get_embedder(), OrderedDict[bytes, Any]()
        for s, index in serving_order(scripts, round_robin):
            script, turn = scripts[s], scripts[s].turns[index]
            start = time.perf_counter()
            with embedder.own_memo(memo):
                result = sessions[s].ask(turn.text)
            seconds = time.perf_counter() - start
            report = result.report
            fact_in_prompt = None
            if turn.asks is not None and result.prompt is not None:
                fact_in_prompt = turn.asks.answer in result.prompt.text
                retained_by_answer[result.answer] = fact_in_prompt
            elif turn.asks is not None:
                fact_in_prompt = retained_by_answer.get(
                    result.answer, turn.asks.answer in result.answer
                )
            yield TurnRecord(
                session=script.id,
                turn=index + 1,
                kind=turn.kind,
                prompt_tokens=report.prompt_tokens,
                prefill_tokens=report.prompt_tokens - report.cached_prefix_tokens,
                output_tokens=report.output_tokens,
                ttft_ms=report.ttft_ms,
                seconds=seconds,
                semantic_hit=report.semantic_cache_hit,
                fact_in_prompt=fact_in_prompt,
                fact_answered=_answered(result.answer, turn.asks),
                question=turn.text,
                answer=result.answer,
            )


def _answered(answer: str, fact: Any) -> bool | None:
    return None if fact is None else bool(best_subspan_em(answer, [fact.answer]))
