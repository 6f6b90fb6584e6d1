"""Every exception Bastion raises, under one root.

```
BastionError
├── UserError                      the caller did something wrong; fix the code or config
│   ├── ConfigError                bad settings / bastion.toml / policy file
│   ├── MissingExtraError          an optional dependency is not installed
│   ├── UnknownModelError          a "provider:model" string that does not resolve
│   ├── InvalidGraphError          a graph that cannot be compiled
│   ├── SerializationError         state that cannot be persisted (names the path)
│   └── InvalidUpdateError         a graph node returned something the state cannot take
├── ModelError                     a model call failed at run time
│   ├── ModelHTTPError             non-2xx from a provider (status, body)
│   │   ├── RateLimitError         429 (carries retry_after)
│   │   └── ProviderUnavailableError  5xx / connection refused
│   ├── ModelTimeoutError          per-attempt or total deadline passed
│   ├── InvalidResponseError       the provider answered garbage
│   ├── ContextWindowExceededError the request does not fit the model
│   ├── CircuitOpenError           the breaker for this provider+model is open
│   ├── AllModelsFailedError       every model of a fallback chain failed
│   └── OutputValidationError      an agent's final answer never matched its output type
├── BudgetExceededError            a hard token/money budget would be crossed
├── ToolError                      a tool call failed (wrapped, never crashes a run)
│   └── ToolArgumentsError         arguments do not match the tool's schema
├── PolicyError                    the security layer said no
│   ├── PolicyDeniedError          denied by policy (who, what, why)
│   └── SandboxUnavailableError    the OS cannot enforce the sandbox; refusing to run
├── CheckpointError                persistence failed at run time
├── NodeTimeoutError               a graph node exceeded its timeout (also a TimeoutError)
├── GraphRecursionError            the step limit ended a runaway loop
│   └── MaxTurnsExceededError      an agent made more model calls than its max_turns
└── ControlFlowSignal              not failures: the engine catches these
    └── GraphInterrupt             a node paused for a human (carries the interrupts)
```

Messages say how to fix the problem, not only what went wrong.
"""

from __future__ import annotations

from typing import Any


class BastionError(Exception):
    """Root of every Bastion exception."""


# --- caller mistakes -------------------------------------------------------------------------


class UserError(BastionError):
    """The caller made a mistake: the message says what to change."""


class ConfigError(UserError):
    """Settings, bastion.toml or a policy file are invalid."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, extra: str, package: str, feature: str) -> None:
        self.extra = extra
        self.package = package
        super().__init__(
            f"{feature} needs the optional package {package!r}. Install it with: pip install 'bastion[{extra}]'"
        )


class UnknownModelError(UserError):
    """A model string did not resolve to a provider."""


class InvalidGraphError(UserError):
    """The graph cannot be compiled as built."""


class SerializationError(UserError):
    """A value in the state cannot be persisted; `path` names where it sits."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{message} (at state path {path!r})" if path else message)


# --- model calls -----------------------------------------------------------------------------


class ModelError(BastionError):
    """A model call failed at run time."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        self.model = model
        super().__init__(message)


class ModelHTTPError(ModelError):
    """The provider answered with a non-success HTTP status."""

    def __init__(self, status: int, body: str, *, model: str | None = None) -> None:
        self.status = status
        self.body = body
        super().__init__(f"provider returned HTTP {status}: {body[:500]}", model=model)


class RateLimitError(ModelHTTPError):
    """HTTP 429. `retry_after` is the provider's hint in seconds, if any."""

    def __init__(self, status: int, body: str, *, retry_after: float | None = None, model: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(status, body, model=model)


class ProviderUnavailableError(ModelHTTPError):
    """HTTP 5xx or the connection failed; worth retrying elsewhere."""


class ModelTimeoutError(ModelError):
    """A per-attempt or total deadline passed."""


class InvalidResponseError(ModelError):
    """The provider's answer could not be parsed (malformed JSON, missing fields)."""


class ContextWindowExceededError(ModelError):
    """The request is larger than the model's context window."""


class CircuitOpenError(ModelError):
    """The circuit breaker for a provider+model is open; calls fail fast until it half-opens."""


class AllModelsFailedError(ModelError):
    """Every model in a fallback chain failed; `errors` holds each failure in order."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        detail = "; ".join(f"{type(e).__name__}: {e}" for e in errors)
        super().__init__(f"all models in the fallback chain failed: {detail}")


# --- budgets, tools, policy ------------------------------------------------------------------


class BudgetExceededError(BastionError):
    """A hard budget would be (or was) crossed."""

    def __init__(self, message: str, *, scope: str = "", limit: float = 0.0, used: float = 0.0) -> None:
        self.scope = scope
        self.limit = limit
        self.used = used
        super().__init__(message)


class ToolError(BastionError):
    """A tool call failed. The agent loop turns this into a structured result for the model."""

    def __init__(self, message: str, *, tool: str = "", details: Any = None) -> None:
        self.tool = tool
        self.details = details
        super().__init__(message)


class ToolArgumentsError(ToolError):
    """The arguments the model produced do not match the tool's schema."""


class PolicyError(BastionError):
    """The security layer refused."""


class PolicyDeniedError(PolicyError):
    """A policy denied this action; `reason` says which rule."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        self.reason = reason
        super().__init__(message)


class SandboxUnavailableError(PolicyError):
    """The OS cannot enforce the sandbox, so code is not run at all."""


# --- persistence and the engine --------------------------------------------------------------


class CheckpointError(BastionError):
    """Reading or writing a checkpoint failed at run time."""


class GraphRecursionError(BastionError):
    """The step limit was reached: the graph is probably looping."""


class MaxTurnsExceededError(GraphRecursionError):
    """An agent run reached its `max_turns` model calls without a final answer."""


class OutputValidationError(ModelError):
    """An agent's final answer did not validate against its `output_type` after every retry."""


class InvalidUpdateError(UserError):
    """A graph node returned an update the state cannot take (unknown key, wrong type)."""


class NodeTimeoutError(BastionError, TimeoutError):
    """A graph node ran longer than its `timeout=`."""


class ControlFlowSignal(BastionError):
    """Not a failure: raised to unwind to the engine, which handles it."""


class GraphInterrupt(ControlFlowSignal):
    """A node asked for human input; `interrupts` lists what it is waiting for."""

    def __init__(self, interrupts: list[Any]) -> None:
        self.interrupts = interrupts
        super().__init__(f"graph interrupted waiting for input: {interrupts!r}")


__all__ = [
    "AllModelsFailedError",
    "BastionError",
    "BudgetExceededError",
    "CheckpointError",
    "CircuitOpenError",
    "ConfigError",
    "ContextWindowExceededError",
    "ControlFlowSignal",
    "GraphInterrupt",
    "GraphRecursionError",
    "InvalidGraphError",
    "InvalidResponseError",
    "InvalidUpdateError",
    "MaxTurnsExceededError",
    "MissingExtraError",
    "ModelError",
    "ModelHTTPError",
    "ModelTimeoutError",
    "NodeTimeoutError",
    "OutputValidationError",
    "PolicyDeniedError",
    "PolicyError",
    "ProviderUnavailableError",
    "RateLimitError",
    "SandboxUnavailableError",
    "SerializationError",
    "ToolArgumentsError",
    "ToolError",
    "UnknownModelError",
    "UserError",
]
