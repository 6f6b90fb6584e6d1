"""The agent loop as a graph: `model` → one `tool` task per call (in parallel) → `model` …
→ final answer; a handoff call goes to `handoff`, which switches the active agent.

One graph serves a single agent and a group of agents connected by handoffs: the state names
the active agent, and the nodes act for whichever agent is active. Every model call and every
tool call runs inside `memo`, and each tool call is its own engine task (with its own
pending writes and interrupt ids), so a run resumed from a checkpoint (after a crash or an
approval interrupt) replays completed calls instead of repeating them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from bastion.errors import MaxTurnsExceededError, OutputValidationError
from bastion.gateway import collect
from bastion.graph import END, NodeConfig, Send, append, emit, memo
from bastion.graph.agent._codec import response_from_dict, response_to_dict, result_from_dict, result_to_dict
from bastion.graph.agent._failure import failed
from bastion.graph.agent._history import tag
from bastion.graph.agent._journal import task_journal
from bastion.graph.agent._nested import collect_spend
from bastion.graph.agent._output import OutputInvalid
from bastion.graph.agent._result import (
    HandoffEvent,
    MessageEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from bastion.graph.agent._runtime import current_runtime
from bastion.graph.agent._window import request_messages
from bastion.memory import use_run_context
from bastion.tools import ToolContext, use_journal, use_tool_context
from bastion.tracing import spans
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent


class AgentState(TypedDict, total=False):
    messages: Annotated[list[Message], append]  # the whole thread, oldest first
    run_id: str  # scopes journal keys to one run of the thread
    active: str  # the agent whose turn it is ("" = the entry agent)
    view_prefix: list[Message]  # history handed over at the last handoff (already filtered)
    view_start: int  # messages[view_start:] follow the handed-over prefix
    turns: int  # model calls in this run
    retries: int  # structured-output retries used in this run
    output: Any  # the final answer in JSON form
    usage: dict[str, int]  # this run's own model calls
    cost: float
    spend: Annotated[list[dict[str, Any]], append]  # sub-agents run as tools: {"run_id", "usage", "cost"}
    done: bool
    error: dict[str, str] | None  # how this run failed: {"type", "message"} (raised by the runner)
    summaries: dict[str, dict[str, Any]]  # per agent: the running summary of its evicted turns
    deferred: bool  # model calls go through the provider's batch API (Agent.run(deferred=True))
    handed_by: str  # the agent that last passed control to the active one
    # Agents waiting for a `return_to_caller` handoff to answer, innermost last:
    # {"agent", "view" (what it saw up to its transfer call), "results" (that turn's tool results), "call_id"}
    callers: list[dict[str, Any]]


@dataclass(slots=True)
class AgentGroup:
    """The agents one graph can hand control between, by name; `entry` starts a thread."""

    entry: str
    agents: dict[str, Agent[Any]]

    @classmethod
    def reachable_from(cls, entry: Agent[Any]) -> AgentGroup:
        from bastion.errors import UserError

        agents: dict[str, Agent[Any]] = {}
        todo = [entry]
        while todo:
            agent = todo.pop()
            seen = agents.get(agent.name)
            if seen is agent:
                continue
            if seen is not None:
                raise UserError(f"two different agents are both named {agent.name!r}; give each agent a unique name=")
            agents[agent.name] = agent
            todo.extend(h.target for h in agent.handoffs)
        return cls(entry.name, agents)

    def active(self, state: Mapping[str, Any]) -> Agent[Any]:
        return self.agents[state.get("active") or self.entry]


def view(state: Mapping[str, Any]) -> list[Message]:
    """The history the active agent sees."""
    messages: list[Message] = state.get("messages") or []
    return [*(state.get("view_prefix") or []), *messages[state.get("view_start") or 0 :]]


def acting_as(group: AgentGroup, agent: Agent[Any], state: Mapping[str, Any]) -> AbstractContextManager[Any]:
    """The span the active agent's work (model and tool calls) nests under: the run's own span
    (named after it) for the entry agent, `invoke_agent <agent>` (naming who handed over) for an
    agent that took over by handoff, so its calls are not attributed to the agent that handed
    off. One such span per model turn or tool call: a node is the unit the engine may replay."""
    if agent.name == group.entry:
        return nullcontext()
    span = spans.agent(agent.name, agent.request_context(current_runtime().context))
    return _HandoffSpan(span, state.get("handed_by") or group.entry, agent.name)


class _HandoffSpan:
    """Sets the from/to attributes once the span has started (before, there is nothing to set)."""

    __slots__ = ("_from", "_span", "_to")

    def __init__(self, span: spans.AgentSpan, source: str, target: str) -> None:
        self._span, self._from, self._to = span, source, target

    def __enter__(self) -> spans.AgentSpan:
        span = self._span.__enter__()
        span.set_attributes({HANDOFF_FROM: self._from, HANDOFF_TO: self._to})
        return span

    def __exit__(self, *exc: Any) -> None:
        self._span.__exit__(*exc)


HANDOFF_FROM = "bastion.handoff.from"
HANDOFF_TO = "bastion.handoff.to"


def hand_back(agent: Agent[Any], state: Mapping[str, Any], update: dict[str, Any], output: Any) -> dict[str, Any]:
    """`agent` answered after a `return_to_caller` handoff: the caller resumes where it handed
    over, seeing the answer as the result of its transfer call."""
    callers = list(state.get("callers") or [])
    caller = callers.pop()
    results: list[Message] = []
    for message in caller["results"]:
        result = message.tool_results[0] if message.tool_results else None
        if result is not None and result.tool_call_id == caller["call_id"]:
            content = {"agent": agent.name, "answer": output}
            # The answer is model output, possibly steered by what the sub-agent read: untrusted.
            message = tag(Message.tool(ToolResult(result.tool_call_id, result.name, content)), caller["agent"])
        results.append(message)
    emit("handoff", HandoffEvent(agent.name, caller["agent"]))
    return {
        **update,
        "active": caller["agent"],
        "handed_by": agent.name,
        "callers": callers,
        "view_prefix": [*caller["view"], *results],
        "view_start": len(state.get("messages") or []) + len(update["messages"]),
    }


async def _call_model(agent: Agent[Any], request: ModelRequest, batch_key: str | None = None) -> ModelResponse:
    if batch_key is not None:
        return await _call_deferred(agent, request, batch_key)
    model = agent.resolved_model()
    runtime = current_runtime()
    if not runtime.streaming:
        return await model.request(request)

    async def events() -> AsyncIterator[StreamEvent]:
        async for event in model.stream(request):
            if isinstance(event, TextDelta) and event.text:
                emit("token", TokenEvent(agent.name, event.text))
            yield event

    return await collect(events())


async def _call_deferred(agent: Agent[Any], request: ModelRequest, key: str) -> ModelResponse:
    """The model call of a deferred run: a batch of one at batch rates. The batch key names the
    run and turn, and the gateway records it before submitting, so a run resumed after a crash
    polls the batch it already submitted instead of sending it again."""
    from bastion.gateway import GatewayModel
    from bastion.graph.agent._resolve import shared_gateway

    model = agent.resolved_model()
    if isinstance(model, GatewayModel):
        result = await model.gateway.batch([request], model.target, key=key)
    else:
        source = agent.gateway or shared_gateway()
        batch = getattr(source, "batch", None)  # optional in a `ModelSource`
        if batch is None:
            raise NotImplementedError(
                f"{type(source).__name__}.batch: run(deferred=True) needs a gateway with a batch API; "
                "pass gateway=bastion.Gateway(...)"
            )
        result = await batch([request], model, key=key)
    item = result.items[0]
    if item.response is None:
        assert item.error is not None
        raise item.error
    return item.response


def _scrub_answer(agent: Agent[Any], message: Message, state: Mapping[str, Any]) -> None:
    """A final answer must not echo the data markers the tool gateway wrapped results in (a
    small model sometimes repeats them); the gateway knows its own markers."""
    if not any(m.role == "tool" for m in state.get("messages") or ()):
        return
    scrub: Callable[[str], str] | None = getattr(agent.executor(), "scrub_answer", None)
    if scrub is None:
        return
    for part in message.parts:
        if isinstance(part, TextPart):
            part.text = scrub(part.text)


def make_model_node(group: AgentGroup) -> Any:
    async def model_node(state: AgentState) -> dict[str, Any]:
        agent = group.active(state)
        with acting_as(group, agent, state):
            return await model_turn(agent, state)

    async def model_turn(agent: Agent[Any], state: AgentState) -> dict[str, Any]:
        turns = state.get("turns") or 0
        if turns >= agent.max_turns:
            return failed(
                MaxTurnsExceededError(
                    f"agent {agent.name!r} made {turns} model calls without a final answer (max_turns="
                    f"{agent.max_turns}); raise max_turns=, or check that the tools give the model what it needs"
                )
            )
        runtime = current_runtime()
        run_id = state.get("run_id", "")
        window = await request_messages(
            agent, state, view(state), runtime.context, key=f"{run_id}:summary:{agent.name}:{turns}"
        )
        request = ModelRequest(
            messages=window.messages,
            tools=agent.tool_specs(),
            output=agent.output_spec.schema if agent.output_spec else None,
            settings=agent.model_settings,
            context=agent.request_context(runtime.context),
        )

        key = f"{state.get('run_id', '')}:model:{agent.name}:{turns}"
        batch_key = f"deferred:{key}" if state.get("deferred") else None

        async def call() -> dict[str, Any]:
            response = await _call_model(agent, request, batch_key)
            agent.canonical_tool_calls(response.message)
            tag(response.message, agent.name)
            response.message.name = agent.name
            emit("message", MessageEvent(agent.name, response.message))
            return response_to_dict(response)

        response = response_from_dict(await memo(key, call))
        message = response.message
        usage = Usage.from_dict(state.get("usage") or {}) + window.usage + response.usage
        update: dict[str, Any] = {
            "messages": [message],
            "turns": turns + 1,
            "usage": usage.to_dict(),
            "cost": (state.get("cost") or 0.0) + window.cost + (response.cost_usd or 0.0),
        }
        if window.summaries is not None:
            update["summaries"] = window.summaries
        if message.tool_calls:
            return update
        _scrub_answer(agent, message, state)
        spec = agent.output_spec
        try:
            output = message.text if spec is None else spec.parse(message.text)
        except OutputInvalid as e:
            assert spec is not None
            retries = state.get("retries") or 0
            if retries >= agent.output_retries:
                error = OutputValidationError(
                    f"agent {agent.name!r}: the final answer did not match {spec.schema.name} after "
                    f"{retries + 1} attempts ({e.problems}); raise output_retries=, simplify the output "
                    "type, or use a model that supports structured output",
                    model=response.model or None,
                )
                return {**update, **failed(error)}
            return {**update, "messages": [message, spec.feedback(e.problems)], "retries": retries + 1}
        if state.get("callers"):
            return hand_back(agent, state, update, output)
        return {**update, "output": output, "done": True}

    return model_node


class Histories:
    """What each tool task passes to the tool gateway as the history (`ToolCallContext.messages`).

    A `Send` argument is persisted with the checkpoint, so putting the history there would
    write a full copy per tool call per turn (and defeat the append-only message log). The
    router leaves it here instead, in process, and a task that finds nothing (the process
    restarted) rebuilds it from the thread's checkpoint.
    """

    def __init__(self, load: Callable[[str], Awaitable[Mapping[str, Any]]], limit: int = 4096) -> None:
        self._load = load
        self._limit = limit
        self._items: OrderedDict[tuple[str | None, str, int], list[Message]] = OrderedDict()

    def put(self, key: tuple[str | None, str, int], history: list[Message]) -> None:
        self._items[key] = history
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def drop(self, thread_id: str | None, run_id: str) -> None:
        for key in [k for k in self._items if k[0] == thread_id and k[1] == run_id]:
            del self._items[key]

    async def get(self, key: tuple[str | None, str, int]) -> list[Message]:
        history = self._items.get(key)
        if history is not None:
            return history
        assert key[0] is not None  # tool tasks only run with a thread (the runner always has one)
        return view(await self._load(key[0]))


def make_router(group: AgentGroup, histories: Histories) -> Any:
    """After a model turn: finish, retry the model, hand off, or fan the tool calls out, one
    task per call, so they run in parallel and each has its own journal and interrupt ids."""

    def route_after_model(state: AgentState, config: NodeConfig) -> Any:
        run_id = state.get("run_id", "")
        if state.get("done"):
            histories.drop(config.thread_id, run_id)
            return END
        messages = state.get("messages") or []
        last = messages[-1] if messages else None
        if last is None or last.role != "assistant" or not last.tool_calls:
            return "model"  # structured-output retry: the feedback message is the newest turn
        agent = group.active(state)
        if any(c.name in agent.handoffs_by_tool for c in last.tool_calls):
            return "handoff"
        turn = state.get("turns") or 0
        histories.put((config.thread_id, run_id, turn), view(state))
        job = {"agent": agent.name, "run_id": run_id, "turn": turn, "handed_by": state.get("handed_by") or ""}
        return [Send("tool", {**job, "call": c}) for c in last.tool_calls]

    return route_after_model


def make_tool_node(group: AgentGroup, histories: Histories) -> Any:
    async def tool_node(job: dict[str, Any], config: NodeConfig) -> dict[str, Any]:
        agent = group.agents[job["agent"]]
        call: ToolCall = job["call"]
        runtime = current_runtime()

        async def run() -> dict[str, Any]:
            emit("tool_call", ToolCallEvent(agent.name, call))
            history = await histories.get((config.thread_id, job["run_id"], job["turn"]))
            context = ToolContext[Any](
                run=agent.request_context(runtime.context),
                messages=history,
                agent=agent.name,
                deps=runtime.deps if runtime.deps is not None else agent.deps,
                thread_id=config.thread_id,
                tool_call_id=call.id,
            )
            tool = agent.tools_by_name.get(call.name)
            with (
                acting_as(group, agent, job),
                spans.tool(
                    call.name,
                    call.id,
                    tool.side_effect if tool else "none",
                    arguments=call.arguments,
                    context=context.run,
                ) as span,
                collect_spend() as spent,  # sub-agents called as tools report here
                use_run_context(context),  # memory tools pick their namespace (tenant, agent, user) from it
                use_tool_context(context),  # injected into tools that take a `ToolContext`
                # Side effects are journaled where the worker that resumes this task can see them.
                use_journal(task_journal()),
            ):
                result = await agent.executor().execute(call, agent.tools_by_name, context)
                span.record_result(result)
            emit("tool_result", ToolResultEvent(agent.name, result))
            return {"result": result_to_dict(result), "spend": spent}

        record = await memo(f"{job['run_id']}:tool:{call.id}", run)
        result = result_from_dict(record["result"])
        update: dict[str, Any] = {"messages": [tag(Message.tool(result), agent.name)]}
        if record["spend"]:
            update["spend"] = [{**s, "run_id": job["run_id"]} for s in record["spend"]]
        return update

    return tool_node


def make_handoff_node(group: AgentGroup) -> Any:
    async def handoff_node(state: AgentState) -> dict[str, Any]:
        """Follow the first handoff of the turn; the turn's other calls are not run (the
        receiving agent decides afresh), and the model is told so."""
        agent = group.active(state)
        history = view(state)
        calls = history[-1].tool_calls
        chosen = next(agent.handoffs_by_tool[c.name] for c in calls if c.name in agent.handoffs_by_tool)
        target = chosen.target.name
        results: list[Message] = []
        followed = False
        for call in calls:
            if call.name == chosen.tool_name and not followed:
                followed = True
                content: Any = {"transferred_to": target}
                results.append(tag(Message.tool(ToolResult(call.id, call.name, content, trust="trusted")), agent.name))
            else:
                skipped = {"error": "NotRun", "message": f"not run: the conversation was handed to {target}"}
                results.append(
                    tag(
                        Message.tool(ToolResult(call.id, call.name, skipped, is_error=True, trust="trusted")),
                        agent.name,
                    )
                )
        emit("handoff", HandoffEvent(agent.name, target))
        update: dict[str, Any] = {
            "messages": results,
            "active": target,
            "handed_by": agent.name,
            "view_prefix": chosen.filter([*history, *results]),
            "view_start": len(state.get("messages") or []) + len(results),
        }
        if chosen.return_to_caller:
            call_id = next(c.id for c in calls if c.name == chosen.tool_name)
            caller = {"agent": agent.name, "view": history, "results": results, "call_id": call_id}
            update["callers"] = [*(state.get("callers") or []), caller]
        return update

    return handoff_node
