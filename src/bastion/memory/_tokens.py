"""Token counting for context budgets, per model family.

Exact counts need the model's own tokenizer. In order of preference:
1. the model itself: `count_tokens(text)` / `tokenize(bytes)` if it has them, and for the
   gateway's llama.cpp `local:` models the GGUF file's own tokenizer;
2. a Hugging Face `tokenizer.json` given explicitly (`tokenizers` library);
3. a fast calibrated estimate per family (characters per token for ASCII text, with
   non-ASCII text counted denser), rounded up and padded by a safety margin so budgets are
   not overrun when the estimate is off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bastion.errors import MissingExtraError
from bastion.types import Message, TextPart, ToolCall, ToolResult

MESSAGE_OVERHEAD = 4
"""Tokens a chat format spends per message on role markers and separators (OpenAI's ~3-4)."""

# Characters per token for English prose by family. OpenAI o200k and Gemini ~4; Claude's
# tokenizer is denser (~3.5); Gemma/Llama SentencePiece ~3.8; unknown models: conservative.
_CHARS_PER_TOKEN: dict[str, float] = {
    "openai": 4.0,
    "azure": 4.0,
    "anthropic": 3.5,
    "gemini": 4.0,
    "google": 4.0,
    "local": 3.8,
    "llamacpp": 3.8,
}
_DEFAULT_CPT = 3.5


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text for one model family."""

    def count(self, text: str) -> int: ...


class EstimateCounter:
    """A fast estimate: ASCII characters / chars-per-token, plus non-ASCII characters at
    `non_ascii` tokens each (CJK is about one token per character), times `1 + margin`."""

    def __init__(self, chars_per_token: float = _DEFAULT_CPT, *, non_ascii: float = 0.8, margin: float = 0.1):
        self.chars_per_token = chars_per_token
        self.non_ascii = non_ascii
        self.margin = margin

    def count(self, text: str) -> int:
        if not text:
            return 0
        ascii_chars = len(text.encode("ascii", "ignore"))
        other = len(text) - ascii_chars
        raw = ascii_chars / self.chars_per_token + other * self.non_ascii
        return math.ceil(raw * (1.0 + self.margin))


class TokenizerCounter:
    """Exact counts from a Hugging Face `tokenizer.json` (the `tokenizers` library)."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise MissingExtraError("embed", "tokenizers", "Counting tokens with a tokenizer file") from e
        self._tokenizer = Tokenizer.from_file(str(path))
        # Files exported for embedding models often pad/truncate to a fixed length.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids) if text else 0


class ModelCounter:
    """Counts with the model's own tokenizer (`count_tokens(text)` or llama.cpp's `tokenize`)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def count(self, text: str) -> int:
        if not text:
            return 0
        if hasattr(self._model, "count_tokens"):
            return int(self._model.count_tokens(text))
        return len(self._model.tokenize(text.encode("utf-8"), add_bos=False))


class LlamaCppCounter:
    """Exact counts for `local:` models: the llama.cpp tokenizer of the process-wide model
    (`bastion.gateway`'s loader), loaded on the first count, not at construction."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._llm: Any = None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._llm is None:
            from bastion.gateway.formats.llamacpp import load_llama

            self._llm = load_llama(self.model_name)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def family(model_name: str) -> str:
    """The family part of a `"provider:model"` address (`openai`, `anthropic`, `local` ...)."""
    provider, _, rest = model_name.partition(":")
    if not rest:
        return "unknown"
    if provider == "openai-compat":
        return "openai"
    return provider


def counter_for(model: Any = None, *, tokenizer_file: str | Path | None = None) -> TokenCounter:
    """The best counter available for `model` (a `Model`, a `"provider:model"` string or None)."""
    if tokenizer_file is not None:
        return TokenizerCounter(tokenizer_file)
    if model is not None and not isinstance(model, str):
        if hasattr(model, "count_tokens") or hasattr(model, "tokenize"):
            return ModelCounter(model)
        if getattr(model, "wire_format", None) == "llamacpp" and hasattr(model, "model_name"):
            return LlamaCppCounter(model.model_name)
        model = getattr(model, "name", None)
    if isinstance(model, str):
        return EstimateCounter(_CHARS_PER_TOKEN.get(family(model), _DEFAULT_CPT))
    return EstimateCounter()


def message_tokens(counter: TokenCounter, message: Message) -> int:
    total = MESSAGE_OVERHEAD
    for part in message.parts:
        if isinstance(part, TextPart):
            total += counter.count(part.text)
        elif isinstance(part, ToolCall):
            total += counter.count(part.name) + counter.count(json.dumps(part.arguments, ensure_ascii=False))
        elif isinstance(part, ToolResult):
            total += counter.count(part.content_text())
        else:
            total += 85  # an image reference: providers bill a low-detail image at ~85 tokens
    return total


def messages_tokens(counter: TokenCounter, messages: Sequence[Message]) -> int:
    return sum(message_tokens(counter, m) for m in messages)


__all__ = [
    "MESSAGE_OVERHEAD",
    "EstimateCounter",
    "LlamaCppCounter",
    "ModelCounter",
    "TokenCounter",
    "TokenizerCounter",
    "counter_for",
    "family",
    "message_tokens",
    "messages_tokens",
]
