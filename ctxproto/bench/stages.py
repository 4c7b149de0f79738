"""``ctxproto bench stages [--json]``: the cost of the context stages, side by side.

- ``relevance_filter`` over a 30-turn chat: cold (every turn new to the
  embedder), one chat step (29 turns already embedded, one new turn and a new
  query), and a pure re-score (everything embedded), in history tokens per
  second; next to it the plain embedder's own speed on the same text.
- ``token_compressor`` on CPU (or GPU when present): input tokens per second at
  rate 0.5 (token pass only) and with a query at rate 0.25 (coarse + token
  pass), next to the scoring LM's plain prefill speed over the same tokens —
  the ratio says when compressing pays off.
- ``token_compressor`` at rate 0.5: the share of numbers and identifiers in the
  input that survive byte-exact (the issue's 100% target).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from ctxproto.bench.machine import describe_machine, print_figures
from ctxproto.cli.arguments import int_at_least
from ctxproto.context import Context
from ctxproto.documents import Document
from ctxproto.eval.facts import needle_fact
from ctxproto.eval.needle import essays_dir
from ctxproto.messages import Message
from ctxproto.models.embedder import get_embedder
from ctxproto.stages.relevance_filter import RelevanceFilter
from ctxproto.stages.token_compressor import TokenCompressor
from ctxproto.text.protected_spans import protected_spans
from ctxproto.text.sentences import split_sentences
from ctxproto.tokens import get_counter

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("stages", help="throughput of the context stages")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--turns", type=int_at_least(1), default=30, help="chat turns for relevance_filter"
    )
    parser.add_argument(
        "--compress-tokens", type=int_at_least(1), default=1000, help="token_compressor input"
    )
    parser.add_argument(
        "--samples", type=int_at_least(1), default=4, help="texts for the retention check"
    )
    parser.add_argument(
        "--repeats", type=int_at_least(1), default=20, help="timed re-scoring repeats"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    figures = run(args.turns, args.compress_tokens, args.samples, args.repeats)
    return print_figures(figures, as_json=args.json)


def _sentences(limit_tokens: int, seed: int) -> list[str]:
    counter = get_counter()
    files = sorted(essays_dir().glob("*.txt"))
    rng = random.Random(seed)
    text = rng.choice(files).read_text(encoding="utf-8", errors="replace")
    out, used = [], 0
    for sentence in split_sentences(" ".join(text.split())):
        out.append(sentence)
        used += counter.count(sentence)
        if used >= limit_tokens:
            break
    return out


def run(turns: int, compress_tokens: int, samples: int, repeats: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"machine": describe_machine()}
    figures.update(_relevance(turns, repeats))
    figures.update(_compressor_speed(compress_tokens))
    figures.update(_retention(samples))
    return figures


def _chat(turns: int, tag: str) -> list[Message]:
    sentences = _sentences(turns * 90, seed=turns)
    per_turn = max(len(sentences) // turns, 1)
    return [
        Message(
            role="user" if i % 2 == 0 else "assistant",
            content=f"[{tag}] " + "".join(sentences[i * per_turn : (i + 1) * per_turn]),
        )
        for i in range(turns)
    ]


def _relevance(turns: int, repeats: int) -> dict[str, Any]:
    counter = get_counter()
    embedder = get_embedder("default")
    stage = RelevanceFilter(rate=0.3, targets=("history",))
    stage.warm_up()
    history = _chat(turns, tag=f"cold-{time.time_ns()}")
    tokens = sum(counter.count(m.text) for m in history)  # memoized: not timed below
    start = time.perf_counter()
    embedder.encode_uncached([m.text for m in history])
    plain_s = time.perf_counter() - start

    def timed(context: Context) -> float:
        start = time.perf_counter()
        stage.run(context, counter)
        return time.perf_counter() - start

    query = Message(role="user", content="What did we say about startups and investors?")
    cold_s = timed(Context(history=history, query=query))
    steps = []
    for r in range(repeats):  # one chat step: a new turn and a new question
        new_turn = Message(role="user", content=f"Step {r}: and what about the founders' ideas?")
        grown = [*history[1:], new_turn]
        steps.append(timed(Context(history=grown, query=Message(role="user", content=f"q{r}?"))))
    warm = [timed(Context(history=history, query=query)) for _ in range(repeats)]
    return {
        "relevance_history_tokens": tokens,
        "embedder_plain_tokens_per_s": round(tokens / plain_s),
        "relevance_cold_tokens_per_s": round(tokens / cold_s),
        "relevance_chat_step_tokens_per_s": round(tokens / sorted(steps)[len(steps) // 2]),
        "relevance_rescore_tokens_per_s": round(tokens / sorted(warm)[len(warm) // 2]),
    }


def _compressor_speed(compress_tokens: int) -> dict[str, Any]:
    counter = get_counter()
    text = "".join(_sentences(compress_tokens, seed=7))
    tokens = counter.count(text)
    stage = TokenCompressor(rate=0.5)
    stage.warm_up()
    assert stage._scorer is not None
    scorer = stage._scorer
    start = time.perf_counter()
    scorer.score([text])
    prefill_s = time.perf_counter() - start
    document = [Document(id="essay", text=text)]
    start = time.perf_counter()
    stage.run(Context(documents=document), counter)
    fine_s = time.perf_counter() - start
    query = Message(role="user", content="Why do startups fail?")
    start = time.perf_counter()
    TokenCompressor(rate=0.25).run(Context(documents=document, query=query), counter)
    coarse_s = time.perf_counter() - start
    return {
        "compressor_device": scorer.device,
        "compressor_input_tokens": tokens,
        "lm_prefill_tokens_per_s": round(tokens / prefill_s),
        "compressor_rate_0_5_tokens_per_s": round(tokens / fine_s),
        "compressor_query_rate_0_25_tokens_per_s": round(tokens / coarse_s),
        "compressor_cost_vs_prefill_rate_0_5": round(fine_s / prefill_s, 2),
    }


def _retention(samples: int) -> dict[str, Any]:
    """Share of number/identifier spans of the input found byte-exact in the output."""
    counter = get_counter()
    rng = random.Random(0)
    found = total = 0
    kept_tokens = input_tokens = 0
    for i in range(samples):
        sentences = _sentences(250, seed=100 + i)
        for k in range(4):
            fact = needle_fact(rng, i * 4 + k)
            sentences.insert(rng.randrange(len(sentences) + 1), fact.statement + " ")
        text = "".join(sentences)
        result = TokenCompressor(rate=0.5).run(Context(documents=[Document(id="t", text=text)]))
        out = result.context.documents[0].text if result.context.documents else ""
        spans = {
            text[s.start : s.end] for s in protected_spans(text, kinds=("number", "identifier"))
        }
        total += len(spans)
        found += sum(span in out for span in spans)
        input_tokens += counter.count(text)
        kept_tokens += counter.count(out)
    return {
        "retention_samples": samples,
        "retention_achieved_rate": round(kept_tokens / max(input_tokens, 1), 3),
        "numbers_identifiers_total": total,
        "numbers_identifiers_kept_exact": round(found / max(total, 1), 4),
    }
