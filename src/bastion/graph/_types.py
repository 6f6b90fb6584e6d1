"""Small value types of the graph API: markers, control objects, events and snapshots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from bastion.gateway import RetryPolicy  # one retry policy for every layer
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


def node_retryable(exc: BaseException) -> bool:
    """A graph node's default for `RetryPolicy.retry_on`: every exception except caller
    mistakes (`UserError`) and control-flow signals (interrupts)."""
    from bastion.errors import ControlFlowSignal, UserError

    return not isinstance(exc, UserError | ControlFlowSignal)


@dataclass(slots=True, frozen=True)
class Interrupt:
    """A pause waiting for a human. Answer it with `Command(resume={id: value})`."""

    id: str
    value: Any
    node: str
    ns: str = ""


EventKind: TypeAlias = Literal[
    "node_start", "node_end", "update", "token", "tool_call", "interrupt", "checkpoint", "retry", "error", "done"
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
