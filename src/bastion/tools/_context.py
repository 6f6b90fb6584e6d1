"""`ToolContext[Deps]`: what a tool function can know about the run that called it.

A tool declares a parameter annotated `ToolContext` (or `ToolContext[MyDeps]`); the runner
injects it and the model never sees it (it is left out of the JSON schema). The same object is
what the tool gateway receives with every call, so a tool and the policy see one view of the
run: who it is for (tenant, user), which thread and run, the calling agent, the history so far
and the application's own dependencies (`Agent(deps=...)` / `agent.run(..., deps=...)`).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic

from typing_extensions import TypeVar  # `default=`: a bare `ToolContext` means `ToolContext[Any]`

from bastion.types import Message, RunContext

DepsT = TypeVar("DepsT", default=Any)


@dataclass(slots=True)
class ToolContext(Generic[DepsT]):
    """The run a tool call belongs to. `deps` are whatever the application passed as
    `deps=` (a database handle, an HTTP client, settings); never persisted, never shown to the
    model."""

    run: RunContext = field(default_factory=RunContext)
    messages: Sequence[Message] = ()  # history so far: user turns are trusted, tool results labelled
    agent: str = "agent"  # the calling agent's identity (policy principal)
    deps: DepsT = None  # pyright: ignore[reportAssignmentType]  (None when the run gave no deps)
    thread_id: str | None = None
    tool_call_id: str | None = None

    @property
    def tenant(self) -> str:
        return self.run.tenant

    @property
    def user(self) -> str | None:
        return self.run.user

    @property
    def run_id(self) -> str | None:
        return self.run.run_id


ToolCallContext = ToolContext
"""The name the `ToolExecutor` protocol used first; the same class."""

_CURRENT: ContextVar[ToolContext[Any] | None] = ContextVar("bastion_tool_context", default=None)


def current_tool_context() -> ToolContext[Any] | None:
    """The context of the tool call running now (set by the agent loop and the executors)."""
    return _CURRENT.get()


@contextmanager
def use_tool_context(context: ToolContext[Any]) -> Generator[None]:
    """Make `context` the one injected into tools called inside this block."""
    token = _CURRENT.set(context)
    try:
        yield
    finally:
        _CURRENT.reset(token)


__all__ = ["DepsT", "ToolCallContext", "ToolContext", "current_tool_context", "use_tool_context"]
