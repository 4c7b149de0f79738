"""Log-probability of the gold answer under the bundled LM, by teacher forcing.

Subspan match says whether the answer is still in the prompt; it cannot say
whether compression made the answer harder to find (a fact kept but torn from
its sentence). The log-probability the LM assigns to the gold answer after the
compressed prompt, compared with the same after the full prompt, is sensitive to
that, as LLMLingua's perplexity-based analysis is. One forward pass per prompt:
prompt and answer tokens together, logits computed only at the answer positions
(``logits_to_keep``), so the cost is the prefill of the prompt.

A forward pass over 8k tokens takes tens of seconds on 2 CPU cores, so prompts
longer than ``max_tokens`` (model tokens, the answer included) are not scored:
their value is ``None`` and the reports count how many items were scored.
"""

from __future__ import annotations

from typing import Any

from ctxproto._extras import require
from ctxproto.messages import Message, well_formed
from ctxproto.models.openmp import releasing_thread_pool

__all__ = ["DEFAULT_LOGPROB_MAX_TOKENS", "AnswerLogprobScorer"]

DEFAULT_LOGPROB_MAX_TOKENS = 2048


class AnswerLogprobScorer:
    """``score(messages, answer)``: summed log-probability (nats) of ``answer`` after the chat.

    Loads the model through ``ctxproto.models.loader`` (shared per process) on
    ``device`` (CUDA when present, else CPU);
    raises ``ModelNotAvailableError`` naming the ``runtime`` extra when torch or
    transformers are missing.
    """

    def __init__(
        self,
        model: str = "default",
        *,
        max_tokens: int = DEFAULT_LOGPROB_MAX_TOKENS,
        device: str | None = None,
    ) -> None:
        require("torch", extra="runtime")
        require("transformers", extra="runtime")
        from ctxproto.models.device import resolve_device
        from ctxproto.models.loader import load_causal_lm, load_tokenizer

        self.device = resolve_device(device or "auto")
        self.model: Any = load_causal_lm(model, self.device)
        self.tokenizer: Any = load_tokenizer(model)
        self.max_tokens = min(max_tokens, self._window_of(self.model))

    @staticmethod
    def _window_of(model: Any) -> int:
        window = getattr(model.config, "max_position_embeddings", None)
        return int(window) if window else 2048

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat rendered with the model's own template, generation prompt included."""
        plain = [{"role": m["role"], "content": Message.model_validate(m).text} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                plain, tokenize=False, add_generation_prompt=True
            )
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in plain) + "\n\nassistant: "
        ids: list[int] = self.tokenizer(well_formed(text), add_special_tokens=False)["input_ids"]
        return ids

    def score(self, messages: list[dict[str, Any]], answer: str) -> float | None:
        """Summed log-probability of ``answer``, or ``None`` when the prompt is too long."""
        torch = require("torch", extra="runtime")
        prompt = self.prompt_ids(messages)
        target: list[int] = self.tokenizer(well_formed(answer), add_special_tokens=False)[
            "input_ids"
        ]
        if not target or len(prompt) + len(target) > self.max_tokens:
            return None
        ids = torch.tensor([prompt + target], dtype=torch.long, device=self.device)
        with torch.inference_mode(), releasing_thread_pool():  # ctxproto/models/openmp.py
            logits = self.model(input_ids=ids, logits_to_keep=len(target) + 1).logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(1, ids[0, len(prompt) :].unsqueeze(1))
        return float(picked.sum())
