"""The two ways ``ctxproto bench chat`` serves the same workload, turn by turn.

- **baseline**: the full history every turn, no caches, plain ``transformers``
  ``generate`` — what a chatbot without context management does.
- **ctxproto**: a ``ChatSession`` — retrieval, semantic cache and a
  checkpointed summary in front of the prefix-KV-caching engine.

Both record the same per-turn fields, so the benchmark compares them line by line.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxproto.bench.chat_workload import SessionScript
from ctxproto.eval.metrics import best_subspan_em
from ctxproto.pipeline import Pipeline
from ctxproto.session import ChatSession

__all__ = ["TurnRecord", "baseline_turns", "build_chat_pipeline", "ctxproto_turns"]


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


def baseline_turns(
    scripts: list[SessionScript], system_prompt: str, max_new_tokens: int
) -> Iterator[TurnRecord]:
    """Full history, plain ``generate``, greedy: one record per turn as it is served."""
    import torch

    from ctxproto.models.loader import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(), load_tokenizer()
    for script in scripts:
        history: list[dict[str, str]] = []
        for index, turn in enumerate(script.turns):
            messages = [{"role": "system", "content": system_prompt}, *history]
            messages.append({"role": "user", "content": turn.text})
            start = time.perf_counter()
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            clock = _FirstTokenClock()
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    streamer=clock,
                    pad_token_id=tokenizer.eos_token_id,
                )
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            end = time.perf_counter()
            prompt = int(ids.shape[1])
            yield (
                TurnRecord(
                    session=script.id,
                    turn=index + 1,
                    kind=turn.kind,
                    prompt_tokens=prompt,
                    prefill_tokens=prompt,
                    output_tokens=int(out.shape[1]) - prompt,
                    ttft_ms=((clock.first or end) - start) * 1000.0,
                    seconds=end - start,
                    fact_in_prompt=True if turn.asks else None,
                    fact_answered=_answered(answer, turn.asks),
                    question=turn.text,
                    answer=answer,
                )
            )
            history += [
                {"role": "user", "content": turn.text},
                {"role": "assistant", "content": answer},
            ]


# Where each stage of examples/pipelines/chatbot.yaml keeps its state.
_STATE_PARAMETERS = {"retriever": "store", "semantic_cache": "path", "summarizer": "state_path"}


def build_chat_pipeline(workdir: Path, examples: Path) -> Pipeline:
    """``examples/pipelines/chatbot.yaml`` with its stores in ``workdir``, the index built."""
    from ctxproto.retrieval import KnowledgeBase, read_documents
    from ctxproto.session import load_chatbot_config

    config = examples / "pipelines" / "chatbot.yaml"
    data, _ = load_chatbot_config(config)
    for spec in data.get("stages", []):
        parameter = _STATE_PARAMETERS.get(spec.get("type"))
        if parameter:
            spec.setdefault("init_parameters", {})[parameter] = str(workdir / spec["type"])
    pipeline = Pipeline.from_dict(data, source=str(config))
    base = KnowledgeBase(workdir / "retriever")
    base.add_documents(read_documents(examples / "knowledge"))
    base.save()
    return pipeline


def ctxproto_turns(
    scripts: list[SessionScript],
    system_prompt: str,
    max_new_tokens: int,
    examples: Path,
    stats: dict[str, Any],
) -> Iterator[TurnRecord]:
    """Every session through one ``ChatSession`` pipeline and one engine, a record per turn.

    The engine's prefix-cache statistics are written into ``stats`` at the end.
    """
    from ctxproto.runtime import Engine, GenerationParams, LocalBackend

    with tempfile.TemporaryDirectory(prefix="ctxproto-bench-") as tmp:
        pipeline = build_chat_pipeline(Path(tmp), examples)
        engine = Engine()
        backend = LocalBackend(engine)
        params = GenerationParams(max_new_tokens=max_new_tokens)
        for script in scripts:
            session = ChatSession(
                pipeline,
                backend,
                system_prompt=system_prompt,
                session_id=script.id,
                generation=params,
            )
            for index, turn in enumerate(script.turns):
                start = time.perf_counter()
                result = session.ask(turn.text)
                seconds = time.perf_counter() - start
                report = result.report
                fact_in_prompt = None
                if turn.asks is not None:
                    seen = result.prompt.text if result.prompt is not None else result.answer
                    fact_in_prompt = turn.asks.answer in seen
                record = TurnRecord(
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
                yield record
        stats.update(engine.stats().model_dump())
        backend.close()
        engine.close()


def _answered(answer: str, fact: Any) -> bool | None:
    return None if fact is None else bool(best_subspan_em(answer, [fact.answer]))
