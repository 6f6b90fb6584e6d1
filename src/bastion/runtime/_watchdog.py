"""What the worker needs to end every run, whatever its runnable does: a readable error for any
exception, a check of what `invoke` returned, and the trace id of an attempt that failed.

A runnable is user code (or an adapter around it): it may have the wrong signature, not be a
coroutine, return garbage or crash in a callback. None of that may leave a run `running`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

from bastion.errors import UserError
from bastion.runtime._types import RunOutcome

_MAX_ERROR = 4000  # characters of an error message kept on the run


@dataclass(slots=True)
class Attempt:
    """One attempt at a run, as seen by code running inside it."""

    trace_id: str | None = None


CURRENT: ContextVar[Attempt | None] = ContextVar("bastion_run_attempt", default=None)


def report_trace(trace_id: str | None) -> None:
    """Called by a runnable as soon as its root span is open: the run keeps the trace id even
    when the attempt then fails (a failed run is the one most worth looking at)."""
    attempt = CURRENT.get()
    if attempt is not None and trace_id:
        attempt.trace_id = trace_id


SIGNATURE = (
    "async def invoke(self, input, *, thread_id, context, resume=None, recover=False, emit=None, "
    "checkpoint_before=None) -> RunOutcome"
)


def start(invoke: Any, name: str, **kwargs: Any) -> Awaitable[RunOutcome]:
    """Call `invoke` and return the awaitable it gives, or raise `UserError` saying how the
    runnable must look."""
    try:
        result = invoke(**kwargs)
    except TypeError as e:
        # Raised by the call itself (not its body, which has not started): the signature is wrong.
        raise UserError(f"runnable {name!r} cannot be called as {SIGNATURE}: {e}") from e
    if inspect.isasyncgen(result):
        raise UserError(
            f"runnable {name!r}: invoke() is an async generator; it must be {SIGNATURE} "
            "and report progress with `await emit(kind, data)`"
        )
    if not inspect.isawaitable(result):
        raise UserError(
            f"runnable {name!r}: invoke() returned {type(result).__name__}, not an awaitable; it must be {SIGNATURE}"
        )
    return cast(Awaitable[RunOutcome], result)


def check_outcome(value: Any, name: str) -> RunOutcome:
    """`value` if it is a usable `RunOutcome`, else `UserError` (the runnable broke the contract)."""
    if not isinstance(value, RunOutcome):
        raise UserError(
            f"runnable {name!r}: invoke() returned {type(value).__name__}, not a bastion.runtime.RunOutcome"
        )
    if value.status not in ("completed", "interrupted"):
        raise UserError(
            f"runnable {name!r}: RunOutcome.status is {value.status!r}; it must be 'completed' or "
            "'interrupted' (raise an exception to fail the run)"
        )
    if value.status == "interrupted" and not value.interrupts:
        raise UserError(f"runnable {name!r}: an interrupted RunOutcome must list its interrupts")
    return value


def describe(exc: BaseException) -> str:
    """The error recorded on a failed run: type and message, credentials removed, bounded."""
    from bastion.config import redact_credentials

    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = redact_credentials(text)
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


__all__ = ["CURRENT", "Attempt", "check_outcome", "describe", "report_trace", "start"]
