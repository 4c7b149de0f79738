"""The OpenAI chat-completions wire types, as pydantic models field for field.

Kept in one module as vLLM's ``entrypoints/openai/protocol.py`` is: the app only
routes and streams. Requests are validated strictly (a string where a number
belongs is a 400 naming the field, as OpenAI answers) and keep unknown fields
(``extra="allow"``), which are forwarded to remote upstreams untouched.
Responses also allow extra fields, so what an upstream adds passes back.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessageParam",
    "Choice",
    "ChunkChoice",
    "CompletionTokensDetails",
    "DeltaMessage",
    "EmbeddingRequest",
    "ErrorInfo",
    "ErrorResponse",
    "InvalidationRequest",
    "InvalidationResponse",
    "ModelCard",
    "ModelList",
    "Prediction",
    "PromptTokensDetails",
    "ResponseMessage",
    "StreamOptions",
    "ToolCall",
    "Usage",
    "completion_id",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Wire):
    name: str | None = None
    arguments: str | None = None


class ToolCall(_Wire):
    """A tool call in a message; in stream deltas only ``index`` is sure to be set."""

    index: int | None = None
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class ChatMessageParam(_Wire):
    """One message of a request; ``content`` is a string or a list of content parts."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessageParam:
        # Only an assistant turn that calls tools, or that refused, may come without
        # content: OpenAI answers a refusal as ``"content": null`` beside ``refusal``,
        # and clients send that message back as history, which read as having said
        # nothing was a 400 for every later turn of the conversation.
        refusal = (self.model_extra or {}).get("refusal")
        said = self.tool_calls or (isinstance(refusal, str) and refusal)
        if self.content is None and not (self.role == "assistant" and said):
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs 'tool_call_id'")
        return self


class StreamOptions(_Wire):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class Prediction(_Wire):
    """OpenAI's Predicted Outputs: text most of the answer is expected to repeat."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["content"]
    content: str | list[dict[str, Any]]

    @property
    def text(self) -> str:
        """The content as one string; content parts are text parts, as OpenAI allows."""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatCompletionRequest(_Wire):
    """``POST /v1/chat/completions``. ``model`` may be left out: the served model answers."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    messages: list[ChatMessageParam] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, description="An int64.")
    ignore_eos: bool | None = Field(
        default=None, description="vLLM's and llama.cpp's: answer max_tokens tokens long."
    )
    n: int | None = Field(default=None, ge=1, le=1, description="Only one choice is served.")
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    prediction: Prediction | None = Field(
        default=None, description="Drafts for the bundled engine; forwarded to others."
    )
    user: str | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_a_stream(
        cls, value: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        # OpenAI answers stream_options without stream with a 400: the client expects
        # usage in a stream chunk that a plain response never has.
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when 'stream' is true")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def answer_shapers(self) -> list[str]:
        """The fields set that shape an answer beyond what it says, so the semantic
        cache, which files plain answers to plain questions, must neither serve nor
        file this request's answer: a tool call, a JSON format, an answer cut at a stop
        string or padded past its end, log-probabilities a cached answer has not.

        So do model servers' own fields that do the same (``_SERVER_SHAPERS``).

        Values that ask for a plain answer shape nothing: ``tool_choice`` "none" or
        with no tools, ``response_format`` of type "text", ``modalities`` of text
        alone, ``false`` and empty ones.
        """
        extra = self.model_extra or {}
        names = (*_ANSWER_SHAPERS, *_SERVER_SHAPERS)
        values = {name: getattr(self, name, None) or extra.get(name) for name in names}
        if values["tool_choice"] == "none" or not (values["tools"] or values["functions"]):
            values["tool_choice"] = values["function_call"] = None
        if isinstance(self.response_format, dict) and self.response_format.get("type") == "text":
            values["response_format"] = None
        if values["modalities"] == ["text"]:
            values["modalities"] = None
        return [name for name, value in values.items() if value]


_ANSWER_SHAPERS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "stop",
    "ignore_eos",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "modalities",
    "audio",
)
"""OpenAI's fields that shape an answer (``answer_shapers``); ``modalities`` and
``audio`` ask for a spoken answer, which a cached one is not."""

_SERVER_SHAPERS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "structural_tag",
    "grammar",
    "json_schema",
    "regex",
    "ebnf",
    "min_tokens",
    "stop_token_ids",
    "prompt_logprobs",
)
"""Model servers' fields that shape an answer as OpenAI's do, forwarded as unknown
fields: guided decoding (vLLM's ``guided_*``, ``structured_outputs`` and
``structural_tag``, llama.cpp's ``grammar`` and ``json_schema``, SGLang's ``regex``,
``ebnf`` and ``json_schema``) constrains it as ``response_format`` does; vLLM's
``min_tokens`` holds it past its end as ``ignore_eos`` does, ``stop_token_ids`` cuts
it as ``stop`` does, and ``prompt_logprobs`` asks what a cached answer has not. Not
skipping them, the cache served a plain answer to a request that allows two words
(an answer outside ``guided_choice``), and filed those two words for plain questions."""


def _zero_if_null(value: Any) -> Any:
    return 0 if value is None else value


_MAX_TOKEN_COUNT = 2**53 - 1
"""The largest usage count read: the largest integer a float (a Prometheus counter's
value, a JavaScript client's number) holds exactly, far above any real answer's."""

_Count = Annotated[int, BeforeValidator(_zero_if_null), Field(ge=0, le=_MAX_TOKEN_COUNT)]
"""A token count an upstream may send as null: the openai SDK's usage objects dump
every count they were not given so (``CompletionTokensDetails(reasoning_tokens=0)``
dumps ``"accepted_prediction_tokens": null``), and a server that builds its usage
with them failed every answer it gave as invalid (a 502). Read as none counted.

A negative count, or one past ``_MAX_TOKEN_COUNT``, is no count at all: the answer
is invalid, a 502 as any malformed answer (a stream's error event). Read as is, it
failed the metrics' update after the answer came (a Prometheus counter only goes
up, and holds a float), a 500 for the upstream's fault, and passed on it would
give clients a usage their billing cannot take."""


class PromptTokensDetails(_Wire):
    cached_tokens: _Count = 0


class CompletionTokensDetails(_Wire):
    accepted_prediction_tokens: _Count = 0
    rejected_prediction_tokens: _Count = 0


class Usage(_Wire):
    prompt_tokens: _Count = 0
    completion_tokens: _Count = 0
    total_tokens: _Count = 0
    # null from an upstream that serializes the openai SDK's own usage objects
    prompt_tokens_details: PromptTokensDetails | None = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails | None = Field(
        default_factory=CompletionTokensDetails
    )

    @classmethod
    def of(
        cls,
        prompt: int,
        completion: int,
        cached: int = 0,
        *,
        accepted_prediction: int = 0,
        rejected_prediction: int = 0,
    ) -> Usage:
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
            completion_tokens_details=CompletionTokensDetails(
                accepted_prediction_tokens=accepted_prediction,
                rejected_prediction_tokens=rejected_prediction,
            ),
        )


def _empty_usage_if_null(value: Any) -> Any:
    return Usage() if value is None else value


class ResponseMessage(_Wire):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_Wire):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"
    logprobs: Any = None


class ChatCompletionResponse(_Wire):
    id: str = Field(default_factory=lambda: completion_id())
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str = ""
    choices: list[Choice]
    usage: Annotated[Usage, BeforeValidator(_empty_usage_if_null)] = Field(default_factory=Usage)
    """Null from a server that dumps the openai SDK's ``ChatCompletion`` made without one."""


class DeltaMessage(_Wire):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChunkChoice(_Wire):
    index: int = 0
    delta: DeltaMessage = Field(default_factory=DeltaMessage)
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(_Wire):
    id: str = ""
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None

    def sse(self) -> bytes:
        """One server-sent event; ``usage`` appears only on the chunk that carries it."""
        payload = self.model_dump_json(exclude={"usage"} if self.usage is None else None)
        return b"data: " + payload.encode() + b"\n\n"


class EmbeddingRequest(_Wire):
    """``POST /v1/embeddings``, checked only for what forwarding it needs.

    The rest (``encoding_format``, ``dimensions``, what ``input`` holds) is the
    upstream's to judge, in its own words, as OpenAI's API would.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: str | list[Any] = Field(description="A text, or a list of texts or token ids.")


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo


class InvalidationRequest(BaseModel):
    """``POST /v1/ctxproto/invalidate``: drop the cached answers built on a source."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=1000)


class InvalidationResponse(BaseModel):
    object: Literal["ctxproto.invalidation"] = "ctxproto.invalidation"
    source: str
    dropped: int
    """How many cached answers were dropped, over every semantic cache of the pipeline."""


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "ctxproto"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
