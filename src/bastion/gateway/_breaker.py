"""Circuit breakers, one per `provider:model` (or deployment).

closed ──(N consecutive failures, or failure rate over the last calls)──▶ open
open ──(cool-down elapsed)──▶ half_open ──(the one probe succeeds)──▶ closed
                                         └─(the probe fails)──▶ open (cool-down restarts)

Only failures that say something about the provider's health count (5xx, timeouts, rate
limits, garbage answers); a 400 or a context-window error means the provider is up, so it
counts as a success. The clock is injected so tests drive the cool-down without sleeping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bastion.errors import (
    InvalidResponseError,
    ModelHTTPError,
    ModelTimeoutError,
    ProviderUnavailableError,
    UserError,
)

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    """When a breaker opens and how long it stays open.

    `failure_rate` (0..1, off when None) opens the breaker once at least `min_calls` of the
    last `window` calls were recorded and that share of them failed, catching a flaky
    provider that never fails N times in a row.
    """

    failure_threshold: int = 5
    cooldown: float = 30.0
    failure_rate: float | None = None
    window: int = 20
    min_calls: int = 10
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise UserError("CircuitBreakerConfig.failure_threshold must be >= 1")
        if self.failure_rate is not None and not 0 < self.failure_rate <= 1:
            raise UserError("CircuitBreakerConfig.failure_rate must be in (0, 1], or None to disable it")
        if self.min_calls > self.window:
            raise UserError("CircuitBreakerConfig.min_calls cannot exceed window")


def counts_as_failure(error: BaseException) -> bool:
    """Does this error say the provider is unhealthy?"""
    if isinstance(error, ProviderUnavailableError | ModelTimeoutError | InvalidResponseError | TimeoutError):
        return True
    return isinstance(error, ModelHTTPError) and (error.status == 429 or error.status >= 500)


class CircuitBreaker:
    """The state machine for one target. Not thread-safe: it lives on one event loop."""

    __slots__ = (
        "_clock",
        "_config",
        "_failures",
        "_opened_at",
        "_probing",
        "_recent",
        "_state",
        "name",
        "on_change",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig,
        clock: Callable[[], float],
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.on_change = on_change  # called on every transition (metrics); must not raise
        self._config = config
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._recent: deque[bool] | None = deque(maxlen=config.window) if config.failure_rate else None

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self._config.cooldown:
            self._probing = False
            self._set("half_open")
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker half-opens (0 when it is not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._config.cooldown - (self._clock() - self._opened_at))

    def available(self) -> bool:
        """Would `acquire()` let a call through now? (no side effects)"""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probing)

    def acquire(self) -> bool:
        """Ask to make a call; in half-open only one probe at a time gets a yes."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def release(self) -> None:
        """The call ended without a verdict (cancelled): let another probe through."""
        self._probing = False

    def record_success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state != "closed":
            self._set("closed")
            if self._recent is not None:
                self._recent.clear()
        if self._recent is not None:
            self._recent.append(True)

    def record_failure(self) -> None:
        self._probing = False
        if self._state == "open":
            return  # a call that started before the breaker opened; do not extend the cool-down
        if self._state == "half_open":
            self._open()
            return
        self._failures += 1
        if self._recent is not None:
            self._recent.append(False)
        if self._failures >= self._config.failure_threshold or self._rate_exceeded():
            self._open()

    def record(self, error: BaseException | None) -> None:
        if error is None or not counts_as_failure(error):
            self.record_success()
        else:
            self.record_failure()

    def _rate_exceeded(self) -> bool:
        recent, rate = self._recent, self._config.failure_rate
        if recent is None or rate is None or len(recent) < self._config.min_calls:
            return False
        return recent.count(False) / len(recent) >= rate

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._set("open")

    def _set(self, state: BreakerState) -> None:
        self._state = state
        if self.on_change is not None:
            self.on_change(self.name, state)


__all__ = ["BreakerState", "CircuitBreaker", "CircuitBreakerConfig", "counts_as_failure"]
