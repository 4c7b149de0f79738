"""The stage contract: a small pydantic model with a ``run`` over the context.

A stage's fields are its parameters, so validation, ``to_dict``/``from_dict`` and
YAML config come for free and an unknown or mistyped parameter is rejected
before anything runs (Haystack 2's rule: cheap ``__init__`` that stores its
arguments under their own names; heavy loading in ``warm_up``).

Subclasses implement ``transform``; ``run`` wraps it with timing and token
accounting so that every stage reports the same way, and checks what it
returned, so that a stage written outside ctxproto that breaks the contract is
named in a ``UsageError`` rather than failing later inside the pipeline.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from weakref import WeakSet

from pydantic import BaseModel, ConfigDict, ValidationError

from ctxproto.config import (
    ConfigErrorModel,
    StageSpec,
    allowed_keys_hint,
    validation_error_to_config_error,
)
from ctxproto.context import Context
from ctxproto.errors import ConfigError, UsageError
from ctxproto.limits import excerpt
from ctxproto.tokens import TokenCounter, get_counter

if TYPE_CHECKING:
    from ctxproto.stores.session_state import SessionStore

__all__ = ["Stage", "StageReport", "StageResult", "context_tokens"]


class StageReport(BaseModel):
    """What one stage did: tokens in and out, wall time, and its own counters."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tokens_in: int
    tokens_out: int
    ms: float
    counters: dict[str, int | float] = {}


@dataclass(frozen=True)
class StageResult:
    """A stage's new context and its report."""

    context: Context
    report: StageReport


@dataclass
class Transformed:
    """What ``transform`` returns: the new context and stage-specific counters."""

    context: Context
    counters: dict[str, int | float] = field(default_factory=dict)


class Stage(ConfigErrorModel, ABC):
    """Base class of every stage. Subclasses implement ``transform``.

    ``type_name`` is the stage's name in config files and reports:
    ``@register_stage("name")`` or an entry point sets it, and subclasses inherit
    it; a class that inherits none is named by its class name, so that it runs
    from Python as it is.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True
    )

    type_name: ClassVar[str]

    @classmethod
    def config_error(cls, exc: ValidationError, data: dict[str, Any]) -> ConfigError:
        """A bad parameter names the stage and the key.

        Built from Python (``Summarizer(keep_turns=-1)``), a stage raised pydantic's
        own ``ValidationError``, outside the exception tree; a config file's
        stages are validated apart (``Pipeline.from_dict``), which places the key
        in the file.
        """
        return parameter_error(cls, exc, data)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Name by its class a stage that inherits no name.

        Without a name, running an unregistered stage failed in an
        ``AttributeError`` on ``type_name``. A subclass of a registered stage
        keeps its parent's name: written to a config file under it, it loads
        back as the parent, whose parameters it has. A class name is not
        inherited, so each subclass of an unregistered base is named by itself.
        """
        super().__pydantic_init_subclass__(**kwargs)
        namer = next((c for c in cls.__mro__ if "type_name" in c.__dict__), None)
        if namer is None or namer in _named_by_class:
            cls.type_name = cls.__name__
            _named_by_class.add(cls)

    def warm_up(self) -> None:
        """Load heavy resources (models, stores) that are not loaded yet.

        Called before every run (``Pipeline.warm_up``, then ``run``), so it must be
        cheap once done: load into a private attribute only while it is ``None``,
        as the built-in stages do.
        """

    @abstractmethod
    def transform(self, context: Context, counter: TokenCounter) -> Transformed:
        """Return ``Transformed(new_context, counters)``; counters are numbers.

        Never change ``context`` or anything in it (its messages and documents are
        the caller's too, a ``ChatSession``'s history): build new ones with
        ``model_copy(update=...)``, which copies only what it updates.
        """

    def run(self, context: Context, counter: TokenCounter | None = None) -> StageResult:
        """Run the stage, timing it and counting the context's tokens before and after."""
        counter = counter or get_counter()
        self.warm_up()
        tokens_in = context_tokens(context, counter)
        start = time.perf_counter()
        out = self._checked(self.transform(context, counter))
        ms = (time.perf_counter() - start) * 1000.0
        try:
            report = StageReport(
                name=self.type_name,
                tokens_in=tokens_in,
                tokens_out=context_tokens(out.context, counter),
                ms=ms,
                counters=out.counters,
            )
        except ValidationError as exc:  # only the counters come from the stage
            error = exc.errors()[0]
            loc, given = error["loc"], excerpt(error.get("input"))
            if len(loc) == 1:
                problem = f"counters must be a dict of names to numbers, got {given}"
            elif "[key]" in loc:
                problem = f"counter names must be text, got {given}"
            else:
                problem = f"counter {excerpt(loc[1])} must be a number, got {given}"
            raise UsageError(f"{self._named()}: {problem}") from exc
        return StageResult(context=out.context, report=report)

    def _checked(self, out: object) -> Transformed:
        """``transform``'s result, or a ``UsageError`` naming the stage and the rule it broke.

        Unchecked, a stage that returned its context alone failed in an
        ``AttributeError``, and one with a text counter in pydantic's error about
        ``StageReport``: neither named the stage nor what it should return.
        """
        if not isinstance(out, Transformed) or not isinstance(out.context, Context):
            got = type(out.context if isinstance(out, Transformed) else out).__name__
            raise UsageError(
                f"{self._named()}: transform must return Transformed(context, counters) "
                f"with a Context, got {got}"
            )
        return out

    def _named(self) -> str:
        """The stage as an error names it: its name, and its class for whoever wrote it."""
        return f"stage '{self.type_name}' ({type(self).__module__}.{type(self).__qualname__})"

    def after_answer(self, context: Context, answer: str) -> None:
        """Called once the backend has answered the prompt this context became.

        ``context`` is the pipeline's final context (``PipelineResult.context``),
        as every stage saw it. A stage that keeps answers (a cache) files
        ``answer`` here; the default does nothing. Not called when a stage
        answered the turn itself, since the model was never asked.
        """

    def store_checks(self) -> dict[str, Callable[[], None]]:
        """The stores this stage has opened, each named by its stage and redacted location.

        Each check is one cheap round trip that raises ``StoreError`` when the
        store cannot answer, so a replica's ``/health`` can report every store
        it depends on. A stage that keeps no store, or was not warmed up, has none.
        """
        return {}

    def session_stores(self) -> list[SessionStore]:
        """The session stores this stage keeps state in, for the server's sweep of the
        sessions idle past a store's TTL (``ctxproto.serve.session_sweeper``).

        A folder store keeps an expired session's rows until swept, so a store
        left out here keeps them for ever. A stage that keeps no session state
        has none.
        """
        return []

    def to_dict(self) -> dict[str, Any]:
        """``{"type": ..., "init_parameters": {...}}``: a config file's ``StageSpec``.

        ``type`` is the name that loads this class back (``config_name``), not
        ``type_name`` as it is: a class name loads nothing, and an entry-point
        stage is named by its entry point only once a config has used it.
        """
        from ctxproto.stages.registry import config_name  # the registry imports this module

        spec = StageSpec(type=config_name(type(self)), init_parameters=self.model_dump(mode="json"))
        return spec.model_dump()


def parameter_error(
    stage: type[Stage],
    exc: ValidationError,
    parameters: dict[str, Any],
    *,
    file: str | None = None,
    prefix: str = "",
) -> ConfigError:
    """A stage's invalid parameters as a ``ConfigError`` naming the stage and the key
    (under ``prefix`` in ``file``); an unknown key lists the stage's parameters."""
    error = validation_error_to_config_error(exc, file=file, prefix=prefix, data=parameters)
    expected = error.expected
    if error.detail == "unknown key":
        given = error.key.rsplit(".", 1)[-1] if error.key else None
        expected = f"a parameter of stage '{stage.type_name}', " + allowed_keys_hint(stage, given)
    return ConfigError(
        f"stage '{stage.type_name}': {error.detail}", file=file, key=error.key, expected=expected
    )


def name_stage(stage: type[Stage], name: str) -> None:
    """Give ``stage`` its registered ``name``, which its subclasses then inherit."""
    stage.type_name = name
    _named_by_class.discard(stage)


_named_by_class: WeakSet[type[Stage]] = WeakSet()
"""The stages named by their class, a name their subclasses do not inherit."""


def context_tokens(context: Context, counter: TokenCounter) -> int:
    """Tokens of everything in a context, before any rendering or budget."""
    total = counter.count(context.system_prompt) + counter.count(context.summary or "")
    total += sum(counter.count(d.text) for d in context.documents)
    total += sum(counter.count_message(m) for m in context.history)
    if context.query is not None:
        total += counter.count_message(context.query)
    return total
