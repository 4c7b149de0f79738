"""Token budgets: how many tokens a prompt may take."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = ["Budget"]

SECTION_KINDS = ("memory", "documents", "history")


class Budget(BaseModel):
    """A prompt budget.

    ``prompt_limit`` is what the assembler enforces: ``max_prompt_tokens``, further
    lowered to ``context_window - reserve_answer_tokens`` when a context window is
    given. ``section_caps`` bound individual section kinds (``memory``,
    ``documents``, ``history``); pinned content is never cut to meet a cap.
    """

    model_config = ConfigDict(extra="forbid")

    max_prompt_tokens: int = Field(gt=0, description="Hard cap on the rendered prompt.")
    reserve_answer_tokens: int = Field(default=0, ge=0, description="Kept free for the answer.")
    context_window: int | None = Field(default=None, gt=0, description="The model's window.")
    section_caps: dict[str, int] = Field(default_factory=dict)

    @field_validator("reserve_answer_tokens")
    @classmethod
    def _reserve_within_prompt_cap(cls, value: int, info: ValidationInfo) -> int:
        # A reserve above the whole prompt cap is two values swapped or a unit
        # mistake; unchecked, it surfaced only as a BudgetError on a later request.
        cap = info.data.get("max_prompt_tokens")
        if cap is not None and value > cap:
            raise ValueError(f"must not exceed max_prompt_tokens ({cap})")
        return value

    @model_validator(mode="after")
    def _check(self) -> Budget:
        for kind, cap in self.section_caps.items():
            if kind not in SECTION_KINDS:
                raise ValueError(
                    f"unknown section '{kind}' in section_caps; expected one of {SECTION_KINDS}"
                )
            if cap < 0:
                raise ValueError(f"section cap for '{kind}' must be >= 0")
        if self.context_window is not None and self.reserve_answer_tokens >= self.context_window:
            raise ValueError("reserve_answer_tokens must be smaller than context_window")
        return self

    @property
    def prompt_limit(self) -> int:
        """The number of prompt tokens the assembler guarantees not to exceed."""
        limit = self.max_prompt_tokens
        if self.context_window is not None:
            limit = min(limit, self.context_window - self.reserve_answer_tokens)
        return limit
