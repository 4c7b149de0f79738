"""The context that flows through the stages, and the chat request it comes from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ctxproto.documents import Document
from ctxproto.limits import MAX_REQUEST_BYTES, read_text_capped
from ctxproto.messages import Message, known_fields, text_only
from ctxproto.text.turns import pair_tool_calls

__all__ = ["ChatRequest", "Context"]


class Context(BaseModel):
    """Everything a prompt may be built from, split by how long it lives.

    Stages return a new ``Context`` (``model_copy(update=...)``) rather than
    mutating this one, so a pipeline run is reproducible and each stage's report
    compares a before and an after.

    - ``system_prompt``: instructions; always pinned, most stable.
    - ``summary``: long-lived memory of turns that left the recency window.
    - ``documents``: retrieved or supplied documents.
    - ``history``: earlier turns, oldest first, without the system prompt.
    - ``query``: the current user message; always pinned, rendered last.
    - ``answer``: set by a stage that answers without the model (a cache hit);
      the pipeline stops there.
    """

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = ""
    summary: str | None = None
    documents: list[Document] = Field(default_factory=list)
    history: list[Message] = Field(default_factory=list)
    query: Message | None = None
    session_id: str | None = None
    tenant_id: str = "default"
    metadata: dict[str, Any] = Field(default_factory=dict)
    answer: str | None = None
    answer_limit: int | None = Field(default=None, ge=1)
    """The most tokens the answer may have, when the caller caps it. A cache keys its
    answers by it: an answer cut at one cap is not whole under another, and a whole
    answer may be longer than a smaller cap allows."""
    repairs: list[str] = Field(default_factory=list)
    """What request validation changed or flagged in the messages' structure
    (``ChatRequest.to_context``), e.g. "dropped 1 tool result that answered no call"."""

    @property
    def query_text(self) -> str:
        """The current query's text, or an empty string when there is none."""
        return self.query.content or "" if self.query is not None else ""

    @property
    def open_question(self) -> Message | None:
        """The question the model must answer when there is no separate ``query``.

        A request that ends on a tool result has no query (``ChatRequest.to_context``):
        the last user message of the history is then what the newest results answer,
        and the recency window and the assembler keep it as they keep a query. Without
        it the model was sent the tool results alone, or nothing. ``None`` when there
        is a query, or no user message at all.
        """
        if self.query is not None:
            return None
        return next((m for m in reversed(self.history) if m.role == "user"), None)


class ChatRequest(BaseModel):
    """An OpenAI-style chat request: ``{"messages": [...]}`` plus optional ``documents``.

    Unknown top-level keys (``model``, ``temperature``...) are kept in
    ``extra`` and ignored by the stages, so a real chat-completions body can be
    passed as it is. A message with an image, audio or file part is refused
    (``text_only``): the stages read text, and would send it on without that part.
    """

    model_config = ConfigDict(extra="allow")

    messages: list[Message]
    documents: list[Document] = Field(default_factory=list)
    session_id: str | None = None
    tenant_id: str = "default"

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return text_only(data)

    @field_validator("messages")
    @classmethod
    def _well_formed(cls, messages: list[Message]) -> list[Message]:
        if not messages:
            raise ValueError("a chat request needs at least one message")
        if not any(m.role == "user" for m in messages):
            # Nothing to answer: the stages kept none of it, and the model was sent
            # no messages at all (OpenAI refuses that, as an empty array).
            raise ValueError("a chat request needs a user message, the question to answer")
        pair_tool_calls(messages)  # refuses a request ending in unanswered tool calls
        return messages

    def to_context(self) -> Context:
        """Split the flat message list into system prompt, history and current query.

        Leading system/developer messages form the system prompt. The last user
        message is the query when it is the final message; otherwise (a request
        ending on a tool result, say) there is no separate query and everything
        stays in the history.

        Tool calls and results that do not pair up are dropped first
        (``pair_tool_calls``), and a system or developer message later in the
        history is kept where it is; both are listed in ``Context.repairs``.
        """
        paired = pair_tool_calls(self.messages)
        messages = paired.messages
        system_parts: list[str] = []
        while messages and messages[0].role in ("system", "developer"):
            system_parts.append(messages.pop(0).content or "")
        query = None
        if messages and messages[-1].role == "user":
            query = messages.pop()
        repairs = paired.repairs
        later = sum(m.role in ("system", "developer") for m in messages)
        if later:
            plural = "s" if later > 1 else ""
            repairs.append(f"left {later} system message{plural} in mid-history in place")
        return Context(
            system_prompt="\n\n".join(system_parts),
            history=messages,
            query=query,
            documents=list(self.documents),
            session_id=self.session_id,
            tenant_id=self.tenant_id,
            repairs=repairs,
        )

    @classmethod
    def from_openai(
        cls,
        messages: Iterable[dict[str, Any]],
        *,
        documents: list[dict[str, Any]] | None = None,
        session_id: str | None = None,
        tenant_id: str = "default",
    ) -> ChatRequest:
        """A request of messages as OpenAI clients send and receive them; fields the
        SDK does not model (an assistant message's ``annotations``) are left out,
        and a ``refusal`` beside no content is the message's text. Invalid messages
        are a ``ConfigError`` naming the field."""
        from ctxproto.config import validation_error_to_config_error

        # Only the dicts of a sequence (a list, a tuple, a generator) are trimmed to the
        # known fields; anything else is left for validation to name ("messages",
        # "messages[0]"), where ``known_fields`` raised a bare ``AttributeError``
        # (``run_messages("hi")``, a list of ``Message`` objects).
        if isinstance(messages, Iterable) and not isinstance(messages, (str, bytes, Mapping)):
            messages = [known_fields(m) if isinstance(m, dict) else m for m in messages]
        try:
            return cls.model_validate(
                {
                    "messages": messages,
                    "documents": documents or [],
                    "session_id": session_id,
                    "tenant_id": tenant_id,
                }
            )
        except ValidationError as exc:
            raise validation_error_to_config_error(exc) from None

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> ChatRequest:
        """A request of a chat-completions body (``{"messages": [...], ...}``) as a dict;
        an invalid one is a ``ConfigError`` naming the key, as from a request file.

        ``model_validate`` reads the same body, but raises pydantic's
        ``ValidationError``, which a caller catching the SDK's errors lets through.
        """
        from ctxproto.config import validation_error_to_config_error

        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise validation_error_to_config_error(exc, data=body) from None

    @classmethod
    def from_json_file(cls, path: str) -> ChatRequest:
        """Read a request file; an unreadable, oversized or invalid one is a ``ConfigError``.

        The file is read with the ``MAX_REQUEST_BYTES`` cap and must be UTF-8.
        """
        from ctxproto.config import validation_error_to_config_error

        raw = read_text_capped(path, limit=MAX_REQUEST_BYTES, what="request")
        try:
            return cls.model_validate_json(raw)
        except ValueError as exc:
            raise validation_error_to_config_error(exc, file=path) from exc
