"""``ctxproto bench decode [--json]``: where a decode step's time goes, and what we removed.

A chat turn on CPU is mostly decode steps once the prefix cache has removed most of
the prefill. This benchmark decodes greedily after a prompt of ``--context`` tokens
four ways, on one model object, interleaved round by round so that load from other
processes hits every variant alike:

- ``transformers``: the model as loaded, with transformers' ``DynamicCache`` — what
  plain ``generate`` does on every step;
- ``reserved_kv``: our KV layers, which append into spare room instead of copying
  the whole cache with ``torch.cat`` each step;
- ``split_cores``: the linear layers split over every CPU core;
- ``engine``: both, which is what ``Engine`` runs.

It reports the median milliseconds per step, each variant's speedup over
``transformers``, and whether all four produced the same tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from ctxproto._extras import require
from ctxproto.cli.arguments import int_at_least
from ctxproto.errors import ConfigError
from ctxproto.models.core_split import split_over_cores
from ctxproto.runtime import load_causal_lm
from ctxproto.runtime.kv_layout import new_cache

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "decode", help="decode step: transformers vs our KV layers and core-split matmuls"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--context", type=int_at_least(1), default=1800, help="prompt tokens before decoding"
    )
    parser.add_argument(
        "--steps", type=int_at_least(1), default=32, help="tokens decoded per round"
    )
    parser.add_argument("--rounds", type=int_at_least(1), default=3)
    parser.add_argument(
        "--rows", type=int_at_least(1), default=1, help="sequences decoded together"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    figures = run(args.context, args.steps, args.rounds, args.rows)
    if args.json:
        json.dump(figures, sys.stdout)
        sys.stdout.write("\n")
    else:
        for name, value in figures.items():
            print(f"{name:32s} {value}")
    return 0


def run(context: int, steps: int, rounds: int, rows: int = 1) -> dict[str, Any]:
    for key, value in (("--context", context), ("--steps", steps), ("--rounds", rounds)):
        if value < 1:
            raise ConfigError(f"must be at least 1, got {value}", key=key)
    if rows < 1:
        raise ConfigError(f"must be at least 1, got {rows}", key="--rows")
    torch = require("torch", extra="runtime")
    transformers = require("transformers", extra="runtime")
    model = load_causal_lm()
    split = split_over_cores(model)
    variants: dict[str, tuple[Any, Callable[[], Any]]] = {
        "transformers": (model, transformers.DynamicCache),
        "reserved_kv": (model, new_cache),
        "split_cores": (split, transformers.DynamicCache),
        "engine": (split, new_cache),
    }
    generator = torch.Generator().manual_seed(context)
    prompt = torch.randint(100, 40_000, (rows, context), generator=generator)
    step_ms: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, list[int]] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, (lm, make_cache) in variants.items():
                per_step, produced = _decode(torch, lm, make_cache(), prompt, steps)
                step_ms[name].append(per_step)
                tokens[name] = produced
    medians = {name: statistics.median(values) for name, values in step_ms.items()}
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
        "same_tokens": all(produced == tokens["transformers"] for produced in tokens.values()),
    }


def _decode(torch: Any, lm: Any, cache: Any, prompt: Any, steps: int) -> tuple[float, list[int]]:
    """Prefill ``prompt``, then time ``steps`` greedy steps; ms per step and the tokens."""
    rows, length = prompt.shape
    out = lm(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1)
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
    return per_step, [t for row in zip(*produced, strict=True) for t in row]
