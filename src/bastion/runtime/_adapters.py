"""Adapters that let the runtime drive an `Agent` (or anything with its run/stream API); the
graph adapter is `bastion.runtime._graph_runnable.GraphRunnable`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bastion.errors import UserError
from bastion.runtime._types import EventSink, RunOutcome
from bastion.runtime._watchdog import report_trace
from bastion.types import RunContext


def to_jsonable(value: Any) -> Any:
    """Outputs and interrupt payloads as plain JSON (pydantic models, dataclasses, messages...)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_jsonable(dump(mode="json"))
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def interrupt_json(item: Any) -> dict[str, Any]:
    data = to_jsonable(item)
    if isinstance(data, dict):
        # The UI and API address interrupts by id and show their payload.
        data.setdefault("payload", data.get("value"))
        return data  # pyright: ignore[reportUnknownVariableType]
    return {"id": "", "payload": data}


def agent_input(value: Any) -> Any:
    """Run input as JSON arrives over HTTP → what an `Agent` takes: text stays text, a list of
    message dicts becomes messages, any other JSON value is given to the model as JSON text."""
    from bastion.types import Message

    if isinstance(value, str | Message):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):  # pyright: ignore[reportUnknownVariableType]
        try:
            return [Message.from_dict(m) for m in value]  # pyright: ignore[reportUnknownArgumentType]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"run input looks like messages but is not: {e}") from e
    return json.dumps(value, ensure_ascii=False, default=str)


class ThreadState:
    """A thread's checkpoints, for runnables whose state lives in one checkpointer: the
    optional `Runnable` methods (`latest_checkpoint`, `forget`, `history`, `fork`, `rollback`).
    Every `thread_id` here is a storage key (`thread_key`)."""

    def _checkpointer(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must say where its checkpoints live")

    def _label(self) -> str:
        return type(self).__name__

    async def latest_checkpoint(self, thread_id: str) -> str | None:
        checkpointer = self._checkpointer()
        if checkpointer is None:
            return None
        record = await checkpointer.get(thread_id)
        return record.checkpoint_id if record is not None else None

    async def trace_parent(self, thread_id: str) -> str | None:
        """The W3C `traceparent` of the run root that wrote the thread's latest checkpoint (the
        graph engine records it while tracing): a resumed run's root continues that trace."""
        checkpointer = self._checkpointer()
        if checkpointer is None:
            return None
        record = await checkpointer.get(thread_id)
        if record is None:
            return None
        from bastion.checkpoint.format import decode_payload
        from bastion.tracing.semconv import CHECKPOINT_TRACEPARENT

        # The format's own reader: it upgrades older payloads, whose metadata had another key.
        value = decode_payload(record.payload, "checkpoint").get("meta", {}).get(CHECKPOINT_TRACEPARENT)
        return value if isinstance(value, str) else None

    async def forget(self, thread_id: str) -> None:
        """Delete the thread's checkpoints (retention)."""
        checkpointer = self._checkpointer()
        if checkpointer is not None:
            await checkpointer.delete_thread(thread_id)

    async def history(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's top-level checkpoints, newest first (ids and steps, not their payloads)."""
        checkpointer = self._checkpointer()
        if checkpointer is None:
            return []
        return [
            {"checkpoint_id": r.checkpoint_id, "parent_id": r.parent_id, "step": r.step, "created_at": r.created_at}
            for r in await checkpointer.list(thread_id)
        ]

    async def fork(self, thread_id: str, checkpoint_id: str | None, new_thread_id: str) -> bool:
        """Copy the thread's state at `checkpoint_id` (None: its latest) into `new_thread_id`;
        False when there is no such checkpoint for the thread."""
        checkpointer = self._checkpointer()
        if checkpointer is None:
            return False
        record = await checkpointer.get(thread_id, "", checkpoint_id)
        if record is None:
            return False
        await checkpointer.fork(thread_id, "", record.checkpoint_id, new_thread_id)
        return True

    async def rollback(self, thread_id: str, checkpoint_id: str | None) -> None:
        """Make `checkpoint_id` the thread's latest state again (None: the thread had no state).

        Uses only the checkpointer contract: copy the chain up to `checkpoint_id` aside, drop the
        thread, copy it back. The copy aside is deleted last, so a crash midway leaves it to
        recover from (thread id `<thread>/~rollback`, which no client thread id can name)."""
        checkpointer = self._checkpointer()
        if checkpointer is None:
            raise UserError(f"{self._label()} has no checkpointer: nothing to roll back")
        if checkpoint_id is None:
            await checkpointer.delete_thread(thread_id)
            return
        aside = f"{thread_id}/~rollback"
        await checkpointer.fork(thread_id, "", checkpoint_id, aside)
        await checkpointer.delete_thread(thread_id)
        await checkpointer.fork(aside, "", checkpoint_id, thread_id)
        await checkpointer.delete_thread(aside)


class AgentRunnable(ThreadState):
    """Runs a `bastion.graph.agent.Agent` as a runtime `Runnable`, streaming its events.

    Durability comes from the agent's checkpointer: give the agent one (SQLite or PostgreSQL)
    so a recovered run continues at the failed step instead of starting over.
    """

    def __init__(self, agent: Any, *, description: str = "") -> None:
        self.agent = agent
        self.description = description or getattr(agent, "instructions", "") or ""

    def _checkpointer(self) -> Any:
        return getattr(self.agent, "checkpointer", None)

    def _label(self) -> str:
        return f"agent {getattr(self.agent, 'name', '?')!r}"

    async def invoke(
        self,
        input: Any,
        *,
        thread_id: str,
        context: RunContext,
        resume: Any = None,
        recover: bool = False,
        emit: EventSink | None = None,
        checkpoint_before: str | None = None,
    ) -> RunOutcome:
        from bastion.tracing import spans

        if recover and resume is None and await self.latest_checkpoint(thread_id) == checkpoint_before:
            recover = False  # the crash came before this run's first checkpoint: start it over
        name = getattr(self.agent, "name", None) or "agent"
        # One trace per run attempt, rooted at `invoke_agent {name}`: model, tool, policy and
        # checkpoint spans opened by the agent nest under it. A resumed run continues the trace
        # of the run that paused.
        parent = await self.trace_parent(thread_id) if resume is not None else None
        with spans.agent(name, context, agent_id=context.run_id, input=input, parent=parent) as span:
            report_trace(span.trace_id)
            outcome = await self._invoke(input, thread_id, context, resume, recover, emit)
            outcome.trace_id = span.trace_id
            if outcome.status == "completed":
                span.record_output(outcome.output)
            return outcome

    async def _invoke(
        self, input: Any, thread_id: str, context: RunContext, resume: Any, recover: bool, emit: EventSink | None
    ) -> RunOutcome:
        from bastion.graph.agent import RunDone

        input = agent_input(input)
        if resume is not None:
            events = self.agent.stream(None, resume=resume, thread_id=thread_id, context=context)
        elif recover:
            events = self.agent.stream(None, thread_id=thread_id, context=context)
        else:
            events = self.agent.stream(input, thread_id=thread_id, context=context)
        result: Any = None
        async for event in events:
            if isinstance(event, RunDone):
                result = event.result
                continue
            if emit is not None:
                data = to_jsonable(event)
                kind = data.pop("kind", type(event).__name__) if isinstance(data, dict) else "event"
                await emit(str(kind), data if isinstance(data, dict) else {"value": data})  # pyright: ignore[reportUnknownArgumentType]
        if result is None:
            raise RuntimeError("the agent's stream ended without a final result")
        usage = result.usage.to_dict()
        if result.interrupts:
            return RunOutcome(
                "interrupted",
                interrupts=[interrupt_json(i) for i in result.interrupts],
                usage=usage,
                cost_usd=result.cost,
            )
        return RunOutcome("completed", output=to_jsonable(result.output), usage=usage, cost_usd=result.cost)
