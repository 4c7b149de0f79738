"""The evaluation loop: every item through the baseline and every pipeline.

The baseline is the same item with no stages and no budget (the assembler
alone), run next to each pipeline on the same items in the same process, so
every ratio compares like with like (the rule of issue 3). One row per item and
system records tokens, retention, the answer's log-probability, the reader's
answer and the pipeline's time; ``ctxproto.eval.aggregate`` turns rows into the
reported figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ctxproto.errors import ConfigError, CtxprotoError
from ctxproto.eval.dataset import EvalItem
from ctxproto.eval.logprob import AnswerLogprobScorer
from ctxproto.eval.metrics import best_subspan_em, token_f1
from ctxproto.eval.readers import Reader
from ctxproto.messages import Message
from ctxproto.pipeline import Pipeline, PipelineResult

__all__ = ["BASELINE", "DEFAULT_LOGPROB_TOLERANCE", "Evaluator", "unique_names"]

BASELINE = "baseline"
DEFAULT_LOGPROB_TOLERANCE = math.log(2.0)
"""An answer at most half as likely as with the full context still counts as retained."""

Row = dict[str, Any]


def unique_names(pipelines: Sequence[Pipeline]) -> list[str]:
    """Pipeline names made unique (``name``, ``name-2``...), never clashing with the baseline."""
    names: list[str] = []
    for pipeline in pipelines:
        base = pipeline.name if pipeline.name != BASELINE else f"{BASELINE}-pipeline"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


class Evaluator:
    """Runs items through the baseline and the pipelines and scores each prompt.

    ``scorer`` (optional) gives the gold answer's log-probability; ``reader``
    (optional) answers from each prompt. Prompts identical to the baseline's are
    not scored twice.
    """

    def __init__(
        self,
        pipelines: Sequence[Pipeline],
        *,
        scorer: AnswerLogprobScorer | None = None,
        reader: Reader | None = None,
        logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE,
    ) -> None:
        if not pipelines:
            raise ConfigError("evaluate at least one pipeline", key="pipelines")
        # The baseline lays the prompt out as the first pipeline does (tokens,
        # rendering, where documents go), so the stages alone separate the two.
        first = pipelines[0]
        self.baseline = Pipeline(
            [],
            None,
            name=BASELINE,
            tokenizer=first.tokenizer,
            render=first.render,
            counter=first.counter,
            chat_template=first.assembler.chat_template,
            documents_position=first.documents_position,
        )
        self.systems: dict[str, Pipeline] = {BASELINE: self.baseline}
        self.systems.update(zip(unique_names(pipelines), pipelines, strict=True))
        self.scorer = scorer
        self.reader = reader
        self.tolerance = logprob_tolerance

    def warm_up(self) -> None:
        """Load every stage's models before timing starts."""
        for pipeline in self.systems.values():
            pipeline.warm_up()

    def evaluate(self, item: EvalItem, on_step: Callable[[], None] | None = None) -> list[Row]:
        """One row per system for ``item``, the baseline first."""
        # Count the raw item once first: the token memo is shared, so otherwise the
        # first system would pay for tokenizing the input and the others would not.
        self.baseline.original_tokens(item.context)
        rows: list[Row] = []
        full: Row | None = None
        for name, pipeline in self.systems.items():
            row = self._run(name, pipeline, item, full)
            if name == BASELINE:
                full = row
            rows.append(row)
            if on_step is not None:
                on_step()
        for row in rows:
            row.pop("messages", None)
        return rows

    def _run(self, name: str, pipeline: Pipeline, item: EvalItem, full: Row | None) -> Row:
        row: Row = {"item_id": item.id, "system": name, **item.metadata}
        try:
            result = pipeline.run(item.context)
        except CtxprotoError as exc:
            # The pipeline gave no prompt: every score of the item is lost, not left
            # out, or a pipeline failing on its hard items would score higher.
            row.update(error=f"{type(exc).__name__}: {exc}", answer_retained=0.0)
            # Only on an item the baseline was scored on: the log-prob shares compare
            # systems over the same items, those within the scorer's limit.
            if full is not None and full.get("logprob") is not None:
                row["logprob_retained"] = 0.0
            if self.reader is not None:
                row.update(reader_em=0.0, reader_f1=0.0)
            return row
        messages = result.prompt.messages if result.prompt is not None else []
        row.update(
            original_tokens=result.original_tokens,
            prompt_tokens=result.prompt_tokens,
            compression_ratio=(
                result.original_tokens / result.prompt_tokens if result.prompt_tokens else None
            ),
            ms=result.ms,
            answer_retained=best_subspan_em(_visible_text(result), item.answers),
            messages=messages,
        )
        self._score_logprob(row, item, full if full is not None else row)
        self._read(row, result, item, full)
        return row

    def _score_logprob(self, row: Row, item: EvalItem, reference: Row) -> None:
        """Log-probability of the gold answer and its change against the full context."""
        if self.scorer is None or not row["messages"]:
            return
        if reference is not row:
            if reference.get("logprob") is None:
                return  # the full context was too long to score: nothing to compare with
            if reference.get("messages") == row["messages"]:
                row["logprob"] = reference["logprob"]
        if "logprob" not in row:
            row["logprob"] = self.scorer.score(row["messages"], item.answers[0])
        if row["logprob"] is not None:
            delta = row["logprob"] - reference["logprob"]
            row["logprob_delta"] = delta
            row["logprob_retained"] = float(delta >= -self.tolerance)

    def _read(self, row: Row, result: PipelineResult, item: EvalItem, full: Row | None) -> None:
        if self.reader is None:
            return
        answer: str | None
        if full is not None and full.get("messages") == row["messages"] and "reader_answer" in full:
            answer = full["reader_answer"]
        elif result.answer is not None:
            answer = result.answer
        else:
            try:
                answer = self.reader.answer(row["messages"])
            except CtxprotoError as exc:
                row["reader_error"] = f"{type(exc).__name__}: {exc}"
                return
        row.update(
            reader_answer=answer,
            reader_em=best_subspan_em(answer or "", item.answers),
            reader_f1=token_f1(answer or "", item.answers),
        )


def _visible_text(result: PipelineResult) -> str:
    """What the model would see: the prompt's message texts, or a stage's own answer."""
    if result.prompt is None:
        return result.answer or ""
    return "\n".join(Message.model_validate(m).text for m in result.prompt.messages)
