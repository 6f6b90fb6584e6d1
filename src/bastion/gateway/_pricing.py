"""What a call cost: `genai-prices` (bundled table; cache- and service-tier aware) plus local overrides.

The table is never fetched: only the snapshot shipped inside the installed `genai-prices` wheel is
read, and only on first use (importing it takes ~250 ms, so `import bastion` never does).
Overrides come first and match `provider:model` names with shell wildcards:

    Pricing({"local:*": 0, "acme:ft-model": {"input": 1.0, "output": 2.0, "cache_read": 0.1}})

A number is USD per million tokens for every kind of token (0 = free); a dict prices each kind
(USD per million tokens; keys `input`, `output`, `cache_read`, `cache_write`, and `batch`: the
factor applied to calls made through a provider's batch API, default `BATCH_DISCOUNT` = 0.5, the
discount OpenAI, Anthropic and Google publish). An unknown model costs `None` and is logged
once, never a crash.

Batch calls (`batch=True`) are priced from the table's batch variant (genai-prices'
`processing: batch` price context); a table model without one is priced at its standard rate,
which can only overstate the cost.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bastion.errors import ConfigError
from bastion.types import ModelSettings, Usage

log = logging.getLogger("bastion.gateway")

# Our provider names -> genai-prices provider ids (others are looked up by model name alone).
_PROVIDER_IDS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "google": "google",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "together": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cohere": "cohere",
    "perplexity": "perplexity",
    "cerebras": "cerebras",
}
# Request settings that select a price variant (batch, flex/priority tiers ...).
_PRICE_CONTEXT_KEYS = ("service_tier", "processing", "speed", "route")

# What a batch call costs relative to a synchronous one when an override does not say.
BATCH_DISCOUNT = 0.5

DEFAULT_OVERRIDES: dict[str, float | Mapping[str, float]] = {"local:*": 0, "test:*": 0}


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_read: float | None = None  # None: priced as input
    cache_write: float | None = None
    batch: float = BATCH_DISCOUNT  # factor for calls made through a batch API

    @classmethod
    def parse(cls, pattern: str, value: float | Mapping[str, float]) -> Rates:
        if isinstance(value, int | float):
            return cls(float(value), float(value))
        unknown = set(value) - {"input", "output", "cache_read", "cache_write", "batch"}
        if unknown or "input" not in value or "output" not in value:
            raise ConfigError(
                f"price override for {pattern!r} must be a number (USD per million tokens) or a dict with "
                f"'input' and 'output' (optional 'cache_read', 'cache_write', 'batch'); got keys {sorted(value)}"
            )
        return cls(
            float(value["input"]),
            float(value["output"]),
            None if value.get("cache_read") is None else float(value["cache_read"]),
            None if value.get("cache_write") is None else float(value["cache_write"]),
            float(value.get("batch", BATCH_DISCOUNT)),
        )

    def cost(self, usage: Usage) -> float:
        cached = usage.cache_read_tokens + usage.cache_write_tokens
        plain = max(0, usage.input_tokens - cached)
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        total = (
            plain * self.input
            + usage.cache_read_tokens * read
            + usage.cache_write_tokens * write
            + usage.output_tokens * self.output
        )
        return total / 1_000_000


def split_name(name: str) -> tuple[str, str]:
    """`"openai:gpt-4o"` -> (`openai`, `gpt-4o`); `openai-compat:http://h/v1#gpt-4o` -> (`openai-compat`, `gpt-4o`)."""
    provider, _, model = name.partition(":")
    if not model:
        return "", provider
    if "#" in model:
        model = model.rsplit("#", 1)[1]
    return provider, model


class Pricing:
    """Prices usage for a `provider:model` name. Overrides first, then the bundled table."""

    def __init__(
        self,
        overrides: Mapping[str, float | Mapping[str, float]] | None = None,
        *,
        use_table: bool = True,
        include_defaults: bool = True,
    ) -> None:
        merged: dict[str, float | Mapping[str, float]] = dict(DEFAULT_OVERRIDES) if include_defaults else {}
        merged.update(overrides or {})
        # Exact names are checked before patterns; later patterns win over earlier ones.
        self._exact = {k: Rates.parse(k, v) for k, v in merged.items() if not _is_pattern(k)}
        self._patterns = [(k, Rates.parse(k, v)) for k, v in reversed(merged.items()) if _is_pattern(k)]
        self._use_table = use_table
        self._resolved: dict[str, Rates | None] = {}
        self._unknown: set[str] = set()
        # Table models with plain per-token prices, priced with float arithmetic (~1 µs instead of
        # ~80 µs through calc_price); None marks models that need calc_price (tiers, dated prices).
        self._linear: dict[str, Rates | None] = {}

    def cost(
        self, model: str, usage: Usage, settings: ModelSettings | None = None, *, batch: bool = False
    ) -> float | None:
        """USD for `usage` on `model` (at batch-API rates when `batch`), or None when the model
        has no known price."""
        rates = self._override(model)
        if rates is not None:
            return rates.cost(usage) * rates.batch if batch else rates.cost(usage)
        if not self._use_table or model in self._unknown:
            return None
        if not batch and (settings is None or not settings.extra):
            linear = self._linear.get(model, _UNSET)
            if linear is _UNSET:
                linear = self._linear[model] = self._linear_rates(model)
            if (
                linear is not None
                and (linear.cache_read is not None or not usage.cache_read_tokens)
                and (linear.cache_write is not None or not usage.cache_write_tokens)
            ):
                return linear.cost(usage)
        try:
            return self._table_cost(model, usage, settings, batch)
        except LookupError:
            self._unknown.add(model)
            log.warning(
                "no price known for model %r: its cost is reported as None. Add an override, e.g. "
                "Gateway(pricing=Pricing({%r: {'input': <usd/Mtok>, 'output': <usd/Mtok>}}))",
                model,
                model,
            )
            return None

    def bound(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        settings: ModelSettings | None = None,
        *,
        batch: bool = False,
    ) -> tuple[float, float] | None:
        """An upper bound of what a call can cost, for budgets: (USD for `input_tokens` of prompt,
        USD per output token when the call may produce up to `output_tokens`), or None when the
        model has no known price. The prompt is priced at the dearer of plain input and cache
        writes (which cost more than input on some providers)."""
        rates = self._override(model)
        if rates is None and not batch and self._use_table and (settings is None or not settings.extra):
            rates = self._linear.get(model, _UNSET)
            if rates is _UNSET:
                rates = self._linear[model] = self._linear_rates(model)
        if rates is not None:  # plain per-token prices: no need to price three usages
            factor = rates.batch if batch else 1.0
            prompt = input_tokens * max(rates.input, rates.cache_write or 0.0) * factor / 1_000_000
            return prompt * _ROUND_UP, rates.output * factor / 1_000_000 * _ROUND_UP
        plain = self.cost(model, Usage(input_tokens=input_tokens), settings, batch=batch)
        if plain is None:
            return None
        written = self.cost(
            model, Usage(input_tokens=input_tokens, cache_write_tokens=input_tokens), settings, batch=batch
        )
        prompt = max(plain, written or 0.0)
        # Output is priced linearly for a given prompt size, also where tiers depend on the prompt.
        full = self.cost(
            model, Usage(input_tokens=input_tokens, output_tokens=max(1, output_tokens)), settings, batch=batch
        )
        per_output = max(0.0, ((full or 0.0) - plain) / max(1, output_tokens))
        # Round up: a reservation must never be a hair below the price charged after the call.
        return prompt * _ROUND_UP, per_output * _ROUND_UP

    def context_window(self, model: str) -> int | None:
        """The model's context window in tokens, if the price table knows it."""
        if not self._use_table:
            return None
        provider, ref = split_name(model)
        try:
            from genai_prices import data_snapshot

            _, info = data_snapshot.get_snapshot().find_provider_model(ref, None, _PROVIDER_IDS.get(provider), None)
        except LookupError:
            return None
        return info.context_window

    def _override(self, model: str) -> Rates | None:
        try:
            return self._resolved[model]
        except KeyError:
            pass
        rates = self._exact.get(model)
        if rates is None:
            for pattern, candidate in self._patterns:
                if fnmatch.fnmatchcase(model, pattern):
                    rates = candidate
                    break
        self._resolved[model] = rates
        return rates

    def _linear_rates(self, model: str) -> Rates | None:
        from decimal import Decimal

        from genai_prices import data_snapshot
        from genai_prices.types import ModelPrice

        provider, ref = split_name(model)
        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(ref, None, _PROVIDER_IDS.get(provider), None)
        except LookupError:
            return None
        prices = info.prices
        if not isinstance(prices, ModelPrice):
            return None  # dated / conditional prices: let calc_price pick the one in force
        fields = {
            k: getattr(prices, k, None) for k in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
        }
        if not all(v is None or isinstance(v, Decimal) for v in fields.values()):
            return None  # tiered by prompt size
        if fields["input_mtok"] is None or fields["output_mtok"] is None:
            return None

        def f(key: str) -> float | None:
            value = fields[key]
            return None if value is None else float(value)

        return Rates(
            float(fields["input_mtok"]), float(fields["output_mtok"]), f("cache_read_mtok"), f("cache_write_mtok")
        )

    def _table_cost(self, model: str, usage: Usage, settings: ModelSettings | None, batch: bool = False) -> float:
        from genai_prices import Usage as PriceUsage
        from genai_prices import calc_price

        provider, ref = split_name(model)
        context: dict[str, str] | None = None
        if settings is not None and settings.extra:
            extra: dict[str, Any] = settings.extra
            context = {k: v for k in _PRICE_CONTEXT_KEYS if isinstance(v := extra.get(k), str)} or None
        if batch:
            context = {**(context or {}), "processing": "batch"}
        priced = PriceUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        result = calc_price(priced, ref, provider_id=_PROVIDER_IDS.get(provider), price_context=context)
        return float(result.total_price)


_UNSET: Any = object()
_ROUND_UP = 1 + 1e-9


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


__all__ = ["BATCH_DISCOUNT", "DEFAULT_OVERRIDES", "Pricing", "Rates", "split_name"]
