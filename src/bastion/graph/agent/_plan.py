"""Planner → executors, step by step, each step verified → re-plan only if a step keeps failing.

The planner (an agent with `output_type=Plan`) splits the task into steps; a step may name
the earlier steps whose results it needs (`depends_on`, by default all earlier steps) and
runs once they have passed, seeing their results; steps whose dependencies have all passed
start in the same superstep (`Send` fan-out), so independent steps run in parallel. The
verifier (`output_type=Verdict`) judges each step's result on its own; a rejected step is run
again with the verifier's feedback, up to `max_step_retries` times, while the steps that
passed are kept. Only a step that still fails sends the plan back to the planner (up to
`max_rounds`), with the results that passed: a step the new plan repeats word for word is not
run again. The last verdict is returned either way, so the caller decides what an unverified
outcome means.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict, cast

from pydantic import BaseModel, Field, field_validator

from bastion._sync import run_sync
from bastion.checkpoint import Checkpointer
from bastion.errors import UserError
from bastion.graph import END, START, Graph, Send, append
from bastion.graph.agent._agent import Agent, AgentInput
from bastion.graph.agent._members import output_text, run_member, said_by, spend_of, total_spend
from bastion.graph.agent._result import AgentEvent, AgentResult
from bastion.graph.agent._run import CONTINUE, GraphRunner, to_messages
from bastion.types import Message, RunContext, new_sortable_id


class PlanStep(BaseModel):
    """One step of a plan."""

    task: str = Field(description="what to do in this step")
    depends_on: list[int] | None = Field(
        None,
        description="numbers (1-based) of earlier steps whose results this step needs; [] if it needs none "
        "(independent steps run in parallel); leave out to get all earlier steps' results",
    )


class Plan(BaseModel):
    """The planner's output: the steps, in order."""

    steps: list[PlanStep] = Field(description="the steps, in order")

    @field_validator("steps", mode="before")
    @classmethod
    def _plain_steps(cls, value: Any) -> Any:
        # A plain string is a step that depends on all earlier ones (and older plans were lists of strings).
        if isinstance(value, list):
            return [{"task": s} if isinstance(s, str) else s for s in cast(list[Any], value)]
        return value


class Verdict(BaseModel):
    """The verifier's output."""

    ok: bool = Field(description="true if the result fully and correctly accomplishes the step")
    feedback: str = Field(default="", description="what is wrong or missing, if not ok")


@dataclass(slots=True)
class PlanOutcome:
    task: str
    plan: list[str]
    results: list[Any]  # executor outputs, in plan order (None for a step that did not run)
    verdict: Verdict
    rounds: int
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier rejected rounds
    attempts: list[int] = field(default_factory=list)  # executor runs per step in the last round (0: kept)

    @property
    def ok(self) -> bool:
        return self.verdict.ok


class PlanState(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    run_id: str
    task: str
    round: int
    plan: list[dict[str, Any]]  # {"task", "needs": [0-based indexes of earlier steps]}
    # {"run_id", "round", "index", "step", "output", "ok", "feedback", "attempts"}
    results: Annotated[list[dict[str, Any]], append]
    rejected: Annotated[list[dict[str, Any]], append]  # {"run_id", "round", "plan", "feedback"}
    spend: Annotated[list[dict[str, Any]], append]
    verdict: dict[str, Any] | None
    done: bool


class PlanExecuteVerify:
    """Plan, execute and verify step by step; each role is an `Agent` with its own model."""

    def __init__(
        self,
        planner: Agent[Any],
        executor: Agent[Any],
        verifier: Agent[Any],
        *,
        name: str = "plan_execute_verify",
        max_rounds: int = 2,
        max_steps: int = 16,
        max_step_retries: int = 1,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        _require_output(planner, "planner", Plan)
        _require_output(verifier, "verifier", Verdict)
        if max_rounds < 1:
            raise UserError(f"max_rounds must be at least 1, got {max_rounds}")
        if max_step_retries < 0:
            raise UserError(f"max_step_retries must be 0 or more, got {max_step_retries}")
        self.name = name
        self.planner = planner
        self.executor = executor
        self.verifier = verifier
        self.max_rounds = max_rounds
        self.max_steps = max_steps
        self.max_step_retries = max_step_retries
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
        run_id = state.get("run_id", "")
        task = state.get("task", "")
        prompt = (
            f"Task: {task}\nSplit it into steps (at most {self.max_steps}). For each step say which earlier "
            "steps' results it needs (depends_on); steps that need none run in parallel."
        )
        kept = self.passed(state)
        rejected = [r for r in state.get("rejected") or [] if r["run_id"] == run_id]
        if rejected:
            last = rejected[-1]
            prompt += (
                f"\nA previous plan {json.dumps(last['plan'])} failed: {last['feedback']}\n"
                "Make a better plan. These steps already passed; repeat a step word for word to keep its "
                "result instead of running it again:\n"
                + "\n".join(f"- {step}: {output_text(output)}" for step, output in kept.items())
            )
        record = await run_member(self.planner, prompt, key=f"{run_id}:plan:{rnd}")
        steps = Plan.model_validate(record["output"]).steps[: self.max_steps]
        plan = [{"task": s.task, "needs": _needs(s, i)} for i, s in enumerate(steps)]
        reused = [
            {"run_id": run_id, "round": rnd + 1, "index": i, "step": s["task"], "output": kept[s["task"]]}
            | {"ok": True, "feedback": "", "attempts": 0}
            for i, s in enumerate(plan)
            if s["task"] in kept
        ]
        return {
            "plan": plan,
            "round": rnd + 1,
            "results": reused,
            "messages": [said_by(self.planner.name, output_text(record["output"]))],
            "spend": [spend_of(record, run_id)],
        }

    async def step(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one step, verify it, and run it again with the verifier's feedback while it fails."""
        run_id, key = job["run_id"], f"{job['run_id']}:{job['round']}:{job['index']}"
        head = f"Overall task: {job['task']}\nStep {job['index'] + 1} of {job['count']}: {job['step']}\n"
        earlier = "".join(
            f"Result of step {d['index'] + 1} ({d['step']}): {output_text(d['output'])}\n" for d in job["deps"]
        )
        messages: list[Message] = []
        spend: list[dict[str, Any]] = []
        feedback = ""
        attempt = 0
        while True:
            retry = f"An earlier attempt was rejected: {feedback}\n" if feedback else ""
            prompt = f"{head}{earlier}{retry}Do only this step and answer with its result."
            record = await run_member(self.executor, prompt, key=f"{key}:exec:{attempt}")
            check = (
                f"{head}{earlier}Result: {output_text(record['output'])}\n"
                "Judge whether this result correctly and fully accomplishes this step."
            )
            judged = await run_member(self.verifier, check, key=f"{key}:verify:{attempt}")
            verdict = Verdict.model_validate(judged["output"])
            messages += [
                said_by(self.executor.name, output_text(record["output"])),
                said_by(self.verifier.name, output_text(judged["output"])),
            ]
            spend += [spend_of(record, run_id), spend_of(judged, run_id)]
            attempt += 1
            if verdict.ok or attempt > self.max_step_retries:
                break
            feedback = verdict.feedback or "no reason given"
        result = {k: job[k] for k in ("run_id", "round", "index", "step")} | {
            "output": record["output"],
            "ok": verdict.ok,
            "feedback": verdict.feedback,
            "attempts": attempt,
        }
        return {"results": [result], "messages": messages, "spend": spend}

    async def finish(self, state: PlanState) -> dict[str, Any]:
        """End the round: done if every step passed (or no rounds are left), else re-plan."""
        rnd = state.get("round") or 0
        plan = state.get("plan") or []
        results = self.round_results(state)
        failed = next((r for r in results if not r["ok"]), None)
        if failed is None and len(results) == len(plan):
            verdict = Verdict(ok=True)
        elif failed is None:  # cannot happen: every step runs once its dependencies passed
            verdict = Verdict(ok=False, feedback="some steps did not run")
        else:
            verdict = Verdict(
                ok=False,
                feedback=f"step {failed['index'] + 1} ({failed['step']}) failed verification after "
                f"{failed['attempts']} attempt(s): {failed['feedback']}",
            )
        update: dict[str, Any] = {"verdict": verdict.model_dump()}
        if verdict.ok or rnd >= self.max_rounds:
            return {**update, "done": True}
        rejection = {
            "run_id": state.get("run_id"),
            "round": rnd,
            "plan": [s["task"] for s in plan],
            "feedback": verdict.feedback,
        }
        return {**update, "rejected": [rejection]}

    def schedule(self, state: PlanState) -> Any:
        """The steps whose dependencies have all passed and that have not run yet (in parallel),
        or the end of the round when none are left (or a step failed for good)."""
        plan = state.get("plan") or []
        done = {r["index"]: r for r in self.round_results(state)}
        if any(not r["ok"] for r in done.values()):
            return "finish"
        run_id = state.get("run_id", "")
        common = {"run_id": run_id, "round": state.get("round") or 0, "task": state.get("task", "")}
        sends = [
            Send(
                "step",
                {**common, "index": i, "step": s["task"], "count": len(plan)}
                | {"deps": [{k: done[d][k] for k in ("index", "step", "output")} for d in s["needs"]]},
            )
            for i, s in enumerate(plan)
            if i not in done and all(d in done for d in s["needs"])
        ]
        return sends or "finish"

    def round_results(self, state: PlanState) -> list[dict[str, Any]]:
        rnd, run_id = state.get("round") or 0, state.get("run_id")
        mine = [r for r in state.get("results") or [] if r["round"] == rnd and r["run_id"] == run_id]
        return sorted(mine, key=lambda r: r["index"])

    def passed(self, state: PlanState) -> dict[str, Any]:
        """Output of every step (by its text) that passed in an earlier round of this run."""
        run_id = state.get("run_id")
        return {r["step"]: r["output"] for r in state.get("results") or [] if r["run_id"] == run_id and r["ok"]}


def _needs(step: PlanStep, index: int) -> list[int]:
    """0-based indexes of the earlier steps `step` needs; references to itself or later steps
    are dropped (they would deadlock)."""
    if step.depends_on is None:
        return list(range(index))
    return sorted({d - 1 for d in step.depends_on if 1 <= d <= index})


def _require_output(agent: Agent[Any], role: str, expected: type[BaseModel]) -> None:
    out = agent.output_type
    if not (isinstance(out, type) and issubclass(out, expected)):
        raise UserError(
            f"the {role} agent {agent.name!r} needs output_type={expected.__name__} "
            f"(from bastion.graph.agent import {expected.__name__}), got {out!r}"
        )


class _PlanRunner(GraphRunner):
    def __init__(self, pattern: PlanExecuteVerify, checkpointer: Checkpointer | None) -> None:
        super().__init__()
        self.pattern = pattern
        self.name = pattern.name
        self.checkpointer = checkpointer

    def build(self) -> Graph[PlanState]:
        p = self.pattern

        async def gather(state: PlanState) -> dict[str, Any]:
            return {}  # joins a wave of parallel steps, so the next wave is scheduled once

        def after_finish(state: PlanState) -> str:
            return END if state.get("done") else "plan"

        graph = Graph(PlanState)
        graph.add_node("plan", p.plan)
        graph.add_node("step", p.step, input_schema=dict)  # fed by Send(step job)
        graph.add_node("gather", gather)
        graph.add_node("finish", p.finish)
        graph.add_edge(START, "plan")
        graph.add_conditional_edges("plan", p.schedule)
        graph.add_edge("step", "gather")
        graph.add_conditional_edges("gather", p.schedule)
        graph.add_conditional_edges("finish", after_finish, {"plan": "plan", END: END})
        return graph

    def step_limit(self) -> int:
        # per round: plan, up to max_steps waves of (step, gather), finish
        return self.pattern.max_rounds * (2 * self.pattern.max_steps + 2) + 4

    def start(self, input: AgentInput) -> dict[str, Any]:
        messages = to_messages(input)
        return {
            "messages": messages,
            "run_id": new_sortable_id("run_"),
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
            plan = list(values.get("plan") or [])
            by_index = {r["index"]: r for r in self.pattern.round_results(cast(PlanState, values))}
            outcome = PlanOutcome(
                task=values.get("task", ""),
                plan=[s["task"] for s in plan],
                results=[by_index[i]["output"] if i in by_index else None for i in range(len(plan))],
                verdict=Verdict.model_validate(values["verdict"]),
                rounds=int(values.get("round") or 0),
                history=[r for r in values.get("rejected") or [] if r.get("run_id") == run_id],
                attempts=[by_index[i]["attempts"] if i in by_index else 0 for i in range(len(plan))],
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


__all__: Sequence[str] = ["Plan", "PlanExecuteVerify", "PlanOutcome", "PlanStep", "Verdict"]
