"""Small value types of the graph API: markers, control objects, events and snapshots."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

from typing_extensions import TypeVar as DefaultTypeVar  # `default=`: a bare `Graph` is `Graph[Any]`

from bastion.gateway import RetryPolicy  # one retry policy for every layer
from bastion.types import RunContext

START = "__start__"
END = "__end__"

T = TypeVar("T")
S = TypeVar("S")
StateT = DefaultTypeVar("StateT", default=Any)
"""The state type of a graph: its TypedDict, dataclass or pydantic model."""


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
class StateSnapshot(Generic[StateT]):
    """A thread's state at one checkpoint."""

    values: StateT
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


NodeOutput: TypeAlias = Mapping[str, Any] | Command[Any] | Send | Sequence[Send] | None
"""What a node returns: a dict of state updates, a `Command`, `Send`(s) or None."""

NodeFn: TypeAlias = (
    Callable[[S], NodeOutput | Awaitable[NodeOutput]] | Callable[[S, NodeConfig], NodeOutput | Awaitable[NodeOutput]]
)
"""A node over input `S` (the state, or a `Send`'s arg): `fn(s)` or `fn(s, config)`, sync or async."""

RouterFn: TypeAlias = Callable[[S], object] | Callable[[S, NodeConfig], object]
"""A router of conditional edges: returns a node name (or a `path_map` key), END, Send(s) or a list."""

__all__ = [
    "END",
    "START",
    "Command",
    "EventKind",
    "GraphEvent",
    "Interrupt",
    "NodeConfig",
    "NodeFn",
    "NodeOutput",
    "RetryPolicy",
    "RouterFn",
    "Send",
    "StateSnapshot",
    "StateT",
]
