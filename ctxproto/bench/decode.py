"""``ctxproto bench decode [--json]``: where a decode step's time goes, and what we removed.

A chat turn on CPU is mostly decode steps once the prefix cache has removed most of
the prefill. This benchmark prefills a prompt of ``--context`` tokens and decodes
greedily after it, several ways, on one loaded model, interleaved round by round so
that load from other processes hits every variant alike:

- ``transformers``: the model as loaded, with transformers' ``DynamicCache`` — what
  plain ``generate`` does on every step;
- ``reserved_kv``: our KV layers, which append into spare room instead of copying
  the whole cache with ``torch.cat`` each step;
- ``split_cores``: the linear layers split over every CPU core;
- ``engine``: what ``Engine()`` runs (``quantize="none"``, float32): our KV layers,
  the linear layers multiplying from the GGUF file's own blocks (``packed_linear``;
  the same float32 weights), longer inputs split over the cores, and each decoder
  layer's work around its attention in two C++ calls (``fused_decoder``; the same
  bits);
- ``engine_int8_head``, ``engine_int8``, ``engine_int8_weights`` and
  ``engine_bf16``: the engine with ``quantize="int8_head"`` (an int8 LM head),
  ``quantize="int8"`` (every linear layer int8), ``quantize="int8_weights"``
  (int8 weights, bfloat16 inputs) and ``quantize="bf16"`` (every linear layer
  bfloat16).

It reports the median milliseconds per step, each variant's speedup over
``transformers``, the cold prefill rate of the prompt (fed as the engine feeds it:
in pieces to a model with fused layers, ``runtime/prefill.py``), and whether the float
variants produced the same tokens. The rounded variants may not, so for them it
reports agreement with ``engine`` on real chat questions instead (``quality``):
the share of the float answers' tokens the rounded model predicts given the same
preceding tokens, and the share of answers that come out identical.

``support`` then answers questions over the support knowledge base with
speculative decoding on and off, in the default mode, float32, bf16 and
int8_weights, and asks
llama.cpp's server the same (``decode_support.py``): decode and cold prefill
tokens/s of each, and the tokens each forward pass produced.

``predicted`` answers edits and reworded questions with a prediction (OpenAI's
Predicted Outputs) and without, and asks llama.cpp's server the same
(``decode_predicted.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from ctxproto._extras import require
from ctxproto.bench.chat_workload import KB_QUESTIONS
from ctxproto.bench.decode_predicted import predicted_figures
from ctxproto.bench.decode_support import support_figures
from ctxproto.bench.machine import print_figures
from ctxproto.cli.arguments import int_at_least
from ctxproto.errors import ConfigError
from ctxproto.models.core_split import split_over_cores
from ctxproto.runtime import load_causal_lm, load_tokenizer
from ctxproto.runtime.chat_template import render_chat
from ctxproto.runtime.engine import engine_model
from ctxproto.runtime.kv_layout import new_cache
from ctxproto.runtime.prefill import prefill

QUANTIZED = ("int8_head", "int8", "int8_weights", "bf16")

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decode", help="decode step and prefill: transformers vs the engine, float, int8 and bf16"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--context", type=int_at_least(1), default=1800, help="prompt tokens before decoding"
    )
    parser.add_argument(
        "--steps", type=int_at_least(1), default=32, help="tokens decoded per round"
    )
    parser.add_argument(
        "--rounds", type=int_at_least(1), default=3, help="timed rounds, the median reported"
    )
    parser.add_argument(
        "--rows", type=int_at_least(1), default=1, help="sequences decoded together"
    )
    parser.add_argument(
        "--answers",
        type=int_at_least(0),
        default=len(KB_QUESTIONS) * 2,
        help="chat questions answered to compare int8 and bf16 with float32 (0: skip)",
    )
    parser.add_argument(
        "--support",
        type=int_at_least(0),
        default=4,
        help="support questions answered with speculation on and off and by llama.cpp (0: skip)",
    )
    parser.add_argument(
        "--support-tokens", type=int_at_least(1), default=32, help="tokens per support answer"
    )
    parser.add_argument(
        "--predicted",
        type=int_at_least(0),
        default=4,
        help="edits and reworded questions answered with a prediction, without, and by "
        "llama.cpp (0: skip)",
    )
    parser.add_argument(
        "--predicted-tokens", type=int_at_least(1), default=96, help="tokens per such answer"
    )
    parser.add_argument(
        "--no-peer",
        action="store_true",
        help="do not start llama.cpp's server for --support and --predicted",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    figures = run(args.context, args.steps, args.rounds, args.rows, args.answers)
    if args.support:
        figures["support"] = support_figures(
            args.support, args.support_tokens, peer=not args.no_peer
        )
    if args.predicted:
        figures["predicted"] = predicted_figures(
            args.predicted, args.predicted_tokens, peer=not args.no_peer
        )
    return print_figures(figures, as_json=args.json)


def run(context: int, steps: int, rounds: int, rows: int = 1, answers: int = 0) -> dict[str, Any]:
    for key, value in (("--context", context), ("--steps", steps), ("--rounds", rounds)):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", key=key)
    if rows < 1:
        raise ConfigError(f"must be at least 1, got {rows}", key="--rows")
    if answers < 0:
        raise ConfigError(f"must be at least 0, got {answers}", key="--answers")
    torch = require("torch", extra="runtime")
    transformers = require("transformers", extra="runtime")
    model = load_causal_lm()
    split = split_over_cores(model)

    def our_cache() -> Any:  # room for the prompt, as the engine's cold prefill has
        return new_cache(room=context)

    variants: dict[str, tuple[Any, Callable[[], Any]]] = {
        "transformers": (model, transformers.DynamicCache),
        "reserved_kv": (model, our_cache),
        "split_cores": (split, transformers.DynamicCache),
        "engine": (engine_model(model, "none"), our_cache),
    }
    for mode in QUANTIZED:
        variants[f"engine_{mode}"] = (engine_model(model, mode), our_cache)
    generator = torch.Generator().manual_seed(context)
    prompt = torch.randint(100, 40_000, (rows, context), generator=generator)
    step_ms: dict[str, list[float]] = {name: [] for name in variants}
    prefill_s: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, list[int]] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (lm, make_cache) in variants.items():
                seconds, per_step, produced = _decode(torch, lm, make_cache(), prompt, steps)
                prefill_s[name].append(seconds)
                step_ms[name].append(per_step)
                tokens[name] = produced
    medians = {name: statistics.median(values) for name, values in step_ms.items()}
    floats = [name for name in variants if name.removeprefix("engine_") not in QUANTIZED]
    return {
        "context_tokens": context,
        "rows": rows,
        "steps": steps,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "step_ms": {name: round(value, 1) for name, value in medians.items()},
        "speedup_vs_transformers": {
            name: round(medians["transformers"] / value, 2) for name, value in medians.items()
        },
        "prefill_tokens_per_s": {
            name: round(rows * context / statistics.median(values))
            for name, values in prefill_s.items()
        },
        "same_tokens": all(tokens[name] == tokens["transformers"] for name in floats),
        "quality": {
            f"engine_{mode}": _agreement(
                variants["engine"][0], variants[f"engine_{mode}"][0], answers
            )
            for mode in QUANTIZED
        }
        if answers
        else {},
    }


def _agreement(reference: Any, candidate: Any, answers: int) -> dict[str, Any]:
    """How often ``candidate`` answers the chat questions as ``reference`` does, greedily."""
    torch = require("torch", extra="runtime")
    tokenizer = load_tokenizer()
    questions = [text for pair in KB_QUESTIONS for text in pair]
    questions = [questions[i % len(questions)] for i in range(answers)]
    matched = total = identical = 0
    with torch.inference_mode():
        for question in questions:
            prompt = torch.tensor([render_chat(tokenizer, [{"role": "user", "content": question}])])
            expected = _answer(torch, reference, prompt, tokenizer.eos_token_id)
            got = _answer(torch, candidate, prompt, tokenizer.eos_token_id)
            identical += got == expected
            # Given the reference's tokens so far, does the candidate pick the same next one?
            sequence = torch.cat([prompt, torch.tensor([expected])], dim=1)
            logits = candidate(input_ids=sequence).logits[0, prompt.size(1) - 1 : -1]
            matched += int((logits.argmax(-1) == sequence[0, prompt.size(1) :]).sum())
            total += len(expected)
    return {
        "answers": answers,
        "token_agreement": round(matched / total, 3),
        "identical_answers": round(identical / answers, 3),
    }


def _answer(torch: Any, lm: Any, prompt: Any, eos: int, limit: int = 48) -> list[int]:
    """The greedy answer to ``prompt`` (``[1, length]``), up to ``limit`` tokens."""
    cache = new_cache(room=prompt.size(1))
    out = prefill(lm, prompt, cache)
    produced: list[int] = []
    while True:
        token = int(out.logits[0, -1].argmax())
        produced.append(token)
        if token == eos or len(produced) == limit:
            return produced
        position = torch.tensor([[prompt.size(1) + len(produced) - 1]])
        out = lm(
            input_ids=torch.tensor([[token]]),
            position_ids=position,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )


def _decode(
    torch: Any, lm: Any, cache: Any, prompt: Any, steps: int
) -> tuple[float, float, list[int]]:
    """Prefill ``prompt``, then ``steps`` greedy steps: prefill seconds, ms per step, tokens."""
    rows, length = prompt.shape
    start = time.perf_counter()
    out = prefill(lm, prompt, cache)
    seconds = time.perf_counter() - start
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    produced = [token[:, 0].tolist()]
    start = time.perf_counter()
    for step in range(steps):
        positions = torch.full((rows, 1), length + step)
        out = lm(
            input_ids=token,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        produced.append(token[:, 0].tolist())
    per_step = (time.perf_counter() - start) * 1000.0 / steps
    return seconds, per_step, [t for row in zip(*produced, strict=True) for t in row]
