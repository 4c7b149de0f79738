"""Predicted outputs in ``ctxproto bench decode``: answers whose text the caller knows.

Two kinds of request where a client can say what most of the answer will be
(OpenAI's ``prediction``, ``GenerationParams.prediction``):

- ``edit``: a section of the support knowledge base with one word misspelt, and
  "fix the spelling mistake, reply with the corrected text only"; the prediction
  is the text as sent, which the answer repeats but for the fix. The text is in
  the prompt too, so prompt-lookup drafts find much of it without a prediction:
  this measures what the prediction adds to that.
- ``reworded``: a knowledge-base question asked in other words after the first
  wording was answered (the system prompt and the whole knowledge base in front
  of both); the prediction is the first wording's answer, as a semantic cache
  that declined to serve it could offer it. The answer does not copy it unless
  the model answers the two alike.
- ``repeated``: the reworded questions again, each predicted by its own earlier
  answer (a client regenerating or retrying an answer it has): what a prediction
  that holds all along buys, the upper bound.

Each is answered greedily by ``engine`` (the default engine: prompt-lookup
drafts), ``engine_predicted`` (the same engine, sent the prediction) and
llama.cpp's server on the same GGUF file and token ids (``llama_server``; it
takes no prediction), taking turns request by request (ours in alternating
order). Reported per kind: decode tokens/s of each path (tokens after the first
over the time after the first), our tokens per forward pass with and without the
prediction, the share of the prediction's tokens the answer repeated (OpenAI's
accepted tokens over accepted and rejected), and whether the answers with and
without the prediction were the same tokens.
"""

from __future__ import annotations

import statistics
from typing import Any

from ctxproto.bench.chat_workload import KB_QUESTIONS, examples_dir
from ctxproto.bench.decode_support import llama_completion, start_peer, support_prompts
from ctxproto.runtime import Engine, GenerationParams

__all__ = ["predicted_figures"]

_EDIT = "Fix the spelling mistake in this text. Reply with the corrected text only.\n\n"


def predicted_figures(count: int, max_new_tokens: int, *, peer: bool = True) -> dict[str, Any]:
    """``count`` requests of each kind, answered with a prediction, without, and by llama.cpp."""
    engine = Engine(max_batch_size=1)
    server, peer_note = start_peer() if peer else (None, "not run (--no-peer)")
    params = GenerationParams(max_new_tokens=max_new_tokens)
    figures: dict[str, Any] = {"requests": count, "max_new_tokens": max_new_tokens}
    try:
        reworded = _reworded(engine, count, params)
        repeated = [(prompt, engine.submit(prompt, params).result().text) for prompt, _ in reworded]
        for kind, requests in (
            ("edit", _edits(engine, count)),
            ("reworded", reworded),
            ("repeated", repeated),
        ):
            figures[kind] = _serve(engine, server, requests, params)
    finally:
        engine.close()
        if server is not None:
            server.stop()
    figures["llama_server"] = peer_note
    return figures


def _edits(engine: Engine, count: int) -> list[tuple[list[int], str]]:
    """Knowledge-base sections, each with its first "the" misspelt, and the text sent."""
    sections = []
    for path in sorted((examples_dir() / "knowledge").glob("*.md")):
        for block in path.read_text(encoding="utf-8").split("\n## ")[1:]:
            body = " ".join(block.splitlines()[1:]).strip()
            if " the " in body:
                sections.append(body.replace(" the ", " teh ", 1))
    return [
        (engine.encode_chat([{"role": "user", "content": _EDIT + text}]), text)
        for text in sections[:count]
    ]


def _reworded(engine: Engine, count: int, params: GenerationParams) -> list[tuple[list[int], str]]:
    """Each reworded question, predicted by the answer to its first wording."""
    prompts = support_prompts(engine, 2 * min(count, len(KB_QUESTIONS)))
    pairs = []
    for first, reworded in zip(prompts[::2], prompts[1::2], strict=True):
        pairs.append((reworded, engine.submit(first, params).result().text))
    return pairs


def _serve(
    engine: Engine,
    server: Any,
    requests: list[tuple[list[int], str]],
    params: GenerationParams,
) -> dict[str, Any]:
    rates: dict[str, list[float]] = {}
    forwards = {"engine": 0, "engine_predicted": 0}
    tokens = dict.fromkeys(forwards, 0)
    accepted = predicted = 0
    same = True
    for index, (prompt, prediction) in enumerate(requests):
        answers = {}
        order = [("engine", params), ("engine_predicted", None)]
        for name, sent in order if index % 2 == 0 else order[::-1]:  # neither always first
            if sent is None:
                sent = params.model_copy(update={"prediction": prediction})
            handle = engine.submit(prompt, sent)
            metrics = handle.result().metrics
            answers[name] = handle.token_ids
            decode_s = (metrics.latency_ms - metrics.ttft_ms) / 1000
            if metrics.output_tokens > 1 and decode_s > 0:
                rates.setdefault(name, []).append((metrics.output_tokens - 1) / decode_s)
            forwards[name] += handle.forward_passes - 1
            tokens[name] += len(handle.token_ids) - 1
            if name == "engine_predicted":
                accepted += metrics.accepted_prediction_tokens
                predicted += metrics.accepted_prediction_tokens + metrics.rejected_prediction_tokens
        same = same and answers["engine"] == answers["engine_predicted"]
        if server is not None:
            timings = llama_completion(server, prompt, params.max_new_tokens)
            rates.setdefault("llama_server", []).append(timings["predicted_per_second"])
    decode = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    figures: dict[str, Any] = {
        "decode_tokens_per_s": decode,
        "tokens_per_forward": {
            name: round(tokens[name] / passes, 2) if passes else None
            for name, passes in forwards.items()
        },
        "prediction_repeated": round(accepted / predicted, 3) if predicted else None,
        "same_tokens": same,
    }
    for name in ("engine", "llama_server"):
        if name in decode and decode[name] > 0 and "engine_predicted" in decode:
            figures[f"predicted_vs_{name}"] = round(decode["engine_predicted"] / decode[name], 2)
    return figures
