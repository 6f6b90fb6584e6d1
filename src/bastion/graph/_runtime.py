"""What code running inside a node can reach: `interrupt()`, `memo()`, `emit()`, `get_config()`.

The engine sets a context variable for each task, so these work from the node itself and from
anything it calls (a model wrapper, the tool gateway) without passing handles around.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from bastion.errors import GraphInterrupt, UserError
from bastion.graph._types import GraphEvent, Interrupt, NodeConfig

if TYPE_CHECKING:
    from bastion.graph._pregel import Run

T = TypeVar("T")


@dataclass(slots=True)
class TaskContext:
    run: Run
    task_id: str
    node: str
    step: int
    counter: int = 0  # interrupt() calls so far in this attempt: identifies each one
    journal: dict[str, str] | None = None

    def config(self) -> NodeConfig:
        return NodeConfig(
            thread_id=self.run.thread_id,
            node=self.node,
            task_id=self.task_id,
            step=self.step,
            ns=self.run.ns,
            context=self.run.context,
            emit=self.emit,
        )

    def emit(self, kind: str, data: Any = None) -> None:
        sink = self.run.sink
        if sink is not None:
            sink(GraphEvent(kind, self.node, data, self.step, self.run.ns, self.task_id))


CURRENT: ContextVar[TaskContext | None] = ContextVar("bastion_graph_task", default=None)


def _require(what: str) -> TaskContext:
    ctx = CURRENT.get()
    if ctx is None:
        raise UserError(f"{what} can only be called while a graph node runs (inside the node or code it calls)")
    return ctx


def interrupt_id(ns: str, task_id: str, index: int) -> str:
    return hashlib.blake2b(f"{ns}|{task_id}|{index}".encode(), digest_size=8).hexdigest()


def interrupt(value: Any = None) -> Any:
    """Pause the graph for a human and return their answer.

    The first time, this raises `GraphInterrupt`: the run stops, `value` is shown in
    `StateSnapshot.interrupts` (with an id). When the thread is resumed with
    `Command(resume=...)`, the node runs again from its start and this call returns the answer.
    Work before the call is repeated on resume unless wrapped in `memo()`. Several calls in one
    node are answered in order.
    """
    ctx = _require("interrupt()")
    run = ctx.run
    if run.checkpointer is None or run.thread_id is None:
        raise UserError(
            "interrupt() needs durable state: compile the graph with a checkpointer "
            "(e.g. graph.compile(checkpointer=MemoryCheckpointer())) and pass thread_id= to ainvoke"
        )
    index = ctx.counter
    ctx.counter += 1
    iid = interrupt_id(run.ns, ctx.task_id, index)
    if iid in run.resume:
        return run.resume[iid]
    raise GraphInterrupt([Interrupt(iid, value, ctx.node, run.ns)])


async def _call(fn: Callable[[], Awaitable[T] | T]) -> T:
    result = fn()
    if inspect.isawaitable(result):
        return await cast(Awaitable[T], result)
    return result


async def memo(
    key: str,
    fn: Callable[[], Awaitable[T] | T],
    *,
    encode: Callable[[T], Any] | None = None,
    decode: Callable[[Any], T] | None = None,
) -> T:
    """Run `fn` once per task: its result is journaled durably and returned (not recomputed)
    when the node runs again after a crash, an error or an interrupt.

    `key` must be unique within the node (e.g. `"model:1"`). The result must be persistable
    (JSON, core Bastion types, registered types) or made so by `encode`/`decode`. Outside a
    node, or without a checkpointer, `fn` is simply called.
    """
    ctx = CURRENT.get()
    run = ctx.run if ctx is not None else None
    if ctx is None or run is None or run.checkpointer is None or run.thread_id is None:
        return await _call(fn)
    from bastion.checkpoint import JournalEntry
    from bastion.checkpoint.format import decode_payload, encode_value

    if ctx.journal is None:
        ctx.journal = await run.checkpointer.get_journal(run.thread_id, run.ns, ctx.task_id)
    stored = ctx.journal.get(key)
    if stored is not None:
        data = decode_payload(stored, "journal")["value"]
        return decode(data) if decode is not None else cast(T, data)
    value = await _call(fn)
    payload = encode_value(encode(value) if encode is not None else value, f"memo({key!r})")
    await run.checkpointer.put_journal(JournalEntry(run.thread_id, run.ns, ctx.task_id, key, payload))
    ctx.journal[key] = payload
    return value


def emit(kind: str, data: Any = None) -> None:
    """Send an event to `astream` consumers (e.g. `emit("token", "Hel")`,
    `emit("tool_call", call)`). Does nothing when nobody streams."""
    _require("emit()").emit(kind, data)


def get_config() -> NodeConfig:
    """The running node's config (thread, task id, step, run context)."""
    return _require("get_config()").config()


__all__ = ["CURRENT", "TaskContext", "emit", "get_config", "interrupt", "interrupt_id", "memo"]
