"""Token counting for context budgets, per model family.

Exact counts need the model's own tokenizer. In order of preference:
1. the model itself: `count_tokens(text)` / `tokenize(bytes)` if it has them, and for the
   gateway's llama.cpp `local:` models the GGUF file's own tokenizer;
2. a Hugging Face `tokenizer.json` given explicitly (`tokenizers` library);
3. `tiktoken` for OpenAI models, if it is installed (it is not a dependency);
4. a calibrated estimate (`CalibratedCounter`) that weighs letters, digits, punctuation and
   whitespace separately, because tool data is much denser than prose: against the Gemma
   tokenizer, prose runs ~3.6 characters per token, JSON with numbers ~1.4 and hex ids ~1.1,
   so a characters-per-token rule tuned on prose undercounts tool output 2-3x. The weights
   are fitted on Gemma (`bench/context.py` measures the error per content type) and padded
   so the estimate errs high on prose, JSON, ids, base64 and real source code.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bastion.errors import MissingExtraError
from bastion.types import Message, TextPart, ToolCall, ToolResult, ToolSpec

MESSAGE_OVERHEAD = 5
"""Tokens a chat format spends per message on role markers and separators (OpenAI ~3-4,
Gemma's `<start_of_turn>role\n ... <end_of_turn>\n` 5)."""

TOOL_OVERHEAD = 10
"""Tokens a wire format spends per offered tool around its name, description and schema."""

# Characters per token of English prose (the plain estimate, for chunking text by size).
_DEFAULT_CPT = 3.5


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text for one model family."""

    def count(self, text: str) -> int: ...


class EstimateCounter:
    """A plain estimate for prose: ASCII characters / chars-per-token, plus non-ASCII characters
    at `non_ascii` tokens each (CJK is about one token per character), times `1 + margin`.
    It undercounts numbers and ids 2-3x: budgets use `CalibratedCounter` instead."""

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


_DIGITS = b"0123456789"
_PUNCT = b"{}[]()<>:;,.\"'`=+-*/\\_|#@!?&%$^~"
_SPACE = b" \n\t\r"
_NON_ASCII = bytes(range(128, 256))
_WORDS = re.compile(rb"[A-Za-z]+")
_CASE_SHIFTS = re.compile(rb"[a-z](?=[A-Z])|[A-Z](?=[A-Z][a-z])")  # camelCase, base64, random ids

# Tokens per unit, least-squares fitted on the Gemma 3 tokenizer over prose, source code, JSON
# (text and numbers), hex ids, UUIDs and base64 (bench/context.py re-measures the error).
# Digits cost more than a token each: SentencePiece splits numbers into single digits and the
# separators around them rarely merge; every case shift inside a word starts a new token.
_W_LETTER, _W_DIGIT, _W_PUNCT, _W_SPACE, _W_WORD, _W_SHIFT = 0.12, 1.23, 0.43, 0.39, 0.41, 1.42
_W_NON_ASCII = 0.3  # per UTF-8 byte: ~0.9 tokens per CJK character, ~0.6 per accented letter
CALIBRATED_MARGIN = 0.2
"""Padding on the fitted estimate: the fit is within about -10%/+15% per content type, so +20%
keeps it at or above the true count (short-identifier code can still be ~15% under)."""

_CACHE_SIZE = 16_384


class _CountCache:
    """Counts of recent texts: the assembler counts the same history every turn, and counting
    costs 1-8 µs a message where a lookup costs 0.04 µs (a `str` caches its own hash), so a
    2,000-message thread no longer pays milliseconds a turn to count what it counted before.
    Keyed by (hash, length), not by the text: the cache keeps no text alive, and a collision
    (64-bit hash and equal length) only makes one estimate wrong."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, int], int] = {}

    def get(self, text: str) -> int | None:
        return self._items.get((hash(text), len(text)))

    def put(self, text: str, n: int) -> int:
        if len(self._items) >= _CACHE_SIZE:
            self._items.pop(next(iter(self._items)))
        self._items[(hash(text), len(text))] = n
        return n


class CalibratedCounter:
    """A conservative estimate for models whose tokenizer is not available offline: UTF-8 bytes
    weighed by class (letters, digits, punctuation, whitespace, non-ASCII) plus words and case
    shifts, times `scale` for families with denser tokenizers than Gemma's (Claude's) and
    `1 + margin`. About 30 ns a character; long texts are cached."""

    def __init__(self, scale: float = 1.0, *, margin: float = CALIBRATED_MARGIN) -> None:
        self.scale = scale
        self.margin = margin
        self._cache = _CountCache()

    def count(self, text: str) -> int:
        if not text:
            return 0
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        data = text.encode("utf-8")
        n = len(data)
        digits = n - len(data.translate(None, _DIGITS))
        punct = n - len(data.translate(None, _PUNCT))
        space = n - len(data.translate(None, _SPACE))
        other = n - len(data.translate(None, _NON_ASCII))
        letters = n - digits - punct - space - other
        words = len(_WORDS.findall(data))
        shifts = len(_CASE_SHIFTS.findall(data))
        raw = (
            letters * _W_LETTER
            + digits * _W_DIGIT
            + punct * _W_PUNCT
            + space * _W_SPACE
            + words * _W_WORD
            + shifts * _W_SHIFT
            + other * _W_NON_ASCII
        )
        return self._cache.put(text, math.ceil(raw * self.scale * (1.0 + self.margin)))


class TiktokenCounter:
    """Exact counts for OpenAI models with `tiktoken` (used only if it is installed)."""

    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=())) if text else 0


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
        self._cache = _CountCache()

    def count(self, text: str) -> int:
        if not text:
            return 0
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        if self._llm is None:
            # The model this counter serves is about to run anyway: share its instance.
            from bastion.gateway.formats.llamacpp import load_llama

            self._llm = load_llama(self.model_name)
        return self._cache.put(text, len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)))


# Denser tokenizers than Gemma's: more tokens for the same text.
_FAMILY_SCALE: dict[str, float] = {"anthropic": 1.1}


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
        kind = family(model)
        if kind in ("local", "llamacpp") and importlib.util.find_spec("llama_cpp") is not None:
            return LlamaCppCounter(model.partition(":")[2])
        if kind in ("openai", "azure"):
            exact = _tiktoken_counter(model.partition(":")[2])
            if exact is not None:
                return exact
        return CalibratedCounter(_FAMILY_SCALE.get(kind, 1.0))
    return CalibratedCounter()


def _tiktoken_counter(model_name: str) -> TokenCounter | None:
    if importlib.util.find_spec("tiktoken") is None:
        return None
    try:
        import tiktoken  # pyright: ignore[reportMissingImports]  (optional, not a dependency)

        return TiktokenCounter(tiktoken.encoding_for_model(model_name))
    except Exception:  # unknown model, or its encoding file is not cached and cannot be fetched
        return None


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


def tools_tokens(counter: TokenCounter, tools: Sequence[ToolSpec]) -> int:
    """What the offered tools cost in the prompt: names, descriptions and JSON schemas."""
    total = 0
    for spec in tools:
        schema = json.dumps(spec.parameters, ensure_ascii=False, separators=(",", ":"))
        total += TOOL_OVERHEAD + counter.count(spec.name) + counter.count(spec.description) + counter.count(schema)
    return total


__all__ = [
    "CALIBRATED_MARGIN",
    "MESSAGE_OVERHEAD",
    "TOOL_OVERHEAD",
    "CalibratedCounter",
    "EstimateCounter",
    "LlamaCppCounter",
    "ModelCounter",
    "TiktokenCounter",
    "TokenCounter",
    "TokenizerCounter",
    "counter_for",
    "family",
    "message_tokens",
    "messages_tokens",
    "tools_tokens",
]
