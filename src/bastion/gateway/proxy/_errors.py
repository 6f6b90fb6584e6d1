"""Exceptions -> OpenAI-style error responses (`{"error": {"message", "type", "param", "code"}}`).

Every failure leaves the proxy as one of these with a meaningful status; nothing escapes as a
500 traceback. Upstream failures are the gateway's (502/503/504), caller mistakes are 4xx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bastion import errors as e


@dataclass(slots=True)
class ErrorReply:
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _retry_after(seconds: float | None, default: float | None) -> dict[str, str]:
    value = seconds if seconds is not None else default
    return {} if value is None else {"retry-after": str(max(1, math.ceil(value)))}


def _window_reset(scope: str) -> float | None:
    """Seconds until a windowed budget resets: day scopes (`day:<tenant>/<date>`) at UTC midnight."""
    if not scope.startswith("day:"):
        return None
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def error_reply(exc: BaseException) -> ErrorReply:
    """The HTTP answer for an exception raised while serving a request."""
    if isinstance(exc, e.AllModelsFailedError) and exc.errors:
        # The last model's failure is the one the client would have seen without fallbacks.
        reply = error_reply(exc.errors[-1])
        reply.message = str(exc)
        return reply
    if isinstance(exc, e.BudgetExceededError):
        return ErrorReply(
            429,
            f"{exc} — raise the budget for this key or tenant, or wait for its window to reset",
            "insufficient_quota",
            "budget_exceeded",
            headers=_retry_after(getattr(exc, "retry_after", None) or _window_reset(exc.scope), None),
        )
    if isinstance(exc, e.RateLimitError):
        return ErrorReply(
            429,
            "the upstream provider is rate limiting requests; retry after the indicated delay",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers=_retry_after(exc.retry_after, 1.0),
        )
    if isinstance(exc, e.ProviderUnavailableError):
        return ErrorReply(
            502, f"upstream provider failed (HTTP {exc.status}); retry later", "upstream_error", "bad_gateway"
        )
    if isinstance(exc, e.ModelHTTPError):
        if exc.status in {400, 404, 413, 422}:
            return ErrorReply(exc.status, f"upstream rejected the request: {exc.body[:500]}", "invalid_request_error")
        return ErrorReply(
            502,
            f"upstream provider answered HTTP {exc.status}; check the provider configuration",
            "upstream_error",
            "bad_gateway",
        )
    if isinstance(exc, e.ModelTimeoutError):
        return ErrorReply(504, f"upstream timed out: {exc}", "upstream_error", "gateway_timeout")
    if isinstance(exc, e.CircuitOpenError):
        return ErrorReply(
            503,
            f"{exc}; the provider failed repeatedly",
            "upstream_error",
            "service_unavailable",
            headers=_retry_after(None, 5.0),
        )
    if isinstance(exc, e.ContextWindowExceededError):
        return ErrorReply(400, str(exc), "invalid_request_error", "context_length_exceeded", "messages")
    if isinstance(exc, e.InvalidResponseError):
        return ErrorReply(502, f"upstream answered garbage: {exc}", "upstream_error", "bad_gateway")
    if isinstance(exc, e.ModelError):
        return ErrorReply(502, f"model call failed: {exc}", "upstream_error", "bad_gateway")
    if isinstance(exc, e.UnknownModelError):
        return ErrorReply(404, str(exc), "invalid_request_error", "model_not_found", "model")
    if isinstance(exc, e.PolicyError):
        return ErrorReply(403, str(exc), "permission_error", "policy_denied")
    if isinstance(exc, e.UserError):
        return ErrorReply(400, str(exc), "invalid_request_error")
    return ErrorReply(500, "internal error in the Bastion proxy; see the server log", "server_error")


__all__ = ["ErrorReply", "error_reply"]
