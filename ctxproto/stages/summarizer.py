"""Fold turns that leave the recency window into a rolling, checkpointed summary."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from ctxproto.context import Context
from ctxproto.messages import Message, well_formed
from ctxproto.models.embedder import Embedder, get_embedder
from ctxproto.models.openmp import releasing_thread_pool
from ctxproto.stages.base import Stage, Transformed
from ctxproto.stages.folders import FolderOrRedisURL
from ctxproto.stages.registry import register_stage
from ctxproto.stores.session_state import SessionStore, open_session_store
from ctxproto.stores.store_url import redact_url
from ctxproto.text.protected_spans import fact_strings
from ctxproto.text.selection import centrality, select_within_budget
from ctxproto.text.sentences import split_sentences
from ctxproto.text.turns import block_of, flatten, group_blocks
from ctxproto.tokens import TokenCounter

__all__ = ["Summarizer"]

_STATE_VERSION = 1
_INSTRUCTION = (
    "Rewrite the summary so that it also covers the new messages. Keep every name, "
    "number and date exactly as written. Reply with the summary only.\n\n"
    "Summary so far:\n{summary}\n\nNew messages:\n{transcript}"
)


@register_stage("summarizer")
class Summarizer(Stage):
    """A rolling summary of the conversation outside the newest ``keep_turns`` blocks.

    Incremental and checkpointed: turns leaving the window are folded in groups
    of ``checkpoint_every``; until a group is complete they stay in the history
    verbatim and the summary does not change. Between checkpoints the rendered
    prompt therefore only grows at its end, so its prefix stays byte-identical
    and a prefix-KV cache (``ctxproto.runtime``, SGLang RadixAttention, vLLM
    APC) keeps hitting; a summary rewritten every turn (LangChain's
    ``ConversationSummaryBufferMemory``) would invalidate it every turn.

    A checkpoint is what costs: the summary and every turn after it are
    computed again. ``max_history_tokens`` lets checkpoints be rare: with a
    large ``checkpoint_every``, turns are folded when the verbatim history
    outgrows that many tokens — everything outside the window at once — so the
    prompt grows append-only for as long as the budget allows, and no turn is
    left for the assembler to drop unsummarized.

    Folding is abstractive with ``model`` (the bundled LM by default), or
    extractive — the most central sentences by embedding similarity, kept
    verbatim — when ``model`` is null, or as the fallback when the LM's summary
    is empty, longer than its input, an echo of the prompt, or drops a fact the
    user stated.

    What users state about themselves ("I live in Halifax", "my order number
    is ORD-551203") is pinned in the extractive summary: such a sentence is
    kept ahead of everything else and, once kept, stays through every later
    rewrite, oldest first. Which sentences qualify is decided by their form
    (a first-person statement carrying a fact, not a question or a request),
    never by centrality — ranked by similarity to the rest of the chat, a fact
    survives or not depending on its words (a city that happens to sit closer
    to the chatter), and a long chat of first-person requests pushes it out.

    The summary and how many turns it covers live per tenant and session in a
    session store at ``state_path`` (a folder, a ``redis://`` URL that replicas
    share, or a temporary store when null), so they survive a restart; a
    history that no longer matches what was folded (edited, or another
    conversation) is re-summarized from the start.
    """

    keep_turns: int = Field(default=6, ge=0, description="Newest blocks kept verbatim.")
    checkpoint_every: int = Field(default=4, ge=1, description="Blocks folded per rewrite.")
    max_summary_tokens: int = Field(default=256, ge=8)
    max_history_tokens: int | None = Field(
        default=None, ge=1, description="Fold all blocks outside the window past this."
    )
    model: str | None = "default"
    embedder: str = "default"
    device: str = "auto"
    state_path: FolderOrRedisURL | None = None
    state_idle_ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="A session's summary no fold wrote for this long is dropped "
        "(null: kept for ever); its next turn folds the history from the start.",
    )

    state_namespace: ClassVar[str] = "summaries"
    """The store namespace of the state: a subclass whose sessions are named by others
    than its own callers keeps its state apart (``ctxproto.mcp.memory``)."""

    _store: SessionStore | None = PrivateAttr(default=None)
    _embedder: Embedder | None = PrivateAttr(default=None)
    _lm: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)

    def warm_up(self) -> None:
        from ctxproto.models.device import resolve_device

        # The device is only the LM's; a bad one refused before any model loads.
        device = resolve_device(self.device) if self.model is not None else "cpu"
        self._state_store()
        if self._embedder is None:
            self._embedder = get_embedder(self.embedder)
        if self.model is not None and self._lm is None:
            from ctxproto.models.loader import load_causal_lm, load_tokenizer

            self._tokenizer = load_tokenizer(self.model)
            self._lm = load_causal_lm(self.model, device)

    def _open_store(self) -> SessionStore:
        return open_session_store(
            self.state_path, namespace=self.state_namespace, idle_ttl_s=self.state_idle_ttl_s
        )

    def close(self) -> None:
        """Close the state store ``warm_up`` opened; a Redis one holds connections until then.

        A later run opens it again.
        """
        if self._store is not None:
            self._store.close()
            self._store = None

    def forget(self, tenant_id: str, session_id: str) -> None:
        """Drop the summary kept for a session: its next run folds the history from the start.

        For a deletion: the state holds the folded text itself, and a history
        that changed is only re-summarized (and the state overwritten) by a
        later run, which may never come. Opens the state store if no run has.
        """
        self._state_store().delete(tenant_id, session_id)

    def session_stores(self) -> list[SessionStore]:
        """The state store, opened now if no run has (without loading the models), so a
        server sweeps what it holds from before this process ran; with no idle TTL
        there is nothing to sweep, and the store opens at its first use, as before."""
        if self._store is None and self.state_idle_ttl_s is None:
            return []
        return [self._state_store()]

    def _state_store(self) -> SessionStore:
        """The state store, opened if no run has (without loading the models)."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def store_checks(self) -> dict[str, Callable[[], None]]:
        if self._store is None:
            return {}
        return {f"{self.type_name} {redact_url(self._store.location)}": self._store.ping}

    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        blocks = group_blocks(context.history)
        outside = max(len(blocks) - self.keep_turns, 0)
        asked = block_of(blocks, context.open_question)
        if asked is not None:
            # A request that ends on tool results has no query: its question and the
            # calls and results after it are what the model answers, and stay verbatim
            # as a query does. Folded (``keep_turns: 0``), the prompt held neither.
            outside = min(outside, asked)
        foldable = [i for i in range(outside) if not any(m.pinned for m in blocks[i])]
        ready = len(foldable) // self.checkpoint_every * self.checkpoint_every
        if not foldable or (ready == 0 and self.max_history_tokens is None):
            return Transformed(context, {"folded_turns": 0, "checkpoints": 0})
        assert self._store is not None  # Stage.run warmed it up
        session = context.session_id or "anonymous-" + _fingerprint(blocks[:1])
        state = self._store.get(context.tenant_id, session)
        folded, summary = _resume(state, [blocks[i] for i in foldable])
        ready = max(ready, folded)
        if self._history_outgrown(blocks, set(foldable[:ready]), counter):
            ready = len(foldable)
        ready = _before_a_question(blocks, foldable, ready, folded)
        if ready == 0:
            return Transformed(context, {"folded_turns": 0, "checkpoints": 0})
        counters: dict[str, int | float] = {
            "checkpoints": 0,
            "abstractive": 0,
            "fallbacks": 0,
            "facts_dropped": 0,
        }
        while folded < ready:
            end = min(folded + self.checkpoint_every, ready)
            chunk = [blocks[i] for i in foldable[folded:end]]
            summary = self._fold(summary, flatten(chunk), counter, counters)
            folded = end
            counters["checkpoints"] += 1
            self._store.put(
                context.tenant_id,
                session,
                {
                    "version": _STATE_VERSION,
                    "folded": folded,
                    "fingerprint": _fingerprint([blocks[i] for i in foldable[:folded]]),
                    "summary": summary,
                },
            )
        gone = set(foldable[:ready])
        history = flatten([b for i, b in enumerate(blocks) if i not in gone])
        merged = "\n".join(s for s in (context.summary, summary) if s) or None
        counters["folded_turns"] = ready
        counters["summary_tokens"] = counter.count(summary)
        return Transformed(
            context.model_copy(update={"history": history, "summary": merged}), counters
        )

    def _history_outgrown(
        self, blocks: list[list[Message]], folded: set[int], counter: TokenCounter
    ) -> bool:
        """Whether the blocks left verbatim exceed ``max_history_tokens``."""
        if self.max_history_tokens is None:
            return False
        verbatim = (m for i, b in enumerate(blocks) if i not in folded for m in b)
        return sum(counter.count_message(m) for m in verbatim) > self.max_history_tokens

    def _fold(
        self,
        summary: str,
        messages: list[Message],
        counter: TokenCounter,
        counters: dict[str, int | float],
    ) -> str:
        if self._lm is not None:
            candidate = self._abstractive(summary, messages)
            source = summary + "\n" + _transcript(messages)
            facts = fact_strings(summary) | {
                f for m in messages if m.role == "user" for f in fact_strings(m.text)
            }
            if (
                candidate
                and not _echoes_prompt(candidate)
                and counter.count(candidate) < counter.count(source)
                and counter.count(candidate) <= self.max_summary_tokens
                and all(fact in candidate for fact in facts)
            ):
                counters["abstractive"] += 1
                return candidate
            counters["fallbacks"] += 1
        return self._extractive(summary, messages, counter, counters)

    def _extractive(
        self,
        summary: str,
        messages: list[Message],
        counter: TokenCounter,
        counters: dict[str, int | float],
    ) -> str:
        """User-stated facts pinned, then central sentences within the budget, all verbatim.

        Lines already in the summary are re-read with the same rules, so a fact
        once kept is forced again on every rewrite; prose an abstractive fold wrote
        (no role label) is split into sentences, and each one carrying a fact is
        forced too, since that summary was checked to hold every fact the user
        stated, and a fallback must not lose what it kept. Facts are forced oldest
        first while they fit ``max_summary_tokens``; those that no longer fit are
        counted in ``facts_dropped`` (raise ``max_summary_tokens`` when it is not
        zero). The rest of the budget goes by tier (``_tier``), then embedding
        centrality within each tier.
        """
        assert self._embedder is not None
        lines: list[str] = []
        tiers: list[float] = []
        pinned: list[bool] = []
        for line in summary.splitlines():
            if not line.strip():
                continue
            if _ROLE_LABEL.match(line):  # written by an extractive fold
                user = line.startswith("User: ")
                lines.append(line.strip())
                tiers.append(_tier(line, user=user))
                pinned.append(user and _states_user_fact(line.removeprefix("User: ")))
                continue
            for sentence in split_sentences(line):  # an abstractive fold's prose
                if sentence.strip():
                    lines.append(sentence.strip())
                    tiers.append(_tier(sentence, user=False))
                    pinned.append(bool(fact_strings(sentence)))
        for message in messages:
            for sentence in split_sentences(message.text):
                if sentence.strip():
                    user = message.role == "user"
                    lines.append(f"{message.role.capitalize()}: {sentence.strip()}")
                    tiers.append(_tier(sentence, user=user))
                    pinned.append(user and _states_user_fact(sentence))
        if not lines:
            return ""
        costs = [counter.count(line) + 1 for line in lines]
        forced = [False] * len(lines)
        room = self.max_summary_tokens
        for i in (i for i, is_fact in enumerate(pinned) if is_fact):
            if costs[i] <= room:
                forced[i] = True
                room -= costs[i]
            else:
                counters["facts_dropped"] += 1
        scores = centrality(self._embedder.embed(lines))
        keep = select_within_budget(
            [score + tier for score, tier in zip(scores, tiers, strict=True)],
            costs,
            self.max_summary_tokens,
            forced,
        )
        return "\n".join(line for line, k in zip(lines, keep, strict=True) if k)

    def _abstractive(self, summary: str, messages: list[Message]) -> str:
        prompt = _INSTRUCTION.format(summary=summary or "(empty)", transcript=_transcript(messages))
        ids = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": well_formed(prompt)}],
            add_generation_prompt=True,
            return_tensors="pt",
        )
        if not hasattr(ids, "shape"):  # newer tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        with releasing_thread_pool():  # ctxproto/models/openmp.py
            output = self._lm.generate(
                ids.to(self._lm.device),
                attention_mask=ids.new_ones(ids.shape).to(self._lm.device),
                max_new_tokens=self.max_summary_tokens,
                do_sample=False,
                pad_token_id=self._tokenizer.eos_token_id,
            )
        text: str = self._tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        return text.strip()


_ROLE_LABEL = re.compile(r"(?:System|Developer|User|Assistant|Tool): ")
"""How an extractive summary starts each line it keeps (``_extractive``)."""
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|my|mine|me|we|our|us)\b", re.IGNORECASE)
_SELF_DISCLOSURE = re.compile(
    r"\b(?:my|our)\s+(?:[\w'’-]+\s+){0,3}(?:is|are|was|were)\b", re.IGNORECASE
)


def _tier(sentence: str, *, user: bool) -> float:
    """How much a sentence must be remembered, from 3 down to 0.

    3: a user states a fact (number, date, name, ID) about themselves;
    2: a user says "my X is Y" (a preference, a relation) without such a fact;
    1: any other sentence stating a fact; 0: the rest. What users disclose about
    themselves is what a chat memory is asked about later (LoCoMo; our
    ``chat-needle`` dataset).
    """
    facts = bool(fact_strings(sentence))
    if user and facts and _FIRST_PERSON.search(sentence):
        return 3.0
    if user and _SELF_DISCLOSURE.search(sentence):
        return 2.0
    return 1.0 if facts else 0.0


_FIRST_PERSON_SUBJECT = re.compile(
    r"\b(?:I|I'm|I've|I'd|I'll|we|we're|we've|my|our)\b", re.IGNORECASE
)
_REQUEST = re.compile(
    r"\b(?:please|can you|could you|would you|will you|help me|tell me|give me|show me)\b"
    r"|\?\s*$",
    re.IGNORECASE,
)
_MAX_FACT_WORDS = 40


def _states_user_fact(sentence: str) -> bool:
    """Whether a user's sentence states a fact about the user, judged by its form alone.

    A short first-person statement (I, we, my, our as in "I live in Halifax",
    "my order number is ...") carrying a fact (number, date, name, ID) or of the
    form "my X is Y"; not a question or a request ("can you ...", "please
    ..."), which mention the user without telling anything about them. No
    word of the fact itself is looked at beyond its being one.
    """
    if len(sentence.split()) > _MAX_FACT_WORDS or _REQUEST.search(sentence):
        return False
    if not _FIRST_PERSON_SUBJECT.search(sentence):
        return False
    return bool(fact_strings(sentence)) or bool(_SELF_DISCLOSURE.search(sentence))


def _before_a_question(
    blocks: list[list[Message]], foldable: list[int], ready: int, folded: int
) -> int:
    """How many of ``foldable`` to fold: ``ready`` or fewer, so that what stays verbatim
    starts at a user message.

    Blocks are counted one per message or tool call, so a group of
    ``checkpoint_every`` (or the window) can end inside a turn; folding up to there
    left the history opening on a tool call or an answer whose question was folded
    away, which the model reads as speaking unprompted and which chat templates
    that require roles to alternate refuse. A fold ends before the next user
    message instead, short of ``ready``; only when no user message comes between
    what is already folded and ``ready`` (one turn longer than the whole group)
    does it end inside the turn.
    """
    for end in range(ready, folded, -1):
        after = foldable[end - 1] + 1
        if after == len(blocks) or blocks[after][0].role == "user":
            return end
    return ready


def _echoes_prompt(candidate: str) -> bool:
    """Small LMs often repeat the instruction's scaffolding instead of summarizing."""
    return "New messages:" in candidate or "Summary so far:" in candidate


def _transcript(messages: list[Message]) -> str:
    return "\n".join(f"{m.role.capitalize()}: {m.text}" for m in messages if m.text.strip())


def _fingerprint(blocks: list[list[Message]]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for message in flatten(blocks):
        digest.update(message.model_dump_json().encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _resume(state: dict[str, Any] | None, foldable: list[list[Message]]) -> tuple[int, str]:
    """Blocks already folded and the summary, if ``state`` matches this history; else none."""
    if not state or state.get("version") != _STATE_VERSION:
        return 0, ""
    folded = state.get("folded")
    summary = state.get("summary")
    if not isinstance(folded, int) or not isinstance(summary, str) or folded > len(foldable):
        return 0, ""
    if state.get("fingerprint") != _fingerprint(foldable[:folded]):
        return 0, ""
    return folded, summary
