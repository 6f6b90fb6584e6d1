"""The adapter that deploys a compiled `Graph` like an agent: runs, interrupts answered over the
API, node updates streamed as run events, per-thread checkpoints, history, fork, traces."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from bastion.errors import ConfigError, UserError
from bastion.runtime._adapters import ThreadState, interrupt_json, to_jsonable
from bastion.runtime._types import EventSink, RunOutcome
from bastion.runtime._watchdog import report_trace
from bastion.types import RunContext

# The engine's own event kinds; any other kind is a node's `emit()` and is always forwarded.
_ENGINE_KINDS = frozenset(
    {"node_start", "node_end", "update", "token", "tool_call", "interrupt", "checkpoint", "error", "done"}
)
_MISSING: Any = object()

InputMap = Callable[[Any], Any]
OutputMap = Callable[[Any], Any]


class GraphRunnable(ThreadState):
    """Runs a `CompiledGraph` as a runtime `Runnable`.

    - `input`: how a run's JSON input becomes the graph's input. Default: a JSON object is the
      state update itself. A string names a state key that receives the whole input
      (`input="question"`: `"hi"` → `{"question": "hi"}`). A callable maps it any other way.
    - `output`: what the run reports as its output. Default: the final state (as JSON). A
      string names one state key; a callable maps the final state.
    - `events`: which engine events become run events (SSE): by default each node's state
      `update`, plus `token` and `tool_call`; whatever a node sends with `emit()` under its own
      kind is always forwarded. Add `node_start`, `node_end`, `checkpoint` to see more.

    An `interrupt(value)` in a node pauses the run as `interrupted` with `{"id", "value",
    "payload", "node"}` per interrupt (listed in `/v1/approvals`); the decision sent to
    `POST /v1/runs/{id}/resume` becomes what `interrupt()` returns (one value when one interrupt
    is pending, or `{interrupt_id: value}`). The graph must be compiled with a checkpointer (use
    `env.checkpointer()` in a project): runs, resumes and crash recovery need durable state.
    """

    def __init__(
        self,
        graph: Any,
        *,
        name: str | None = None,
        input: str | InputMap | None = None,
        output: str | OutputMap | None = None,
        events: Collection[str] = ("update", "token", "tool_call"),
        description: str = "",
    ) -> None:
        self.graph = graph
        self.name = name or getattr(graph, "name", None) or "graph"
        if getattr(graph, "checkpointer", None) is None:
            raise ConfigError(
                f"graph {self.name!r} was compiled without a checkpointer; a deployed graph needs durable state "
                "for runs, interrupts and recovery: compile it with graph.compile(checkpointer=env.checkpointer())"
            )
        if not (input is None or isinstance(input, str) or callable(input)):
            raise ConfigError(f"GraphRunnable(input=...) takes a state key or a function, got {type(input).__name__}")
        self.input_map = input
        self.output_map = output
        self.events = frozenset(events)
        self.description = description

    def _checkpointer(self) -> Any:
        return self.graph.checkpointer

    def _label(self) -> str:
        return f"graph {self.name!r}"

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
        # One trace per run attempt, rooted at `invoke_agent {name}` like an agent's: node
        # (compile(trace_nodes=True)), model, tool and checkpoint spans nest under it. A resumed
        # run continues the trace of the run that paused.
        parent = await self.trace_parent(thread_id) if resume is not None else None
        with spans.agent(self.name, context, agent_id=context.run_id, input=input, parent=parent) as span:
            report_trace(span.trace_id)
            outcome = await self._invoke(input, thread_id, context, resume, recover, emit)
            outcome.trace_id = span.trace_id
            if outcome.status == "completed":
                span.record_output(outcome.output)
            return outcome

    def map_input(self, value: Any) -> Any:
        """A run's JSON input as the graph's input (see `input=`)."""
        if callable(self.input_map):
            return self.input_map(value)
        if isinstance(self.input_map, str):
            return {self.input_map: value}
        if isinstance(value, dict):
            return value  # pyright: ignore[reportUnknownVariableType]
        raise UserError(
            f"graph {self.name!r} takes a JSON object of state updates as its input, got {type(value).__name__}; "
            f"send an object, or deploy it as GraphRunnable(graph, input='<state key>') to put any input in that key"
        )

    def map_output(self, state: Any) -> Any:
        if callable(self.output_map):
            return to_jsonable(self.output_map(state))
        if isinstance(self.output_map, str):
            key = self.output_map
            return to_jsonable(state.get(key) if isinstance(state, dict) else getattr(state, key, None))  # pyright: ignore[reportUnknownMemberType]
        return to_jsonable(state)

    async def _graph_input(self, input: Any, thread_id: str, resume: Any, recover: bool) -> Any:
        from bastion.graph import Command

        if resume is not None:
            if recover and not (await self.graph.aget_state(thread_id)).interrupts:
                return None  # the decision was recorded before the crash: continue from there
            return Command(resume=resume)
        if recover:
            return None  # continue from the last checkpoint
        return self.map_input(input)

    async def _invoke(
        self, input: Any, thread_id: str, context: RunContext, resume: Any, recover: bool, emit: EventSink | None
    ) -> RunOutcome:
        graph_input = await self._graph_input(input, thread_id, resume, recover)
        final: Any = _MISSING
        events = self.graph.astream(graph_input, thread_id=thread_id, context=context)
        try:
            async for event in events:
                if event.kind == "done":
                    final = event.data
                elif emit is not None and (event.kind in self.events or event.kind not in _ENGINE_KINDS):
                    await emit(str(event.kind), _event_json(event))
        finally:
            await events.aclose()  # also when emit() failed: the graph's task is cancelled now
        if final is _MISSING:
            raise RuntimeError(f"graph {self.name!r} stopped streaming without a final state")
        if isinstance(final, dict) and "__interrupt__" in final:
            pending: list[Any] = list(final.pop("__interrupt__"))  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(final, dict):
            pending = []
        else:  # a non-dict state carries no interrupts in its output: read them from the thread
            pending = list((await self.graph.aget_state(thread_id)).interrupts)
        if pending:
            return RunOutcome("interrupted", interrupts=[interrupt_json(i) for i in pending])
        return RunOutcome("completed", output=self.map_output(final))


def _event_json(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"node": event.node, "step": event.step, "data": to_jsonable(event.data)}
    if event.ns:
        data["ns"] = event.ns
    if event.task_id:
        data["task_id"] = event.task_id
    return data


__all__ = ["GraphRunnable"]
