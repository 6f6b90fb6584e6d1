"""Small value types of the graph API: markers, control objects, events and snapshots."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from bastion.types import RunContext

START = "__start__"
END = "__end__"

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class Send:
    """Run `node` in the next step with `arg` as its input instead of the state (map-reduce)."""

    node: str
    arg: Any


@dataclass(slots=True)
class Command(Generic[T]):
    """Returned by a node: update the state and choose where to go (`goto`).
    Passed to `ainvoke`: answer pending interrupts (`resume`).

    `resume` is either one value (when exactly one interrupt is pending) or a dict mapping
    interrupt ids to values.
    """

    update: dict[str, Any] | None = None
    goto: str | Send | Sequence[str | Send] = ()
    resume: T | None = None


def _default_retry_on(exc: BaseException) -> bool:
    from bastion.errors import ControlFlowSignal, UserError

    return not isinstance(exc, UserError | ControlFlowSignal)


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """How a failing node is retried: exponential backoff with jitter.

    `retry_on` is a tuple of exception types or a predicate; by default every exception except
    caller mistakes (`UserError`) and control-flow signals (interrupts) is retried.
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff_factor: float = 2.0
    max_interval: float = 30.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = _default_retry_on

    def should_retry(self, exc: BaseException) -> bool:
        from bastion.errors import ControlFlowSignal

        if isinstance(exc, ControlFlowSignal):
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return self.retry_on(exc)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        d = min(self.max_interval, self.initial_interval * self.backoff_factor ** (attempt - 1))
        return d * random.uniform(0.5, 1.0) if self.jitter else d


@dataclass(slots=True, frozen=True)
class Interrupt:
    """A pause waiting for a human. Answer it with `Command(resume={id: value})`."""

    id: str
    value: Any
    node: str
    ns: str = ""


EventKind: TypeAlias = Literal[
    "node_start", "node_end", "update", "token", "tool_call", "interrupt", "checkpoint", "error", "done"
]


@dataclass(slots=True)
class GraphEvent:
    """One streamed event. `ns` is the subgraph path (`""` for the top graph)."""

    kind: str
    node: str | None = None
    data: Any = None
    step: int = 0
    ns: str = ""
    task_id: str | None = None


@dataclass(slots=True)
class StateSnapshot:
    """A thread's state at one checkpoint."""

    values: Any
    next: tuple[str, ...]
    interrupts: tuple[Interrupt, ...]
    checkpoint_id: str | None
    parent_id: str | None
    thread_id: str
    step: int
    created_at: float | None
    source: str = "loop"
    metadata: dict[str, Any] = field(default_factory=dict[str, Any])


@dataclass(slots=True)
class NodeConfig:
    """Passed as the second argument to nodes (and routers) that accept two."""

    thread_id: str | None
    node: str
    task_id: str
    step: int
    ns: str
    context: RunContext
    emit: Callable[..., None]


__all__ = [
    "END",
    "START",
    "Command",
    "EventKind",
    "GraphEvent",
    "Interrupt",
    "NodeConfig",
    "RetryPolicy",
    "Send",
    "StateSnapshot",
]
