"""Per-run settings the graph nodes read without putting them in the persisted state.

The run context and the streaming flag are set around one `ainvoke`/`astream` call; the
engine runs nodes in tasks created inside that call, which inherit this context variable.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from bastion.types import RunContext


@dataclass(frozen=True, slots=True)
class Runtime:
    context: RunContext = field(default_factory=RunContext)
    streaming: bool = False
    deps: Any = None  # `run(..., deps=)`: handed to tools in their `ToolContext`, never persisted


_RUNTIME: ContextVar[Runtime | None] = ContextVar("bastion_agent_runtime", default=None)


def current_runtime() -> Runtime:
    return _RUNTIME.get() or Runtime()


@contextmanager
def use_runtime(runtime: Runtime) -> Generator[None]:
    token = _RUNTIME.set(runtime)
    try:
        yield
    finally:
        _RUNTIME.reset(token)
