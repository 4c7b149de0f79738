"""Support answers in ``ctxproto bench decode``: speculation, and llama.cpp's server beside us.

The chat benchmarks answer one turn at a time about a support knowledge base that is
in the prompt, so answers often copy spans of it. Here each question is asked with
the bundled system prompt and the whole knowledge base (about 3.2k tokens) in front
of it, cold (no prefix cache, so every prompt is prefilled in full), and answered
greedily by:

- ``engine``: the engine as configured by default (float32 weights, on CPU
  multiplied from the GGUF file's blocks; speculative prompt-lookup decoding,
  docs/runtime.md);
- ``engine_one_token``: the engine with ``speculate=False``, one token per forward;
- ``engine_int8_head``, ``engine_bf16``, ``engine_int8_weights``: the engine with
  ``quantize="int8_head"`` (an int8 LM head rescored in float32), ``"bf16"`` and
  ``"int8_weights"`` (speculating too);
- ``llama_server``: llama.cpp's server on the same GGUF file, sent the same token
  ids on ``/completion`` with ``cache_prompt`` off; its own ``timings`` give the
  rates (``prompt_per_second``, ``predicted_per_second``).

They take turns question by question, so load from other processes hits each
alike. Decode tokens/s counts the tokens after the first over the time after the
first (the first comes out of the prefill), which is how llama.cpp counts it too;
prefill tokens/s is prompt tokens over the time to the first token.
"""

from __future__ import annotations

import http.client
import json
import statistics
import urllib.request
from pathlib import Path
from typing import Any

from ctxproto.bench.chat_workload import KB_QUESTIONS, examples_dir
from ctxproto.bench.llama_server import LlamaServer
from ctxproto.errors import BackendError
from ctxproto.runtime import Engine, GenerationParams

__all__ = [
    "OTHER_MODES",
    "llama_completion",
    "start_peer",
    "support_figures",
    "support_prompts",
]

OTHER_MODES = ("int8_head", "bf16", "int8_weights")
"""Engine modes answering beside the default (``auto``, float32): their rates, and how
many answers match the default's."""


def support_prompts(engine: Engine, count: int) -> list[list[int]]:
    """``count`` support questions, each after the system prompt and knowledge base."""
    examples = examples_dir()
    knowledge = "\n\n".join(
        path.read_text(encoding="utf-8") for path in sorted((examples / "knowledge").glob("*.md"))
    )
    system = (examples / "system_prompt.md").read_text(encoding="utf-8")
    system += "\n\nKnowledge base:\n\n" + knowledge
    questions = [text for pair in KB_QUESTIONS for text in pair]
    return [
        engine.encode_chat(
            [
                {"role": "system", "content": system},
                {"role": "user", "content": questions[i % len(questions)]},
            ]
        )
        for i in range(count)
    ]


def support_figures(count: int, max_new_tokens: int, *, peer: bool = True) -> dict[str, Any]:
    """Decode and cold prefill rates on ``count`` support answers, ours and llama.cpp's."""
    engines = {
        "engine": Engine(prefix_cache=False, max_batch_size=1),
        "engine_one_token": Engine(prefix_cache=False, max_batch_size=1, speculate=False),
        **{
            f"engine_{mode}": Engine(prefix_cache=False, max_batch_size=1, quantize=mode)
            for mode in OTHER_MODES
        },
    }
    rates: dict[str, dict[str, list[float]]] = {}
    passes = tokens = 0
    same = True
    identical = dict.fromkeys(OTHER_MODES, 0)
    server, peer_note = start_peer() if peer else (None, "not run (--no-peer)")
    try:
        prompts = support_prompts(engines["engine"], count)
        params = GenerationParams(max_new_tokens=max_new_tokens)
        for prompt in prompts:
            answers = {}
            for name, engine in engines.items():
                handle = engine.submit(prompt, params)
                metrics = handle.result().metrics
                answers[name] = handle.token_ids
                decode_s = (metrics.latency_ms - metrics.ttft_ms) / 1000
                _add(rates, name, metrics.prompt_tokens / (metrics.ttft_ms / 1000), "prefill")
                if metrics.output_tokens > 1 and decode_s > 0:
                    _add(rates, name, (metrics.output_tokens - 1) / decode_s, "decode")
                if name == "engine":
                    passes += handle.forward_passes - 1
                    tokens += len(handle.token_ids) - 1
            same = same and answers["engine"] == answers["engine_one_token"]
            for mode in OTHER_MODES:
                identical[mode] += answers[f"engine_{mode}"] == answers["engine"]
            if server is not None:
                timings = llama_completion(server, prompt, max_new_tokens)
                _add(rates, "llama_server", timings["prompt_per_second"], "prefill")
                _add(rates, "llama_server", timings["predicted_per_second"], "decode")
    finally:
        for engine in engines.values():
            engine.close()
        if server is not None:
            server.stop()
    figures: dict[str, Any] = {
        "answers": count,
        "prompt_tokens": len(prompts[0]) if prompts else 0,
        "max_new_tokens": max_new_tokens,
        "decode_tokens_per_s": _medians(rates, "decode"),
        "prefill_tokens_per_s": _medians(rates, "prefill"),
        "tokens_per_forward": round(tokens / passes, 2) if passes else None,
        "same_tokens": same,
        **{
            f"{mode}_identical_answers": round(identical[mode] / count, 3) if count else None
            for mode in OTHER_MODES
        },
        "llama_server": peer_note,
    }
    for kind in ("decode", "prefill"):
        rate = figures[f"{kind}_tokens_per_s"]
        names = [("engine", kind)] + [(f"engine_{m}", f"{m}_{kind}") for m in OTHER_MODES]
        for name, key in names:
            if "llama_server" in rate and name in rate:
                figures[f"{key}_vs_llama_server"] = round(rate[name] / rate["llama_server"], 2)
    return figures


def _add(rates: dict[str, dict[str, list[float]]], name: str, value: float, kind: str) -> None:
    rates.setdefault(kind, {}).setdefault(name, []).append(value)


def _medians(rates: dict[str, dict[str, list[float]]], kind: str) -> dict[str, float]:
    return {name: round(statistics.median(v), 1) for name, v in rates.get(kind, {}).items()}


def start_peer() -> tuple[LlamaServer | None, str]:
    """llama.cpp's server on the bundled model's GGUF file, or why it could not run."""
    from ctxproto.models.resolver import resolve_lm

    model = resolve_lm()
    if model.gguf_file is None:
        return None, "not run: the model has no GGUF file"
    server = LlamaServer(Path(model.location) / model.gguf_file, prompt_cache_ram=False)
    try:
        server.start()
    except BackendError as exc:
        return None, f"not run: {exc}"
    return server, f"ran: {server.binary}"


def llama_completion(server: LlamaServer, prompt: list[int], max_new_tokens: int) -> Any:
    """``timings`` of one greedy, uncached ``/completion`` on ``prompt``'s token ids."""
    body = {
        "prompt": prompt,
        "n_predict": max_new_tokens,
        "temperature": 0.0,
        "top_k": 1,
        "cache_prompt": False,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())["timings"]
    except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        # A server that died or answered no timings mid-run: a failure of the run,
        # said with how the process ended, not a traceback from urllib.
        exited = server.exit_reason()
        because = f" (it {exited})" if exited else ""
        raise BackendError(f"llama-server failed a completion{because}: {exc!r}") from None
