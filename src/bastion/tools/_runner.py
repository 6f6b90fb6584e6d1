"""The tool execution wrapper: validation, timeout, retries, idempotency, circuit breaking and
graceful degradation. It never raises for a tool failure: every failure becomes a
`ToolResult(is_error=True, content={"error": ..., "type": ...})` the model can act on.

This is not an authorization layer: `bastion.policy.ToolGateway` decides whether a call may
run at all and then hands it to a `ToolRunner`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.errors import BudgetExceededError, ControlFlowSignal, ToolArgumentsError, UserError

# One retry policy and one circuit breaker for every layer (models and tools alike).
from bastion.gateway import CircuitBreaker, CircuitBreakerConfig, RetryPolicy
from bastion.tools._context import ToolContext, current_tool_context, use_tool_context
from bastion.tools._journal import IdempotencyJournal, MemoryJournal, idempotency_key, scoped_journal
from bastion.tools._tool import Tool
from bastion.types import RunContext, ToolCall, ToolResult

if TYPE_CHECKING:
    from bastion.gateway import Budget, Reservation


def _tool_retry() -> RetryPolicy:
    # Tools are local or near: retry sooner than a model provider would be.
    return RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=2.0)


def _any_failure(error: BaseException) -> bool:
    return True  # caller mistakes and control-flow signals never reach the retry decision


def error_result(call: ToolCall, message: str, kind: str, **extra: Any) -> ToolResult:
    """A structured failure for the model. Errors are produced by Bastion itself, so trusted."""
    return ToolResult(
        tool_call_id=call.id,
        name=call.name,
        content={"error": message, "type": kind, **extra},
        is_error=True,
        trust="trusted",
    )


OUTCOME_UNKNOWN = "outcome_unknown"


def outcome_unknown(call: ToolCall, tool_name: str) -> ToolResult:
    """What the model gets for a side effect that may have happened before a crash: never a
    second attempt made on its behalf."""
    return error_result(
        call,
        f"an earlier attempt of this {tool_name!r} call was interrupted (the process running it "
        "stopped) and its outcome is unknown; it was not repeated. Check whether it took effect "
        "before trying again with a new call, or tell the user it may or may not have happened.",
        OUTCOME_UNKNOWN,
    )


@dataclass
class ToolRunner:
    """Runs one validated, authorized call. Holds per-tool circuit breakers, so keep one
    runner per process (the gateway owns one).

    `journal` records side effects of calls made outside an agent run; inside one, the journal
    the agent loop scopes with `use_journal` (kept in the run's checkpointer) takes its place.

    `budget` is charged the price of priced tools (`@tool(price=...)`) in every scope of the
    call's `RunContext` (the `context` passed to `run`, else the enclosing agent run's): the
    price is held before the body runs (a call the remainder cannot pay is refused with a
    `budget_exceeded` result and never runs) and spent when it returns; a call that fails is
    not charged. Give the model gateway the same `Budget` so tools and models share limits."""

    journal: IdempotencyJournal = field(default_factory=MemoryJournal)
    retry: RetryPolicy = field(default_factory=_tool_retry)  # only idempotent tools are retried
    breaker_threshold: int = 5
    breaker_reset_after: float = 30.0
    clock: Callable[[], float] | None = None  # for breakers; time.monotonic by default
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    budget: Budget | None = None
    _breakers: dict[str, CircuitBreaker] = field(default_factory=dict, init=False, repr=False)

    def breaker(self, tool_name: str) -> CircuitBreaker:
        b = self._breakers.get(tool_name)
        if b is None:
            config = CircuitBreakerConfig(failure_threshold=self.breaker_threshold, cooldown=self.breaker_reset_after)
            b = CircuitBreaker(f"tool:{tool_name}", config, self.clock or time.monotonic)
            self._breakers[tool_name] = b
        return b

    @staticmethod
    def validate(tool: Tool, call: ToolCall) -> dict[str, Any] | ToolResult:
        """Validated arguments, or the structured error result listing each problem."""
        if not isinstance(call.arguments, dict):  # pyright: ignore[reportUnnecessaryIsInstance]
            return error_result(call, "tool arguments must be a JSON object", "invalid_arguments", problems=[])
        try:
            return tool.validate(call.arguments)
        except ToolArgumentsError as e:
            return error_result(
                call,
                f"{e} Fix the arguments to match the tool's schema and call it again.",
                "invalid_arguments",
                problems=e.details or [],
            )

    async def run(
        self,
        tool: Tool,
        call: ToolCall,
        *,
        run_id: str | None = None,
        injected: Mapping[str, Any] | None = None,
        arguments: dict[str, Any] | None = None,
        context: RunContext | None = None,
    ) -> ToolResult:
        """Execute `call`. `arguments` are already-validated arguments (validated here when
        None); `injected` are keyword arguments the model never sees (secrets); `context` is
        who the call is for (budgets; default: the enclosing agent run's)."""
        if arguments is None:
            checked = self.validate(tool, call)
            if isinstance(checked, ToolResult):
                return checked
            arguments = checked
        side_effecting = tool.side_effect in ("write", "irreversible")
        scoped = scoped_journal()
        journal = scoped if scoped is not None else self.journal
        key: str | None = None
        # A scoped journal is already per run and per task, so it needs no run id to key on.
        if side_effecting and (run_id or scoped is not None):
            key = idempotency_key(run_id or "", call.id, arguments)
            # `begin` has committed the pending record before the tool body can start.
            previous = await journal.begin(key, tool.name)
            if previous is not None:
                if previous.state == "done" and previous.result is not None:
                    return previous.result
                if not tool.idempotent:
                    return outcome_unknown(call, tool.name)
                # An idempotent tool may take effect twice with the same outcome: run it again.
        breaker = self.breaker(tool.name)
        if not breaker.acquire():
            if key is not None:
                await journal.abort(key)
            return error_result(
                call,
                f"tool {tool.name!r} is failing repeatedly and is paused; try again in "
                f"{breaker.retry_in():.0f}s or continue without it.",
                "circuit_open",
            )
        held: tuple[float, float, Reservation | None] | None = None
        if tool.price is not None:
            priced = await self._hold(tool, call, arguments, context)
            if isinstance(priced, ToolResult):
                if key is not None:
                    await journal.abort(key)
                return priced
            held = priced
        paid = False
        scope: AbstractContextManager[None] = nullcontext()
        if tool.context_param is not None and current_tool_context() is None:
            # Called outside an agent run and any executor: the tool still gets who it runs for.
            scope = use_tool_context(ToolContext(run=context or _current_run() or RunContext(), tool_call_id=call.id))
        try:
            with scope:
                content = await self._attempts(tool, arguments, injected or {})
            paid = True
        except ControlFlowSignal:
            if key is not None:
                await journal.abort(key)
            raise
        except asyncio.CancelledError:
            # Leave a side-effecting key pending: the call may have taken effect.
            breaker.release()
            raise
        except Exception as e:
            breaker.record_failure()
            if key is not None:
                await journal.abort(key)
            return self._failure(call, tool, e)
        finally:
            if held is not None:
                await self._pay(tool, held, paid)
        breaker.record_success()
        result = ToolResult(tool_call_id=call.id, name=tool.name, content=content, trust=tool.trust)
        if key is not None:
            await journal.complete(key, result)
        return result

    async def _hold(
        self, tool: Tool, call: ToolCall, arguments: dict[str, Any], context: RunContext | None
    ) -> tuple[float, float, Reservation | None] | ToolResult:
        """(USD, units, reservation) of a priced call, or the result refusing it."""
        assert tool.price is not None
        try:
            usd, units = tool.price.cost(arguments)
        except ToolArgumentsError as e:
            return error_result(call, str(e), "invalid_arguments", problems=[])
        if self.budget is None or usd <= 0:
            return usd, units, None
        try:
            reservation = await self.budget.charge(context or _current_run() or RunContext(), usd)
        except BudgetExceededError as e:
            return error_result(
                call,
                f"this call to {tool.name!r} costs ${usd:.6f} and was not run: {e}. Do not retry it; "
                "tell the user the budget is used up.",
                "budget_exceeded",
                scope=e.scope,
                cost_usd=usd,
            )
        return usd, units, reservation

    async def _pay(self, tool: Tool, held: tuple[float, float, Reservation | None], paid: bool) -> None:
        """Settle a priced call (its price if the body returned, else nothing) and attribute it."""
        usd, units, reservation = held
        if self.budget is not None and reservation is not None:
            await asyncio.shield(self.budget.settle(reservation, 0, usd if paid else 0.0))
        if paid and tool.price is not None:
            from bastion.tracing import record_tool_cost

            record_tool_cost(tool.name, usd, units, tool.price.unit)
            _report_spend(tool.name, usd)

    async def _attempts(self, tool: Tool, arguments: dict[str, Any], injected: Mapping[str, Any]) -> Any:
        # Repeating a non-idempotent call could repeat its effect.
        attempts = max(1, self.retry.max_attempts) if tool.idempotent else 1
        for n in range(attempts):
            try:
                if tool.timeout is not None:
                    return await asyncio.wait_for(tool.invoke(arguments, **injected), tool.timeout)
                return await tool.invoke(arguments, **injected)
            except (ControlFlowSignal, UserError):
                raise
            except Exception as e:
                if n + 1 >= attempts or not self.retry.should_retry(e, _any_failure):
                    raise
            await self.sleep(self.retry.backoff(n + 1, self.rng.random))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _failure(call: ToolCall, tool: Tool, exc: BaseException) -> ToolResult:
        if isinstance(exc, TimeoutError):
            return error_result(
                call,
                f"tool {tool.name!r} did not finish within {tool.timeout}s; try a smaller request "
                "or continue without it.",
                "timeout",
            )
        result = error_result(call, f"tool {tool.name!r} failed: {exc}", type(exc).__name__)
        # The message may quote a remote server's answer: it is only as trusted as the tool.
        result.trust = tool.trust
        return result


def _report_spend(tool: str, usd: float) -> None:
    """Add a paid tool call to the enclosing agent run's cost (its result and run record)."""
    import sys

    nested = sys.modules.get("bastion.graph.agent._nested")  # loaded whenever an agent runs tools
    if nested is not None and usd:
        ctx = _current_run()
        nested.report_spend({"agent": (ctx.agent if ctx else None) or tool, "usage": {}, "cost": usd})


def _current_run() -> RunContext | None:
    from bastion.tracing.spans import current_run

    return current_run()


__all__ = ["OUTCOME_UNKNOWN", "RetryPolicy", "ToolRunner", "error_result", "outcome_unknown"]
