"""Attempts: retries, breakers, timeouts and fallbacks for one call's plan.

`AttemptRunner.run()` walks the plan's slots (fallback chain); inside a slot every attempt
picks a deployment (load balancing, breaker permit), bounds it with the per-attempt timeout and
the call's deadline, and on a retryable failure backs off (full jitter or `Retry-After`; no
wait when the retry goes to another healthy deployment). `open_stream()` does the same up to a
stream's first event. The gateway around it owns caching, budgets, pricing and spans.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion.errors import AllModelsFailedError, ContextWindowExceededError, ModelError, ModelTimeoutError
from bastion.gateway._pricing import Pricing
from bastion.gateway._retry import RetryPolicy
from bastion.gateway._router import Deployment, Plan, Slot
from bastion.types import ModelRequest, ModelResponse, StreamEvent

log = logging.getLogger("bastion.gateway")

DEFAULT_FALLBACK_ON: tuple[type[BaseException], ...] = (ModelError,)


class DeadlineExceeded(ModelTimeoutError):
    """The call's total deadline passed: no fallback can help any more."""


@dataclass(slots=True)
class GatewayStats:
    """Counters since the gateway was created (cheap ints, read them for metrics)."""

    calls: int = 0
    retries: int = 0
    fallbacks: int = 0
    cache_hits: int = 0
    semantic_hits: int = 0
    saved_usd: float = 0.0
    cost_usd: float = 0.0
    budget_refusals: int = 0
    degraded: int = 0  # calls routed to a cheaper target because a budget ran low


class AttemptRunner:
    """Runs a plan with retries and fallbacks; counts them in `stats`."""

    def __init__(
        self,
        *,
        retry: RetryPolicy,
        fallback_on: tuple[type[BaseException], ...],
        context_windows: Mapping[str, int] | None,
        pricing: Pricing,
        stats: GatewayStats,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rand: Callable[[], float],
    ) -> None:
        self.retry = retry
        # A context-window error always falls back: a larger model is the only fix.
        self.fallback_on = (ContextWindowExceededError, *fallback_on)
        self.windows: dict[str, int | None] = dict(context_windows or {})
        self.pricing = pricing
        self.stats = stats
        self._clock = clock
        self._sleep = sleep
        self._rand = rand

    def _deadline(self) -> float | None:
        deadline = self.retry.deadline
        return None if deadline is None else self._clock() + deadline

    async def run(self, plan: Plan, request: ModelRequest, span: Any) -> tuple[ModelResponse, Deployment]:
        deadline_at = self._deadline()
        slots = plan.slots
        if len(slots) == 1:
            return await self._run_slot(slots[0], request, deadline_at, span)
        errors: list[BaseException] = []
        floor: int | None = None  # window a fallback must exceed after a context-window error
        for slot in slots:
            if floor is not None:
                window = self._window(slot)
                if window is not None and window <= floor:
                    errors.append(
                        ContextWindowExceededError(
                            f"skipped: context window {window} is not larger than {floor}", model=slot.label
                        )
                    )
                    continue
            try:
                return await self._run_slot(slot, request, deadline_at, span)
            except DeadlineExceeded:
                raise
            except Exception as e:
                if not isinstance(e, self.fallback_on):
                    raise
                errors.append(e)
                self.stats.fallbacks += 1
                if span is not None and span.recording:
                    span.add_event("bastion.fallback", {"bastion.from": slot.label, "error.type": type(e).__name__})
                if isinstance(e, ContextWindowExceededError):
                    window = self._window(slot)
                    if window is not None:
                        floor = max(floor or 0, window)
        raise AllModelsFailedError(errors)

    async def _run_slot(
        self, slot: Slot, request: ModelRequest, deadline_at: float | None, span: Any
    ) -> tuple[ModelResponse, Deployment]:
        policy = self.retry
        attempt_timeout = request.settings.timeout or policy.attempt_timeout
        failures = 0
        while True:
            deployment = slot.pick()
            timeout = self._attempt_timeout(attempt_timeout, deadline_at, deployment)
            deployment.in_flight += 1
            try:
                if timeout is None:
                    response = await deployment.model.request(request)
                else:
                    async with asyncio.timeout(timeout):
                        response = await deployment.model.request(request)
            except (ModelError, TimeoutError) as e:
                error = _as_model_error(e, deployment, timeout)
            except BaseException:
                deployment.breaker.release()
                raise
            else:
                deployment.breaker.record_success()
                return response, deployment
            finally:
                deployment.in_flight -= 1
            deployment.breaker.record(error)
            failures += 1
            await self._backoff(error, failures, deadline_at, deployment, span, slot)

    async def open_stream(
        self, plan: Plan, request: ModelRequest, span: Any
    ) -> tuple[StreamEvent, AsyncIterator[StreamEvent], Deployment]:
        """Start a stream and read its first event, with retries and fallbacks. The caller owns
        the returned iterator and the deployment's in-flight count."""
        deadline_at = self._deadline()
        errors: list[BaseException] = []
        floor: int | None = None
        attempt_timeout = request.settings.timeout or self.retry.attempt_timeout
        for slot in plan.slots:
            if floor is not None and (w := self._window(slot)) is not None and w <= floor:
                errors.append(ContextWindowExceededError(f"skipped: window {w} <= {floor}", model=slot.label))
                continue
            failures = 0
            try:
                while True:
                    deployment = slot.pick()
                    timeout = self._attempt_timeout(attempt_timeout, deadline_at, deployment)
                    deployment.in_flight += 1
                    events: AsyncIterator[StreamEvent] | None = None
                    try:
                        events = aiter(deployment.model.stream(request))
                        if timeout is None:
                            first = await anext(events)
                        else:
                            async with asyncio.timeout(timeout):
                                first = await anext(events)
                    except (ModelError, TimeoutError) as e:
                        error = _as_model_error(e, deployment, timeout)
                    except BaseException:
                        deployment.breaker.release()
                        deployment.in_flight -= 1
                        if events is not None:
                            await aclose_stream(events)
                        raise
                    else:
                        deployment.breaker.record_success()
                        return first, events, deployment
                    deployment.in_flight -= 1
                    if events is not None:
                        await aclose_stream(events)
                    deployment.breaker.record(error)
                    failures += 1
                    await self._backoff(error, failures, deadline_at, deployment, span, slot)
            except DeadlineExceeded:
                raise
            except Exception as e:
                if len(plan.slots) == 1 or not isinstance(e, self.fallback_on):
                    raise
                errors.append(e)
                self.stats.fallbacks += 1
                if span is not None and span.recording:
                    span.add_event("bastion.fallback", {"bastion.from": slot.label, "error.type": type(e).__name__})
                if isinstance(e, ContextWindowExceededError) and (w := self._window(slot)) is not None:
                    floor = max(floor or 0, w)
        raise AllModelsFailedError(errors)

    def _attempt_timeout(
        self, attempt_timeout: float | None, deadline_at: float | None, deployment: Deployment
    ) -> float | None:
        if deadline_at is None:
            return attempt_timeout
        remaining = deadline_at - self._clock()
        if remaining <= 0:
            deployment.breaker.release()
            raise DeadlineExceeded(
                f"the total deadline of {self.retry.deadline}s passed before calling {deployment.name}; "
                "raise RetryPolicy(deadline=...)",
                model=deployment.name,
            )
        return remaining if attempt_timeout is None else min(attempt_timeout, remaining)

    async def _backoff(
        self,
        error: ModelError,
        failures: int,
        deadline_at: float | None,
        deployment: Deployment,
        span: Any,
        slot: Slot,
    ) -> None:
        delay = self.retry.delay(error, failures, self._rand)
        if delay is None:
            raise error
        if (
            delay
            and len(slot.deployments) > 1
            and any(d is not deployment and d.breaker.available() for d in slot.deployments)
        ):
            delay = 0.0  # the next attempt goes to another deployment: no reason to wait for this one
        if deadline_at is not None and self._clock() + delay >= deadline_at:
            raise DeadlineExceeded(
                f"the total deadline of {self.retry.deadline}s would pass before retry {failures + 1} of "
                f"{deployment.name} (last error: {type(error).__name__}: {error}); raise RetryPolicy(deadline=...)",
                model=deployment.name,
            ) from error
        self.stats.retries += 1
        if span is not None and span.recording:
            span.add_event(
                "bastion.retry",
                {"bastion.model": deployment.name, "error.type": type(error).__name__, "bastion.delay_s": delay},
            )
        log.debug("retrying %s in %.3fs after %s", deployment.name, delay, type(error).__name__)
        if delay > 0:
            await self._sleep(delay)

    def _window(self, slot: Slot) -> int | None:
        name = slot.deployments[0].name
        if name not in self.windows:
            self.windows[name] = self.pricing.context_window(name)
        return self.windows[name]


def _as_model_error(error: BaseException, deployment: Deployment, timeout: float | None) -> ModelError:
    if isinstance(error, ModelError):
        if error.model is None:
            error.model = deployment.name
        return error
    if timeout is None:
        return ModelTimeoutError(f"{deployment.name} timed out: {error}", model=deployment.name)
    return ModelTimeoutError(
        f"{deployment.name} did not answer within {timeout:g}s; raise the timeout with "
        "ModelSettings(timeout=...) or RetryPolicy(attempt_timeout=...)",
        model=deployment.name,
    )


async def aclose_stream(events: AsyncIterator[StreamEvent]) -> None:
    close: Any = getattr(events, "aclose", None)
    if close is not None:
        await close()


__all__ = ["DEFAULT_FALLBACK_ON", "AttemptRunner", "DeadlineExceeded", "GatewayStats", "aclose_stream"]
