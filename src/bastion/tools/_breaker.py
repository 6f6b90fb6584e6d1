"""A circuit breaker per tool: after repeated failures, calls fail fast for a while instead of
hammering a broken dependency (and burning the model's turns waiting on timeouts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class CircuitBreaker:
    """Closed → open after `failure_threshold` consecutive failures; after `reset_after`
    seconds one trial call is let through (half-open): success closes it, failure re-opens it."""

    failure_threshold: int = 5
    reset_after: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    _trial_in_flight: bool = field(default=False, repr=False)

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_after:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may proceed now (claims the single half-open trial slot)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def retry_in(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_after - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._trial_in_flight or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
        self._trial_in_flight = False


__all__ = ["BreakerState", "CircuitBreaker"]
