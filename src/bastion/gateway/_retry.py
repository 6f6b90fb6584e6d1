"""Retry policy: which failures are worth another attempt, and how long to wait before it.

One `RetryPolicy` serves every layer that retries: the gateway (model calls), graph nodes
(`Graph.add_node(retry=...)`) and idempotent tools (`ToolRunner(retry=...)`); each layer
passes its own default for which errors are retryable unless `retry_on` says otherwise.

Exponential backoff with FULL jitter (a uniform draw in `[0, min(max_delay, base * 2**n))`,
the AWS recommendation that spreads synchronized clients best), overridden by a provider's
`Retry-After` hint. The policy is pure arithmetic: the gateway owns the clock and the sleeping,
so tests inject both and assert the computed delays without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bastion.errors import (
    ControlFlowSignal,
    ModelHTTPError,
    ModelTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    UserError,
)

Jitter = Literal["full", "none"]
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]

# Statuses a provider uses for "try again later"; other 4xx are the caller's mistake.
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one model is retried before the gateway falls back to the next one.

    `attempt_timeout` bounds each attempt (a request's `settings.timeout` wins when set);
    `deadline` bounds all attempts of one call together, back-off sleeps included. A
    `Retry-After` longer than `max_retry_after` is not waited for: the model is given up
    so the fallback chain can answer sooner. `retry_on` (exception types or a predicate)
    replaces the layer's default choice of retryable errors; control-flow signals (interrupts)
    are never retried.
    """

    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0
    jitter: Jitter = "full"
    attempt_timeout: float | None = None
    deadline: float | None = None
    max_retry_after: float = 60.0
    retry_on: RetryOn | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UserError(f"RetryPolicy.max_attempts must be >= 1 (got {self.max_attempts}); use 1 for no retries")
        if self.base_delay < 0 or self.max_delay < 0:
            raise UserError("RetryPolicy delays must be >= 0 seconds")
        if self.jitter not in ("full", "none"):
            raise UserError(f"RetryPolicy.jitter must be 'full' or 'none', not {self.jitter!r}")

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def should_retry(self, error: BaseException, default: Callable[[BaseException], bool] | None = None) -> bool:
        """Whether `error` is worth another attempt (attempts left aside): `retry_on` if set,
        else `default` (the calling layer's rule; the gateway's `is_retryable` when None)."""
        if isinstance(error, ControlFlowSignal):
            return False
        if self.retry_on is None:
            return (default or is_retryable)(error)
        if isinstance(self.retry_on, tuple):
            return isinstance(error, self.retry_on)
        return self.retry_on(error)

    def backoff(self, failures: int, rand: Callable[[], float]) -> float:
        """The delay after the `failures`-th consecutive failure (1-based), before any hint."""
        cap = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        return rand() * cap if self.jitter == "full" else cap

    def delay(self, error: BaseException, failures: int, rand: Callable[[], float]) -> float | None:
        """Seconds to wait before the next attempt, or None when `error` must not be retried."""
        if failures >= self.max_attempts or not self.should_retry(error):
            return None
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None
            return max(0.0, error.retry_after)
        return self.backoff(failures, rand)


def is_retryable(error: BaseException) -> bool:
    """Rate limits, 5xx/unavailable and timeouts; never caller mistakes (other 4xx,
    context window, invalid arguments) because repeating them cannot succeed."""
    if isinstance(error, ProviderUnavailableError | ModelTimeoutError | TimeoutError):
        return True
    if isinstance(error, ModelHTTPError):
        return error.status in _RETRYABLE_STATUS or error.status >= 500
    return False


__all__ = ["Jitter", "RetryOn", "RetryPolicy", "is_retryable"]
