"""A supervisor routes work to member agents and answers once they are done.

Two ways to route:
- by model: the supervisor's model sees one `route_to_<member>` tool per member (argument:
  the task). Several routing calls in one turn run those members in parallel (`Send`); their
  answers come back as the tools' results, and the supervisor decides again.
- by rule: `router(messages) -> member name | None`, no supervisor model at all; the member
  sees the conversation through `history` (default: without tool chatter), and `None` ends the
  run with the last member's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, TypedDict

from bastion._sync import run_sync
from bastion.checkpoint import Checkpointer
from bastion.errors import MaxTurnsExceededError, UserError
from bastion.gateway import Model
from bastion.graph import END, START, Graph, Send, append, memo
from bastion.graph.agent._agent import Agent, AgentInput
from bastion.graph.agent._codec import response_from_dict, response_to_dict
from bastion.graph.agent._failure import failed
from bastion.graph.agent._history import HistoryFilter, drop_tool_chatter, tag
from bastion.graph.agent._members import output_text, run_member, said_by, spend_of, total_spend
from bastion.graph.agent._resolve import ModelSource, resolve_model_like
from bastion.graph.agent._result import AgentEvent, AgentResult
from bastion.graph.agent._run import CONTINUE, GraphRunner, to_messages
from bastion.graph.agent._runtime import current_runtime
from bastion.types import (
    Message,
    ModelRequest,
    ModelSettings,
    RunContext,
    ToolCall,
    ToolResult,
    ToolSpec,
    new_sortable_id,
)

Router = Callable[[list[Message]], str | None]
"""A routing rule: the conversation so far → the member to run next, or None to finish."""

ROUTE_PREFIX = "route_to_"


class SupervisorState(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    run_id: str
    rounds: int
    routes: list[dict[str, Any]]  # the members to run this round: {"agent", "task", "call_id"}
    spend: Annotated[list[dict[str, Any]], append]
    output: Any
    done: bool
    error: dict[str, str] | None


class Supervisor:
    """Routes each request to member agents (each with its own model/tier and tools) and
    returns the final answer; see the module docstring for model vs rule routing."""

    def __init__(
        self,
        agents: Sequence[Agent[Any]],
        *,
        model: Model | str | None = None,
        router: Router | None = None,
        instructions: str = "",
        name: str = "supervisor",
        max_rounds: int = 5,
        history: HistoryFilter = drop_tool_chatter,
        model_settings: ModelSettings | None = None,
        checkpointer: Checkpointer | None = None,
        gateway: ModelSource | None = None,
    ) -> None:
        if (model is None) == (router is None):
            raise UserError("a Supervisor routes either by model (model=...) or by rule (router=...): pass exactly one")
        if not agents:
            raise UserError("a Supervisor needs at least one member agent")
        names = [a.name for a in agents]
        if len(set(names)) != len(names):
            raise UserError(f"member agents need unique names, got {names}")
        self.name = name
        self.members = {a.name: a for a in agents}
        self.instructions = instructions
        self.max_rounds = max_rounds
        self.history = history
        self.model_settings = model_settings or ModelSettings()
        self._model = model
        self._gateway = gateway
        self._router = router
        self._runner = _SupervisorRunner(self, checkpointer)

    @property
    def checkpointer(self) -> Checkpointer | None:
        return self._runner.checkpointer

    # --- running (same surface as Agent) -----------------------------------------------------

    async def run(
        self, input: AgentInput, *, thread_id: str | None = None, context: RunContext | None = None
    ) -> AgentResult[Any]:
        return await self._runner.run(input, thread_id=thread_id, context=context)

    async def resume(
        self, value: Any = CONTINUE, *, thread_id: str, context: RunContext | None = None
    ) -> AgentResult[Any]:
        """Answer a pending interrupt (raised inside a member) or, without a value, continue
        after an error; see `Agent.resume`."""
        return await self._runner.resume(value, thread_id=thread_id, context=context)

    def run_sync(
        self, input: AgentInput, *, thread_id: str | None = None, context: RunContext | None = None
    ) -> AgentResult[Any]:
        return run_sync(self.run(input, thread_id=thread_id, context=context))

    def resume_sync(
        self, value: Any = CONTINUE, *, thread_id: str, context: RunContext | None = None
    ) -> AgentResult[Any]:
        return run_sync(self.resume(value, thread_id=thread_id, context=context))

    def stream(
        self,
        input: AgentInput | None,
        *,
        resume: Any = CONTINUE,
        thread_id: str | None = None,
        context: RunContext | None = None,
    ) -> AsyncIterator[AgentEvent]:
        """Events as the members work; `input=None, resume=value` continues an interrupted run."""
        return self._runner.stream(input, resume=resume, thread_id=thread_id, context=context)

    # --- pieces ------------------------------------------------------------------------------

    def route_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                f"{ROUTE_PREFIX}{agent.name}",
                f"Give a task to the {agent.name} agent"
                + (f" ({agent.description})" if agent.description else "")
                + ". It sees only the task, so include every detail it needs.",
                {
                    "type": "object",
                    "properties": {"task": {"type": "string", "description": "the complete task"}},
                    "required": ["task"],
                    "additionalProperties": False,
                },
            )
            for agent in self.members.values()
        ]

    def system_message(self) -> Message:
        roster = "\n".join(f"- {a.name}: {a.description or 'no description'}" for a in self.members.values())
        base = self.instructions or "You coordinate a team of agents. Route each piece of work to the right one."
        return Message.system(
            f"{base}\nTeam:\n{roster}\nWhen the work is done, answer the user directly without calling a tool."
        )

    async def supervise(self, state: SupervisorState) -> dict[str, Any]:
        rounds = state.get("rounds") or 0
        if rounds >= self.max_rounds:
            return failed(
                MaxTurnsExceededError(
                    f"supervisor {self.name!r} routed {rounds} rounds without finishing (max_rounds="
                    f"{self.max_rounds}); raise max_rounds= or make the routing rule/instructions say when "
                    "the work is done"
                )
            )
        messages = state.get("messages") or []
        run_id = state.get("run_id", "")
        if self._router is not None:
            return self._route_by_rule(messages, rounds)
        return await self._route_by_model(messages, rounds, run_id)

    def _route_by_rule(self, messages: list[Message], rounds: int) -> dict[str, Any]:
        assert self._router is not None
        target = self._router(list(messages))
        if target is None:
            last = next((m for m in reversed(messages) if m.role == "assistant"), None)
            return {"done": True, "output": last.text if last else "", "routes": [], "rounds": rounds}
        if target not in self.members:
            raise UserError(f"the routing rule returned {target!r}, which is not a member: {sorted(self.members)}")
        return {"routes": [{"agent": target, "task": None, "call_id": None}], "rounds": rounds + 1}

    async def _route_by_model(self, messages: list[Message], rounds: int, run_id: str) -> dict[str, Any]:
        assert self._model is not None
        model = resolve_model_like(self._model, self._gateway)
        runtime = current_runtime()
        from dataclasses import replace

        request = ModelRequest(
            messages=[self.system_message(), *messages],
            tools=self.route_specs(),
            settings=self.model_settings,
            context=replace(runtime.context, agent=self.name),
        )

        async def call() -> dict[str, Any]:
            return response_to_dict(await model.request(request))

        response = response_from_dict(await memo(f"{run_id}:supervisor:{rounds}", call))
        message = tag(response.message, self.name)
        message.name = self.name
        spend = {"run_id": run_id, "usage": response.usage.to_dict(), "cost": response.cost_usd or 0.0}
        if not message.tool_calls:
            return {"messages": [message], "spend": [spend], "done": True, "output": message.text, "routes": []}
        routes: list[dict[str, Any]] = []
        rejected: list[Message] = []
        for call_ in message.tool_calls:
            member = call_.name.removeprefix(ROUTE_PREFIX)
            task = call_.arguments.get("task")
            if not call_.name.startswith(ROUTE_PREFIX) or member not in self.members or not isinstance(task, str):
                rejected.append(_rejection(call_, sorted(self.members)))
                continue
            routes.append({"agent": member, "task": task, "call_id": call_.id, "tool": call_.name})
        return {
            "messages": [message, *rejected],
            "spend": [spend],
            "routes": routes,
            "rounds": rounds + 1,
        }

    async def run_route(self, route: dict[str, Any]) -> dict[str, Any]:
        agent = self.members[route["agent"]]
        if route.get("call_id"):
            record = await run_member(agent, route["task"], key=f"{route['key']}")
            result = ToolResult(route["call_id"], route["tool"], output_text(record["output"]))
            reply = tag(Message.tool(result), agent.name)
        else:
            record = await run_member(agent, route["input"], key=f"{route['key']}")
            reply = said_by(agent.name, output_text(record["output"]))
        return {"messages": [reply], "spend": [spend_of(record, route["run_id"])]}


def _rejection(call: ToolCall, members: list[str]) -> Message:
    content = {
        "error": "UnknownRoute",
        "message": f"{call.name!r} is not a routing tool with a 'task' string; route to one of "
        + ", ".join(f"{ROUTE_PREFIX}{m}" for m in members),
    }
    return Message.tool(ToolResult(call.id, call.name, content, is_error=True, trust="trusted"))


class _SupervisorRunner(GraphRunner):
    def __init__(self, supervisor: Supervisor, checkpointer: Checkpointer | None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.name = supervisor.name
        self.checkpointer = checkpointer

    def build(self) -> Graph[SupervisorState]:
        sup = self.supervisor

        def fan_out(state: SupervisorState) -> Any:
            if state.get("done"):
                return END
            routes = state.get("routes") or []
            if not routes:
                return "supervisor"  # every routing call was rejected: let the model try again
            run_id = state.get("run_id", "")
            base = f"{run_id}:member:{state.get('rounds') or 0}"
            messages = state.get("messages") or []
            # Send arguments are persisted: only a rule-routed member's input carries history.
            return [
                Send(
                    "member",
                    {**r, "key": f"{base}:{i}:{r['agent']}", "run_id": run_id}
                    | ({} if r.get("call_id") else {"input": sup.history(messages)}),
                )
                for i, r in enumerate(routes)
            ]

        graph = Graph(SupervisorState)
        graph.add_node("supervisor", sup.supervise)
        graph.add_node("member", sup.run_route, input_schema=dict)  # fed by Send(route)
        graph.add_edge(START, "supervisor")
        graph.add_conditional_edges("supervisor", fan_out)
        graph.add_edge("member", "supervisor")
        return graph

    def step_limit(self) -> int:
        return 2 * self.supervisor.max_rounds + 4

    def start(self, input: AgentInput) -> dict[str, Any]:
        return {
            "messages": to_messages(input),
            "run_id": new_sortable_id("run_"),
            "rounds": 0,
            "routes": [],
            "output": None,
            "done": False,
            "error": None,
        }

    def to_result(self, values: dict[str, Any], interrupts: list[Any], thread_id: str) -> AgentResult[Any]:
        usage, cost = total_spend(values.get("spend") or [], values.get("run_id"))
        return AgentResult(
            output=values.get("output") if values.get("done") else None,
            messages=list(values.get("messages") or []),
            usage=usage,
            cost=cost,
            interrupts=interrupts,
            thread_id=thread_id,
            agent=self.supervisor.name,
            turns=int(values.get("rounds") or 0),
        )
