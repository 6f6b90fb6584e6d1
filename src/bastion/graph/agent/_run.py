"""Drives an agent's compiled graph: builds it once, turns inputs into state, and the final
state (or the pending interrupts) into an `AgentResult`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from bastion.errors import BastionError, UserError
from bastion.graph.agent._failure import rebuild_failure
from bastion.graph.agent._loop import (
    AgentGroup,
    AgentState,
    Histories,
    make_handoff_node,
    make_model_node,
    make_router,
    make_tool_node,
)
from bastion.graph.agent._members import total_spend
from bastion.graph.agent._result import AgentEvent, AgentResult, RunDone
from bastion.graph.agent._runtime import Runtime, use_runtime
from bastion.types import Message, RunContext, Usage, new_sortable_id

if TYPE_CHECKING:
    from bastion.checkpoint import Checkpointer
    from bastion.graph import CompiledGraph, Graph
    from bastion.graph.agent._agent import Agent, AgentInput


class _Continue:
    def __repr__(self) -> str:
        return "CONTINUE"


CONTINUE: Any = _Continue()
"""`resume()` without a value: continue after an error rather than answer an interrupt."""


def to_messages(input: AgentInput) -> list[Message]:
    if isinstance(input, str):
        return [Message.user(input)]
    if isinstance(input, Message):
        return [input]
    return list(input)


class GraphRunner:
    """Compiles a graph once and runs it per thread; subclasses say how to build the graph,
    what the input state of a run is, and how the final state reads as an `AgentResult`."""

    checkpointer: Checkpointer | None = None
    name: str = "agent"

    def __init__(self) -> None:
        self._app: CompiledGraph[Any] | None = None
        self._checkpointer: Checkpointer | None = None
        self._owned = False

    def build(self) -> Graph[Any]:
        """Return the `Graph` (uncompiled)."""
        raise NotImplementedError(f"{type(self).__name__}.build")

    def step_limit(self) -> int:
        return 100

    def start(self, input: AgentInput) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__}.start")

    def to_result(self, values: dict[str, Any], interrupts: list[Any], thread_id: str) -> AgentResult[Any]:
        raise NotImplementedError(f"{type(self).__name__}.to_result")

    def app(self) -> CompiledGraph[Any]:
        if self._app is None:
            checkpointer = self.checkpointer
            self._owned = checkpointer is None
            if checkpointer is None:
                from bastion.checkpoint import MemoryCheckpointer

                checkpointer = MemoryCheckpointer()
            self._checkpointer = checkpointer
            self._app = self.build().compile(checkpointer=checkpointer, step_limit=self.step_limit())
        return self._app

    async def run(
        self,
        input: AgentInput,
        *,
        thread_id: str | None,
        context: RunContext | None,
        deps: Any = None,
        deferred: bool = False,
    ) -> AgentResult[Any]:
        if thread_id is not None:
            await self._refuse_if_waiting(thread_id)
        state = self.start(input)
        if deferred:
            state["deferred"] = True  # in the checkpointed state: a resumed run stays deferred
        return await self._invoke(state, thread_id, context, deps)

    async def _refuse_if_waiting(self, thread_id: str) -> None:
        # New input on a thread that waits for a human would drop the pending tool calls and
        # leave calls without results in the history, which model APIs reject.
        snapshot = await self.app().aget_state(thread_id)
        if snapshot.interrupts:
            raise UserError(
                f"thread {thread_id!r} is waiting on {len(snapshot.interrupts)} interrupt(s) "
                f"({', '.join(i.id for i in snapshot.interrupts)}); answer them with "
                "resume(value, thread_id=...) before sending new input"
            )
        if snapshot.next:
            raise UserError(
                f"thread {thread_id!r} stopped before finishing (at {', '.join(snapshot.next)}), probably on an "
                "error; continue it with resume(thread_id=...) before sending new input"
            )

    async def resume(
        self, value: Any, *, thread_id: str, context: RunContext | None, deps: Any = None
    ) -> AgentResult[Any]:
        from bastion.graph import Command

        return await self._invoke(None if value is CONTINUE else Command(resume=value), thread_id, context, deps)

    async def _invoke(
        self, input: Any, thread_id: str | None, context: RunContext | None, deps: Any = None
    ) -> AgentResult[Any]:
        thread = thread_id or new_sortable_id("thread_")
        context = context or RunContext()
        parent = await self._trace_parent(thread_id, context, input)
        with self._span(context, input, parent) as span, use_runtime(Runtime(context=context, deps=deps)):
            await self.app().ainvoke(input, thread_id=thread, context=context)
            result = await self._final(thread_id, thread)
            _record_output(span, result)
        return result

    async def _final(self, thread_id: str | None, thread: str) -> AgentResult[Any]:
        """The run's result, or the failure it ended with (raised), forgetting an ephemeral
        thread either way."""
        try:
            result = await self.result(thread)
        except BastionError:
            await self._forget(thread_id, thread, interrupted=False)
            raise
        await self._forget(thread_id, thread, interrupted=result.interrupted)
        return result

    def _span(self, context: RunContext, input: Any, parent: str | None = None) -> AbstractContextManager[Any]:
        """`invoke_agent {name}`, the root span of the run, unless the caller (the runtime)
        already opened it for this very context."""
        from bastion.tracing import spans

        if spans.current_run() is context:
            return nullcontext()
        traced_input = input if isinstance(input, str) else None
        return spans.agent(self.name, context, agent_id=context.run_id, input=traced_input, parent=parent)

    async def _trace_parent(self, thread_id: str | None, context: RunContext, graph_input: Any) -> str | None:
        """A resumed run continues the trace of the run that paused: the engine saves that
        run's root (`traceparent`) with the thread's checkpoints."""
        from bastion.graph import Command
        from bastion.tracing import semconv, spans

        if thread_id is None or not isinstance(graph_input, Command) or spans.current_run() is context:
            return None
        value = (await self.app().aget_state(thread_id)).metadata.get(semconv.CHECKPOINT_TRACEPARENT)
        return value if isinstance(value, str) else None

    async def stopped_on_error(self, thread_id: str) -> bool:
        snapshot = await self.app().aget_state(thread_id)
        return bool(snapshot.next) and not snapshot.interrupts

    async def delete_thread(self, thread_id: str) -> None:
        self.app()
        assert self._checkpointer is not None  # app() set it
        await self._checkpointer.delete_thread(thread_id)

    async def _forget(self, thread_id: str | None, thread: str, *, interrupted: bool) -> None:
        # With the default in-memory checkpointer, a run without a thread_id cannot be continued
        # later, so its checkpoints are kept only while it waits on an interrupt (then
        # result.thread_id is the handle to resume it); otherwise they would pile up.
        if self._owned and thread_id is None and not interrupted and self._checkpointer is not None:
            await self._checkpointer.delete_thread(thread)

    async def stream(
        self,
        input: AgentInput | None,
        *,
        resume: Any,
        thread_id: str | None,
        context: RunContext | None,
        deps: Any = None,
    ) -> AsyncIterator[AgentEvent]:
        from bastion.graph import Command

        thread = thread_id or new_sortable_id("thread_")
        context = context or RunContext()
        if input is not None:
            if thread_id is not None:
                await self._refuse_if_waiting(thread_id)
            graph_input: Any = self.start(input)
        else:
            graph_input = None if resume is CONTINUE else Command(resume=resume)
        parent = await self._trace_parent(thread_id, context, graph_input)
        with (
            self._span(context, input, parent) as span,
            use_runtime(Runtime(context=context, streaming=True, deps=deps)),
        ):
            async for event in self.app().astream(graph_input, thread_id=thread, context=context):
                payload = _custom_payload(event)
                if payload is not None:
                    yield payload
            result = await self._final(thread_id, thread)
            _record_output(span, result)
        yield RunDone(result)

    async def result(self, thread_id: str) -> AgentResult[Any]:
        """The thread's current result; raises the failure its last run ended with."""
        snapshot = await self.app().aget_state(thread_id)
        values = dict(snapshot.values or {})
        failure = values.get("error")
        if failure and not snapshot.interrupts:
            raise rebuild_failure(failure)
        return self.to_result(values, list(snapshot.interrupts or []), thread_id)


class Runner(GraphRunner):
    """Runs one agent (and the agents it can hand off to) as the model/tools loop."""

    def __init__(self, agent: Agent[Any]) -> None:
        super().__init__()
        self.agent = agent
        self.name = agent.name
        self.checkpointer = agent.checkpointer
        self._group: AgentGroup | None = None

    @property
    def group(self) -> AgentGroup:
        if self._group is None:
            self._group = AgentGroup.reachable_from(self.agent)
        return self._group

    def build(self) -> Graph[AgentState]:
        from bastion.graph import START, Graph

        group = self.group
        graph = Graph(AgentState)
        graph.add_node("model", make_model_node(group))
        histories = Histories(self._load_values)
        graph.add_node("tool", make_tool_node(group, histories))
        graph.add_node("handoff", make_handoff_node(group))
        graph.add_edge(START, "model")
        graph.add_conditional_edges("model", make_router(group, histories))
        graph.add_edge("tool", "model")
        graph.add_edge("handoff", "model")
        return graph

    async def _load_values(self, thread_id: str) -> dict[str, Any]:
        snapshot = await self.app().aget_state(thread_id)
        return dict(snapshot.values or {})

    def step_limit(self) -> int:
        # The agents' own max_turns end a loop first (with a clearer error); this backs it up.
        return 2 * max(a.max_turns for a in self.group.agents.values()) + 4

    def start(self, input: AgentInput) -> dict[str, Any]:
        return {
            "messages": to_messages(input),
            "run_id": new_sortable_id("run_"),
            "turns": 0,
            "retries": 0,
            "output": None,
            "usage": {},
            "cost": 0.0,
            "done": False,
            "error": None,
            "callers": [],  # a failed run's pending return_to_caller handoffs do not carry over
        }

    def to_result(self, values: dict[str, Any], interrupts: list[Any], thread_id: str) -> AgentResult[Any]:
        agent = self.group.active(values)
        output: Any = None
        if values.get("done") and not interrupts:
            stored = values.get("output")
            output = agent.output_spec.load(stored) if agent.output_spec else stored
        messages: Sequence[Message] = values.get("messages") or []
        nested_usage, nested_cost = total_spend(values.get("spend") or [], values.get("run_id"))
        return AgentResult(
            output=output,
            messages=list(messages),
            usage=Usage.from_dict(values.get("usage") or {}) + nested_usage,
            cost=float(values.get("cost") or 0.0) + nested_cost,
            interrupts=interrupts,
            thread_id=thread_id,
            agent=agent.name,
            turns=int(values.get("turns") or 0),
        )


def _record_output(span: Any, result: AgentResult[Any]) -> None:
    if span is not None and not result.interrupted:
        output = result.output
        dump = getattr(output, "model_dump", None)
        span.record_output(dump(mode="json") if callable(dump) else output)


def _custom_payload(event: Any) -> AgentEvent | None:
    from bastion.graph.agent._result import (
        HandoffEvent,
        MessageEvent,
        TokenEvent,
        ToolCallEvent,
        ToolResultEvent,
    )

    data = getattr(event, "data", event)
    if isinstance(data, TokenEvent | ToolCallEvent | ToolResultEvent | MessageEvent | HandoffEvent):
        return data
    return None
