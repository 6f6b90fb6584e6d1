"""Planner → parallel executors → verifier.

The planner (an agent with `output_type=Plan`) splits the task into steps; one executor run
per step starts in the same superstep (`Send` fan-out), each seeing only the task and its own
step; the verifier (`output_type=Verdict`) judges the results. A rejected round goes back to
the planner with the verifier's feedback, up to `max_rounds`; the last verdict is returned
either way, so the caller decides what an unverified outcome means.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict, cast

from pydantic import BaseModel, Field

from bastion._sync import run_sync
from bastion.errors import UserError
from bastion.graph import END, START, Graph, Send, append
from bastion.graph.agent._agent import Agent, AgentInput
from bastion.graph.agent._members import output_text, run_member, said_by, spend_of, total_spend
from bastion.graph.agent._result import AgentEvent, AgentResult
from bastion.graph.agent._run import CONTINUE, GraphRunner, to_messages
from bastion.types import Message, RunContext, new_id


class Plan(BaseModel):
    """The planner's output: independent steps that can run in parallel."""

    steps: list[str] = Field(description="independent steps, each doable without the others' results")


class Verdict(BaseModel):
    """The verifier's output."""

    ok: bool = Field(description="true if the results fully and correctly accomplish the task")
    feedback: str = Field("", description="what is wrong or missing, if not ok")


@dataclass(slots=True)
class PlanOutcome:
    task: str
    plan: list[str]
    results: list[Any]  # executor outputs, in plan order
    verdict: Verdict
    rounds: int
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier rejected rounds

    @property
    def ok(self) -> bool:
        return self.verdict.ok


class PlanState(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    run_id: str
    task: str
    round: int
    plan: list[str]
    results: Annotated[list[dict[str, Any]], append]  # {"round", "index", "step", "output"}
    rejected: Annotated[list[dict[str, Any]], append]  # {"round", "plan", "feedback"}
    spend: Annotated[list[dict[str, Any]], append]
    verdict: dict[str, Any] | None
    done: bool


class PlanExecuteVerify:
    """Plan, execute the steps in parallel, verify; each role is an `Agent` with its own model."""

    def __init__(
        self,
        planner: Agent[Any],
        executor: Agent[Any],
        verifier: Agent[Any],
        *,
        name: str = "plan_execute_verify",
        max_rounds: int = 2,
        max_steps: int = 16,
        checkpointer: Any = None,
    ) -> None:
        _require_output(planner, "planner", Plan)
        _require_output(verifier, "verifier", Verdict)
        if max_rounds < 1:
            raise UserError(f"max_rounds must be at least 1, got {max_rounds}")
        self.name = name
        self.planner = planner
        self.executor = executor
        self.verifier = verifier
        self.max_rounds = max_rounds
        self.max_steps = max_steps
        self._runner = _PlanRunner(self, checkpointer)

    async def run(
        self, task: str, *, thread_id: str | None = None, context: RunContext | None = None
    ) -> AgentResult[PlanOutcome]:
        return await self._runner.run(task, thread_id=thread_id, context=context)

    def stream(
        self, task: str, *, thread_id: str | None = None, context: RunContext | None = None
    ) -> AsyncIterator[AgentEvent]:
        """Run and yield the role agents' events (tokens, tool calls ...), then `RunDone`."""
        return self._runner.stream(task, resume=CONTINUE, thread_id=thread_id, context=context)

    async def resume(
        self, value: Any = CONTINUE, *, thread_id: str, context: RunContext | None = None
    ) -> AgentResult[PlanOutcome]:
        """Answer a pending interrupt (raised inside a role's agent) or, without a value,
        continue after an error; see `Agent.resume`."""
        return await self._runner.resume(value, thread_id=thread_id, context=context)

    def run_sync(
        self, task: str, *, thread_id: str | None = None, context: RunContext | None = None
    ) -> AgentResult[PlanOutcome]:
        return run_sync(self.run(task, thread_id=thread_id, context=context))

    def resume_sync(
        self, value: Any = CONTINUE, *, thread_id: str, context: RunContext | None = None
    ) -> AgentResult[PlanOutcome]:
        return run_sync(self.resume(value, thread_id=thread_id, context=context))

    # --- nodes -------------------------------------------------------------------------------

    async def plan(self, state: PlanState) -> dict[str, Any]:
        rnd = state.get("round") or 0
        task = state.get("task", "")
        prompt = f"Task: {task}\nSplit it into independent steps (at most {self.max_steps})."
        rejected = [r for r in state.get("rejected") or [] if r["run_id"] == state.get("run_id")]
        if rejected:
            last = rejected[-1]
            prompt += (
                f"\nA previous plan {json.dumps(last['plan'])} was rejected by the verifier: {last['feedback']}\n"
                "Make a better plan."
            )
        record = await run_member(self.planner, prompt, key=f"{state.get('run_id', '')}:plan:{rnd}")
        steps = [str(s) for s in Plan.model_validate(record["output"]).steps][: self.max_steps]
        return {
            "plan": steps,
            "round": rnd + 1,
            "messages": [said_by(self.planner.name, output_text(record["output"]))],
            "spend": [spend_of(record, state.get("run_id", ""))],
        }

    async def execute(self, job: dict[str, Any]) -> dict[str, Any]:
        prompt = (
            f"Overall task: {job['task']}\nYour step ({job['index'] + 1} of {job['count']}): {job['step']}\n"
            "Do only this step and answer with its result."
        )
        record = await run_member(self.executor, prompt, key=f"{job['run_id']}:exec:{job['round']}:{job['index']}")
        result = {k: job[k] for k in ("run_id", "round", "index", "step")} | {"output": record["output"]}
        return {
            "results": [result],
            "messages": [said_by(self.executor.name, output_text(record["output"]))],
            "spend": [spend_of(record, job["run_id"])],
        }

    async def verify(self, state: PlanState) -> dict[str, Any]:
        rnd = state.get("round") or 0
        results = self.round_results(state)
        listing = "\n".join(
            f"{i + 1}. {r['step']}\n   result: {output_text(r['output'])}" for i, r in enumerate(results)
        )
        prompt = f"Task: {state.get('task', '')}\nResults of the plan's steps:\n{listing or '(no steps)'}\nJudge them."
        record = await run_member(self.verifier, prompt, key=f"{state.get('run_id', '')}:verify:{rnd}")
        verdict = Verdict.model_validate(record["output"])
        update: dict[str, Any] = {
            "verdict": verdict.model_dump(),
            "messages": [said_by(self.verifier.name, output_text(record["output"]))],
            "spend": [spend_of(record, state.get("run_id", ""))],
        }
        if verdict.ok or rnd >= self.max_rounds:
            return {**update, "done": True}
        rejection = {
            "run_id": state.get("run_id"),
            "round": rnd,
            "plan": state.get("plan"),
            "feedback": verdict.feedback,
        }
        return {**update, "rejected": [rejection]}

    def round_results(self, state: PlanState) -> list[dict[str, Any]]:
        rnd, run_id = state.get("round") or 0, state.get("run_id")
        mine = [r for r in state.get("results") or [] if r["round"] == rnd and r["run_id"] == run_id]
        return sorted(mine, key=lambda r: r["index"])


def _require_output(agent: Agent[Any], role: str, expected: type[BaseModel]) -> None:
    out = agent.output_type
    if not (isinstance(out, type) and issubclass(out, expected)):
        raise UserError(
            f"the {role} agent {agent.name!r} needs output_type={expected.__name__} "
            f"(from bastion.graph.agent import {expected.__name__}), got {out!r}"
        )


class _PlanRunner(GraphRunner):
    def __init__(self, pattern: PlanExecuteVerify, checkpointer: Any) -> None:
        super().__init__()
        self.pattern = pattern
        self.name = pattern.name
        self.checkpointer = checkpointer

    def build(self) -> Any:
        p = self.pattern

        def fan_out(state: PlanState) -> Any:
            plan = state.get("plan") or []
            if not plan:
                return "verify"
            common = {
                "run_id": state.get("run_id", ""),
                "round": state.get("round") or 0,
                "task": state.get("task", ""),
            }
            return [Send("execute", {**common, "index": i, "step": s, "count": len(plan)}) for i, s in enumerate(plan)]

        def after_verify(state: PlanState) -> str:
            return END if state.get("done") else "plan"

        graph = Graph(PlanState)
        graph.add_node("plan", p.plan)
        graph.add_node("execute", p.execute)
        graph.add_node("verify", p.verify)
        graph.add_edge(START, "plan")
        graph.add_conditional_edges("plan", fan_out)
        graph.add_edge("execute", "verify")
        graph.add_conditional_edges("verify", after_verify, {"plan": "plan", END: END})
        return graph

    def step_limit(self) -> int:
        return 3 * self.pattern.max_rounds + 4

    def start(self, input: AgentInput) -> dict[str, Any]:
        messages = to_messages(input)
        return {
            "messages": messages,
            "run_id": new_id("run_"),
            "task": "\n".join(m.text for m in messages if m.role == "user"),
            "round": 0,
            "plan": [],
            "verdict": None,
            "done": False,
        }

    def to_result(self, values: dict[str, Any], interrupts: list[Any], thread_id: str) -> AgentResult[Any]:
        run_id = values.get("run_id")
        usage, cost = total_spend(values.get("spend") or [], run_id)
        outcome: PlanOutcome | None = None
        if values.get("done") and values.get("verdict") is not None:
            outcome = PlanOutcome(
                task=values.get("task", ""),
                plan=list(values.get("plan") or []),
                results=[r["output"] for r in self.pattern.round_results(cast(PlanState, values))],
                verdict=Verdict.model_validate(values["verdict"]),
                rounds=int(values.get("round") or 0),
                history=[r for r in values.get("rejected") or [] if r.get("run_id") == run_id],
            )
        return AgentResult(
            output=outcome,
            messages=list(values.get("messages") or []),
            usage=usage,
            cost=cost,
            interrupts=interrupts,
            thread_id=thread_id,
            agent=self.pattern.name,
            turns=int(values.get("round") or 0),
        )


__all__: Sequence[str] = ["Plan", "PlanExecuteVerify", "PlanOutcome", "Verdict"]
