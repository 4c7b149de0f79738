"""Token budgets: how many tokens a prompt may take."""

from __future__ import annotations

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ctxproto._config_model import ConfigErrorModel

__all__ = ["Budget"]

SECTION_KINDS = ("memory", "documents", "history")


class Budget(ConfigErrorModel):
    """A prompt budget.

    ``prompt_limit`` is what the assembler enforces: ``max_prompt_tokens``, further
    lowered to ``context_window - reserve_answer_tokens`` when a context window is
    given (the prompt and the answer share the window; without one, the reserve
    has nothing to be taken from, and ``max_prompt_tokens`` alone is the limit).
    At least one token of the window is left for the answer, as an engine refuses
    a prompt that fills it. ``section_caps`` bound individual section kinds
    (``memory``, ``documents``, ``history``); pinned content is never cut to meet
    a cap.
    """

    model_config = ConfigDict(extra="forbid")

    max_prompt_tokens: int = Field(gt=0, description="Hard cap on the rendered prompt.")
    context_window: int | None = Field(
        default=None,
        ge=2,
        description="The model's window: at least one prompt token and one answer token.",
    )
    reserve_answer_tokens: int = Field(
        default=0, ge=0, description="Kept free for the answer in context_window."
    )
    section_caps: dict[str, int] = Field(default_factory=dict)

    @field_validator("reserve_answer_tokens")
    @classmethod
    def _reserve_needs_a_window(cls, value: int, info: ValidationInfo) -> int:
        # Without a window the reserve had nothing to come out of and was ignored
        # without a word; a reserve at or above the window is two values swapped
        # or a unit mistake, which surfaced only as a BudgetError on a later request.
        window = info.data.get("context_window")
        if value and window is None and "context_window" not in info.data:
            return value  # context_window itself failed; its own error says why
        if value and window is None:
            raise ValueError(
                "has no effect without context_window (the model's window, which the "
                "prompt and the answer share); set it, or lower max_prompt_tokens instead"
            )
        if window is not None and value >= window:
            raise ValueError(f"must be smaller than context_window ({window})")
        return value

    @field_validator("section_caps")
    @classmethod
    def _known_sections(cls, caps: dict[str, int]) -> dict[str, int]:
        # A field validator, so that an error names budget.section_caps, not budget.
        for kind, cap in caps.items():
            if kind not in SECTION_KINDS:
                raise ValueError(
                    f"unknown section '{kind}'; expected one of {', '.join(SECTION_KINDS)}"
                )
            if cap < 0:
                raise ValueError(f"the cap of '{kind}' must be >= 0, got {cap}")
        return caps

    @property
    def prompt_limit(self) -> int:
        """The number of prompt tokens the assembler guarantees not to exceed."""
        limit = self.max_prompt_tokens
        if self.context_window is not None:
            limit = min(limit, self.context_window - max(self.reserve_answer_tokens, 1))
        return limit
