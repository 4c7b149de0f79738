"""The local engine: a transformers causal LM behind a scheduler with prefix-KV reuse.

One scheduler thread owns the model, the radix cache and the running batch. Each
loop it admits waiting requests — longest cached prefix first, SGLang's
"longest prefix match" policy — prefilling only the tokens the cache does not
hold, inserts each prompt's KV right after its prefill (so requests admitted in
the same round already share it), then decodes every running request by one
token — or, for a greedy request running alone, by as many tokens as one forward
pass confirms of a draft looked up in its prompt (``speculation.py``). A finished
request inserts prompt + answer, so the next chat turn reuses
the previous answer too. Callers on any thread submit requests and read text
deltas or the final completion from their handle.
"""

from __future__ import annotations

import atexit
import operator
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Literal, get_args

from ctxproto._extras import require
from ctxproto.errors import BackendError, BackendUnavailableError, ConfigError, CtxprotoError
from ctxproto.messages import well_formed
from ctxproto.models.bf16_linear import to_bf16
from ctxproto.models.core_split import split_over_cores
from ctxproto.models.fused_decoder import fuse_decoder_layers
from ctxproto.models.int8_linear import quantize_int8
from ctxproto.models.loader import load_causal_lm, load_tokenizer
from ctxproto.models.openmp import release_thread_pool
from ctxproto.models.packed_linear import pack_linear_layers
from ctxproto.runtime.attention import use_gqa_sdpa
from ctxproto.runtime.batch import DecodeBatch
from ctxproto.runtime.chat_template import render_chat, render_head
from ctxproto.runtime.detokenizer import IncrementalDetokenizer
from ctxproto.runtime.kv_layout import KVStorePool, cache_from_spans, new_cache, row_kv_slice
from ctxproto.runtime.params import Completion, GenerationParams
from ctxproto.runtime.prefill import prefill
from ctxproto.runtime.radix_cache import (
    EVICTIONS,
    CacheStats,
    Eviction,
    KVSlice,
    RadixKVCache,
    common_prefix_length,
)
from ctxproto.runtime.request import Request, RequestHandle, thread_wait
from ctxproto.runtime.sampling import request_generator, sample_next
from ctxproto.runtime.speculation import PromptLookup

__all__ = ["QUANTIZE_MODES", "Engine", "QuantizeMode", "engine_model", "resolve_quantize"]

EXIT_WAIT_S = 10.0
"""How long the interpreter's exit waits for a running engine's step to end."""

_running: weakref.WeakSet[Engine] = weakref.WeakSet()
"""Engines whose scheduler thread was started: closed when the interpreter exits."""


@atexit.register
def _close_running_engines() -> None:
    """Stop every engine a program left open before the interpreter tears down.

    The scheduler is a daemon thread; left running into the interpreter's
    shutdown, it could be inside torch when the runtime's threads are torn
    down, and the process died with "terminate called without an active
    exception" (exit 134) after a script had printed its answer.
    """
    for engine in list(_running):
        engine.close(timeout=EXIT_WAIT_S)  # past it, the daemon thread is left as before


DEFAULT_CACHE_BYTES = 1 << 30

QuantizeMode = Literal["auto", "none", "int8_head", "int8", "int8_weights", "bf16"]
"""``auto`` (the default): ``none``; ``none``: float weights (on CPU multiplied from
the GGUF file's own blocks where the weights are blocks, ``packed_linear``; the same
float32 weights); ``int8_head``: an int8 LM head whose best candidates are rescored in float,
so greedy answers stay float32's; ``int8``: every linear layer int8;
``int8_weights``: every linear layer's weights int8, its inputs only rounded to
bfloat16; ``bf16``: every linear layer's weights and inputs bfloat16. The rounded
modes run on CPU only; docs/runtime.md reports their quality. The session's and the
server's config accept exactly these."""

QUANTIZE_MODES: tuple[str, ...] = get_args(QuantizeMode)


def resolve_quantize(quantize: str) -> str:
    """The mode ``auto`` stands for; any other mode as it is.

    ``auto`` is float32 everywhere. On CPU it was the int8 head (a quarter of the
    head's bytes, its best candidates rescored in float32) until the float layers
    multiplied from the GGUF file's Q8_0 blocks, which read about as few bytes with
    exact float32 weights: both decoded at about the same rate (docs/runtime.md).
    """
    return "none" if quantize == "auto" else quantize


def _on_cpu(device: str) -> bool:
    return str(device).split(":")[0] == "cpu"


class Engine:
    """Runs chat requests on one causal LM, reusing cached prefixes across requests.

    ``prefix_cache=False`` turns reuse off (every prompt is computed in full), which
    is what the equality tests and the benchmark compare against. ``quantize``
    (``QUANTIZE_MODES``) multiplies by int8 or bfloat16 weights on CPU; past the
    LM head (``int8_head``), answers may differ from float32's, and the default,
    float32 from the GGUF file's blocks, decodes as fast (docs/runtime.md);
    ``self.quantize`` is the mode resolved.
    ``speculate`` (on by default; all but ``int8`` and ``bf16``) lets a greedy request that
    decodes alone check several tokens drafted from its prompt per forward pass;
    its tokens are those of one-token steps (docs/runtime.md, "Speculative
    prompt-lookup decoding").
    ``eviction`` picks which cached span makes room when the cache is full
    (``RadixKVCache``): ``reuse`` keeps conversations that come back ahead of
    those that do not; ``lru`` is plain least recently used.
    """

    def __init__(
        self,
        model: str = "default",
        *,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 8,
        prefix_cache: bool = True,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        offload_bytes: int = 0,
        quantize: str = "auto",
        speculate: bool = True,
        eviction: Eviction = "reuse",
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError("must be at least 1", key="max_batch_size")
        for key, size in (("cache_bytes", cache_bytes), ("offload_bytes", offload_bytes)):
            if size < 0:  # the cache checks too, as its own max_bytes, after the model loads
                raise ConfigError("must not be negative", key=key)
        if eviction not in EVICTIONS:  # the cache checks too, but only after the model loads
            raise ConfigError(f"must be one of {', '.join(EVICTIONS)}", key="eviction")
        if quantize not in QUANTIZE_MODES:
            raise ConfigError(f"must be one of {', '.join(QUANTIZE_MODES)}", key="quantize")
        quantize = resolve_quantize(quantize)
        if quantize != "none" and not _on_cpu(device):
            raise ConfigError("int8 and bf16 weights run on the CPU only", key="quantize")
        self.model = engine_model(load_causal_lm(model, device, dtype), quantize)
        self.quantize = quantize
        self.tokenizer = load_tokenizer(model)
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache
        # The modes whose verifying forward is tested to give the one-token steps' tokens.
        # bf16: oneDNN may sum a product of several rows in another order than one
        # row's (an Intel Xeon with AVX512-BF16 did), so a verify could disagree with
        # a one-token step (docs/runtime.md).
        self.speculate = speculate and quantize in ("none", "int8_head", "int8_weights")
        self.cache = RadixKVCache(
            cache_bytes if prefix_cache else 0,
            offload_max_bytes=offload_bytes if prefix_cache else 0,
            device=self.model.device,
            eviction=eviction,
        )
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._vocab_size = int(self.model.config.vocab_size)
        self._eos_ids = _eos_ids(self.model, self.tokenizer)
        self._batch = DecodeBatch(self.model)
        # On a GPU the caching allocator already reuses freed memory: no pool there.
        self._stores = KVStorePool() if self.model.device.type == "cpu" else None
        self._waiting: list[Request] = []
        self._joining: list[tuple[Request, Any]] = []
        """Requests prefilled this round that have not joined the batch yet."""
        self._wake = threading.Condition()
        self._closed = False
        self._failure: BackendError | None = None
        """Why the scheduler thread stopped, if something escaped it: no request is served after."""
        self._thread: threading.Thread | None = None
        # Decode steps run on the scheduler thread; see models/openmp.py for why the
        # thread that loaded the model must not keep OpenMP workers of its own.
        release_thread_pool()

    # ----- entry points -------------------------------------------------------------------

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return render_chat(self.tokenizer, messages)

    def submit_chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams | None = None,
        *,
        cache_namespace: str = "",
    ) -> RequestHandle:
        """``submit`` on chat messages, keeping cached only the tokens of the first
        ``params.cache_messages`` of them (all when it is ``None``)."""
        prompt = self.encode_chat(messages)
        keep = params.cache_messages if params is not None else None
        cache_tokens = None
        if keep is not None:
            head = render_head(self.tokenizer, messages[:keep]) if keep else []
            cache_tokens = None if head is None else common_prefix_length(head, prompt)
        return self.submit(
            prompt, params, cache_namespace=cache_namespace, cache_tokens=cache_tokens
        )

    def submit(
        self,
        prompt: list[int],
        params: GenerationParams | None = None,
        *,
        cache_namespace: str = "",
        cache_tokens: int | None = None,
    ) -> RequestHandle:
        """Queue one request on prompt token ids; returns at once.

        Requests share cached prefixes only within one ``cache_namespace`` (a tenant).
        ``cache_tokens`` caps what the request leaves in the prefix cache to that
        many leading tokens (``None``: its prompt and answer), for a caller that
        knows the rest will not be sent again.
        """
        params = params or GenerationParams()
        if cache_tokens is not None and cache_tokens < 0:
            raise ConfigError("must not be negative", key="cache_tokens")
        prompt = _token_ids(prompt)
        if not prompt:
            raise ConfigError("the prompt is empty", key="messages")
        lowest, highest = min(prompt), max(prompt)
        if lowest < 0 or highest >= self._vocab_size:
            # Checked here: the model would fail on it later, and report it as its own failure.
            raise ConfigError(
                f"token id {lowest if lowest < 0 else highest} is not in the model's vocabulary",
                key="prompt",
                expected=f"ids from 0 to {self._vocab_size - 1}",
            )
        if len(prompt) >= self.context_window:
            raise ConfigError(
                f"the prompt has {len(prompt)} tokens; the model's context window is "
                f"{self.context_window} tokens, including the answer",
                key="messages",
            )
        request = Request(
            prompt=list(prompt),
            params=params,
            max_new_tokens=min(params.max_new_tokens, self.context_window - len(prompt)),
            text=IncrementalDetokenizer(self.tokenizer, params.stop),
            eos_ids=frozenset() if params.ignore_eos else self._eos_ids,
            banned_ids=self._eos_ids if params.ignore_eos else frozenset(),
            generator=request_generator(params, self.model.device),
            namespace=cache_namespace,
            cache_tokens=cache_tokens,
            drafts=self._drafts(params, len(prompt)),
        )
        with self._wake:
            if self._closed:
                raise BackendUnavailableError("the engine is closed")
            if self._failure is not None:
                raise BackendUnavailableError(f"the engine stopped: {self._failure}")
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ctxproto-engine")
                self._thread.daemon = True
                self._thread.start()
                _running.add(self)
            self._wake.notify()
        return RequestHandle(request)

    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        return self.submit_chat(messages, params).result()

    def stream(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Iterator[str]:
        return self.submit_chat(messages, params).deltas()

    async def agenerate(
        self, messages: list[dict[str, Any]], params: GenerationParams | None = None
    ) -> Completion:
        return await self.submit_chat(messages, params).aresult()

    def stats(self) -> CacheStats:
        return self.cache.stats()

    @property
    def failure(self) -> str | None:
        """Why the engine takes no more requests (closed, or its scheduler failed), or
        ``None`` while it serves: what a health check reports."""
        with self._wake:
            if self._failure is not None:
                return str(self._failure)
            return "the engine is closed" if self._closed else None

    def close(self, timeout: float | None = None) -> None:
        """Stop the scheduler; requests still queued or running fail with
        ``BackendUnavailableError``. Waits up to ``timeout`` seconds (``None``: until
        it stopped) for the step it is in, a prefill or a decode step."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(thread_wait(timeout))  # ``math.inf`` waits as ``None`` does

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- scheduler thread ---------------------------------------------------------------

    def _run(self) -> None:
        """The scheduler thread's body.

        A request's own failure (its prefill, its caching, a decode step) fails the
        requests it touched and the loop goes on. Anything else escaping the loop is a
        fault of the scheduler itself: every request queued or running fails with the
        cause, and later submits are refused at once, as vLLM's ``EngineDeadError``
        does, rather than waiting on a thread that is gone or trusting the cache's state
        after it. A caller that wants to go on creates a new engine.
        """
        try:
            self._schedule()
        except Exception as exc:
            self._stop_after(exc)

    def _schedule(self) -> None:
        torch = require("torch", extra="runtime")
        with torch.inference_mode():
            while self._next_round():
                self._admit()
                if len(self._batch):
                    try:
                        self._decode()
                    except Exception as exc:  # a model failure must not hang the callers
                        self._abort(self._batch.requests, exc)
                        self._batch.keep([])
        with self._wake:
            pending, self._waiting = self._waiting, []
        closed = BackendUnavailableError("the engine was closed before the request finished")
        self._abort([*pending, *self._batch.requests], closed)
        self._batch.keep([])

    def _stop_after(self, fault: Exception) -> None:
        """Fail every request the engine still owes an answer, and refuse new ones."""
        error = BackendError(f"the engine's scheduler failed: {fault!r}")
        error.__cause__ = fault
        with self._wake:
            self._failure = error
            pending, self._waiting = self._waiting, []
        joining = [request for request, _ in self._joining]
        for request in [*pending, *joining, *self._batch.requests]:
            request.fail(error)

    def _next_round(self) -> bool:
        with self._wake:
            if not self._closed and not self._waiting and not len(self._batch):
                release_thread_pool()  # idle: other threads' OpenMP workers may spin
            while not self._closed and not self._waiting and not len(self._batch):
                self._wake.wait()
            return not self._closed

    def _admit(self) -> None:
        """Prefill waiting requests into the batch, longest cached prefix first."""
        joining = self._joining = []
        while len(self._batch) + len(joining) < self.max_batch_size:
            with self._wake:
                if not self._waiting or self._closed:  # closing: the loop fails the rest
                    break
                best = max(self._waiting, key=self._cached_length)
                self._waiting.remove(best)
            try:
                if best.cancelled.is_set():
                    self._finish(best, None, 0)
                    continue
                cache = self._prefill(best)
                if best.finish_reason is not None:  # its first token ended it
                    self._finish(best, row_kv_slice(cache, 0, 0), len(best.prompt))
                    continue
            except Exception as exc:  # fail this request only; the others keep running
                self._abort([best], exc)
                continue
            joining.append((best, cache))
        try:
            self._batch.add(joining)
        except Exception as exc:  # fail the joiners (e.g. out of memory), keep the batch
            self._abort([request for request, _ in joining], exc)
        self._joining = []

    def _cached_length(self, request: Request) -> int:
        return self.cache.match_length(request.prompt[:-1], request.namespace)

    def _prefill(self, request: Request) -> Any:
        torch = require("torch", extra="runtime")
        prompt = request.prompt
        past, reused = new_cache(room=len(prompt)), 0
        if self.prefix_cache:
            # The last prompt token is always computed: its logits give the first token.
            match = self.cache.match_prefix(prompt[:-1], request.namespace)
            self.cache.lock(match.node)
            request.locked_node = match.node
            if match.length:
                rest = len(prompt) - match.length
                past = cache_from_spans(
                    match.spans, device=self.model.device, append=rest, pool=self._stores
                )
                reused = match.length
        request.cached_tokens = reused
        out = prefill(
            self.model,
            torch.tensor([prompt[reused:]], device=self.model.device),
            past,
            start=reused,
        )
        self.cache.count_request(cached=reused, computed=len(prompt) - reused)
        if self.prefix_cache:
            kv = row_kv_slice(past, 0, 0)
            kept = request.cacheable(prompt)
            self._relock(request, self.cache.insert(kept, kv, request.namespace))
        request.add_token(
            sample_next(out.logits[0, -1], request.params, request.generator, request.banned_ids)
        )
        request.forward_passes += 1
        return past

    def _decode(self) -> None:
        if len(self._batch) == 1 and self._decode_speculatively(self._batch.requests[0]):
            return
        logits = self._batch.step()
        keep = []
        for row, request in enumerate(self._batch.requests):
            if request.cancelled.is_set():
                request.finish_reason = "cancelled"
            else:
                request.add_token(
                    sample_next(logits[row], request.params, request.generator, request.banned_ids)
                )
                request.forward_passes += 1
            if request.finish_reason is None:
                keep.append(row)
            else:
                self._finish(request, self._batch.kv_of(row), self._batch.lengths[row])
        self._batch.keep(keep)

    def _drafts(self, params: GenerationParams, prompt_length: int) -> PromptLookup | None:
        """The draft source of a greedy request on a speculating engine, with its prediction."""
        if not (self.speculate and params.greedy):
            return None
        prediction = ()
        if params.prediction:
            prediction = self.tokenizer.encode(
                well_formed(params.prediction), add_special_tokens=False
            )
        return PromptLookup(prediction=prediction, answer_start=prompt_length)

    def _decode_speculatively(self, request: Request) -> bool:
        """Decode the batch's one greedy request by a verified draft; False: no draft.

        The draft's tokens are fed after the last token in one forward pass; the
        greedy choice after each fed token is what one-token steps would have
        produced, so the longest prefix of the draft equal to those choices, plus
        the choice after it, is emitted one token at a time (a stop token, stop
        string or the token limit ends it exactly where the plain path would).
        The KV kept is that of the emitted tokens before the last: the invariant of
        the plain path, so the radix cache only ever receives KV of emitted tokens.
        """
        drafts = request.drafts
        if drafts is None or request.cancelled.is_set():
            return False
        # Leave room for the token the model adds after the draft.
        room = request.max_new_tokens - len(request.output) - 1
        draft = drafts.draft(request.prompt + request.output, room)
        if not draft:
            return False
        start = self._batch.lengths[0]
        choices = self._batch.verify(draft, request.banned_ids)
        request.forward_passes += 1
        accepted = 0
        while accepted < len(draft) and draft[accepted] == choices[accepted]:
            accepted += 1
        emitted = 0
        for token in choices[: accepted + 1]:
            request.add_token(token)
            emitted += 1
            if request.finish_reason is not None:
                break
        # What a stop string cut off was never part of the answer: not accepted either.
        drafts.record(len(draft), min(accepted, emitted))
        self._batch.rewind(start + emitted)
        if request.finish_reason is not None:
            self._finish(request, self._batch.kv_of(0), self._batch.lengths[0])
            self._batch.keep([])
        return True

    def _finish(self, request: Request, kv: KVSlice | None, kv_length: int) -> None:
        """Cache prompt + answer (the tokens whose KV exists), release, and reply."""
        if self.prefix_cache and kv is not None and kv_length:
            tokens = request.cacheable((request.prompt + request.output)[:kv_length])
            self._relock(request, self.cache.insert(tokens, kv, request.namespace))
        self._release(request)
        request.finish()

    def _relock(self, request: Request, node: Any) -> None:
        self.cache.lock(node)
        if request.locked_node is not None:
            self.cache.unlock(request.locked_node)
        request.locked_node = node

    def _release(self, request: Request) -> None:
        if request.locked_node is not None:
            self.cache.unlock(request.locked_node)
            request.locked_node = None

    def _abort(self, requests: list[Request], exc: Exception) -> None:
        if isinstance(exc, CtxprotoError):
            error: CtxprotoError = exc
        else:
            error = BackendError(f"generation failed: {exc!r}")
        for request in requests:
            self._release(request)
            request.fail(error)


def engine_model(loaded: Any, quantize: str = "none") -> Any:
    """The engine's copy of a loaded model: float layers from GGUF blocks (their decoder
    layers fused) and split over the cores, int8 or bf16.

    Shared with ``ctxproto bench decode``, which must time what the engine runs.
    """
    quantize = resolve_quantize(quantize)
    if quantize == "int8":
        return quantize_int8(loaded)
    if quantize == "int8_weights":  # the kernel threads each product itself
        weights_int8 = quantize_int8(loaded, weights_only=True)
        if weights_int8 is not loaded:
            use_gqa_sdpa(weights_int8)
        return weights_int8
    if quantize == "bf16":  # threaded by oneDNN; splitting them over the cores is no faster
        split = to_bf16(loaded)
    else:
        # Each step returns the model itself when it changes nothing: never change the
        # caller's model, only a copy of our own.
        ours = quantize_int8(loaded, head_only=True) if quantize == "int8_head" else loaded
        ours = pack_linear_layers(ours, in_place=ours is not loaded)
        split = split_over_cores(ours, in_place=ours is not loaded)
    if split is not loaded:  # our own copy: its attention and layers may change
        use_gqa_sdpa(split)
        fuse_decoder_layers(split)  # packed Llama layers only: none under bf16
    return split


def _token_ids(prompt: Any) -> list[int]:
    """``prompt`` as a list of ints; ``ConfigError`` when it is not a flat sequence of them.

    Integer types of numpy and torch are read as the ids they hold (a 1-D tensor of
    ids, say). Anything else failed later as a bare ``TypeError`` (a string, a nested
    list), a ``RuntimeError`` (a 2-D tensor, as a tokenizer returns one) or, for float
    ids, as the model's own failure, a ``BackendError``.
    """
    try:
        if isinstance(prompt, (str, bytes, bytearray)) or getattr(prompt, "ndim", 1) != 1:
            raise TypeError  # bytes iterate as ints, and a [[5]] row reads as the id 5
        return [operator.index(token) for token in prompt]
    except TypeError:
        raise ConfigError(
            "token ids must be integers", key="prompt", expected="a flat list of token ids"
        ) from None


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i is not None)
