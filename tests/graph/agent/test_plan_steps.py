"""PlanExecuteVerify step by step: each step is verified on its own and only a rejected step
is run again; steps see the results of the earlier steps they depend on (independent steps
run in parallel); a re-plan keeps the steps that passed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion.graph.agent import Agent, Plan, PlanExecuteVerify, PlanStep, Verdict
from bastion.testing import DirectToolExecutor, FunctionModel, ScriptedModel
from bastion.types import ModelRequest


def step_of(request: ModelRequest) -> str:
    """The step a prompt is about ("Step 2 of 4: <step>")."""
    line = next(line for line in request.messages[-1].text.splitlines() if line.startswith("Step "))
    return line.split(": ", 1)[1]


def pattern(
    plans: list[Plan],
    execute: Callable[[ModelRequest], Any],
    judge: Callable[[ModelRequest], Verdict],
    **options: Any,
) -> tuple[PlanExecuteVerify, ScriptedModel, FunctionModel, FunctionModel]:
    planner = ScriptedModel([p.model_dump_json() for p in plans], name="test:planner")
    executor = FunctionModel(execute, name="test:executor")
    verifier = FunctionModel(lambda r: judge(r).model_dump_json(), name="test:verifier")
    ex = DirectToolExecutor()
    built = PlanExecuteVerify(
        planner=Agent(planner, name="planner", output_type=Plan, tool_executor=ex),
        executor=Agent(executor, name="executor", tool_executor=ex),
        verifier=Agent(verifier, name="verifier", output_type=Verdict, tool_executor=ex),
        **options,
    )
    return built, planner, executor, verifier


async def test_a_rejected_step_is_retried_alone_and_later_steps_see_earlier_results() -> None:
    attempts: dict[str, int] = {}

    def execute(request: ModelRequest) -> str:
        step = step_of(request)
        attempts[step] = attempts.get(step, 0) + 1
        return f"{step} v{attempts[step]}"

    rejected: list[str] = []

    def judge(request: ModelRequest) -> Verdict:
        if "Result: convert v1" in request.messages[-1].text and not rejected:
            rejected.append("convert")
            return Verdict(ok=False, feedback="use euros")
        return Verdict(ok=True)

    built, planner, executor, verifier = pattern(
        [Plan.model_validate({"steps": ["fetch", "parse", "convert", "report"]})], execute, judge
    )
    result = await asyncio.wait_for(built.run("quarterly report"), 10)
    outcome = result.output
    assert outcome is not None and outcome.ok and outcome.rounds == 1
    # 4 steps, one rejected once: 5 executor runs (re-planning and re-running all would take 8).
    assert len(executor.requests) == 5 and len(verifier.requests) == 5 and len(planner.requests) == 1
    assert outcome.attempts == [1, 1, 2, 1]
    assert outcome.results == ["fetch v1", "parse v1", "convert v2", "report v1"]
    # The retry is told why; the passed steps are not run again.
    retry = executor.requests[3].messages[-1].text
    assert step_of(executor.requests[3]) == "convert" and "use euros" in retry
    assert attempts == {"fetch": 1, "parse": 1, "convert": 2, "report": 1}
    # By default a step gets all earlier steps' results (the accepted ones).
    last = executor.requests[4].messages[-1].text
    assert "fetch v1" in last and "parse v1" in last and "convert v2" in last and "convert v1" not in last
    assert "fetch v1" not in executor.requests[0].messages[-1].text
    assert result.usage.requests == 1 + 5 + 5


async def test_steps_name_their_dependencies_and_independent_ones_run_in_parallel(rendezvous: Any) -> None:
    meeting = rendezvous(2)

    async def execute(request: ModelRequest) -> str:
        step = step_of(request)
        if step in ("flights", "hotels"):
            await meeting.meet()  # only completes if both run at the same time
        return f"{step} found"

    plan = Plan(
        steps=[
            PlanStep(task="flights", depends_on=[]),
            PlanStep(task="hotels", depends_on=[]),
            PlanStep(task="budget", depends_on=[1, 2]),
            PlanStep(task="visa", depends_on=[1, 4, 7]),  # only earlier steps count
        ]
    )
    built, _, executor, _ = pattern([plan], execute, lambda r: Verdict(ok=True))
    outcome = (await asyncio.wait_for(built.run("trip to Rome"), 10)).output
    assert outcome is not None and outcome.ok
    assert outcome.results == ["flights found", "hotels found", "budget found", "visa found"]
    prompts = {step_of(r): r.messages[-1].text for r in executor.requests}
    assert "flights found" in prompts["budget"] and "hotels found" in prompts["budget"]
    assert "flights found" in prompts["visa"] and "hotels found" not in prompts["visa"]
    assert "budget found" not in prompts["visa"]
    # budget ran after both of its dependencies
    order = [step_of(r) for r in executor.requests]
    assert order.index("budget") > max(order.index("flights"), order.index("hotels"))


async def test_a_step_that_keeps_failing_goes_back_to_the_planner_which_keeps_what_passed() -> None:
    def judge(request: ModelRequest) -> Verdict:
        text = request.messages[-1].text
        return Verdict(ok=False, feedback="no hotel in budget") if "Result: hotels" in text else Verdict(ok=True)

    plans = [
        Plan.model_validate({"steps": ["flights", "hotels"]}),
        Plan.model_validate({"steps": ["flights", "hostels"]}),
    ]
    built, planner, executor, _ = pattern(plans, lambda r: f"{step_of(r)} found", judge, max_step_retries=1)
    outcome = (await asyncio.wait_for(built.run("trip to Rome"), 10)).output
    assert outcome is not None and outcome.ok and outcome.rounds == 2
    # flights once, hotels twice (one retry), then only the new step: flights is kept.
    assert [step_of(r) for r in executor.requests] == ["flights", "hotels", "hotels", "hostels"]
    assert outcome.attempts == [0, 1] and outcome.results == ["flights found", "hostels found"]
    feedback = outcome.history[0]["feedback"]
    assert "step 2 (hotels) failed verification after 2 attempt(s): no hotel in budget" in feedback
    replan = planner.requests[1].messages[-1].text
    assert "no hotel in budget" in replan and "- flights: flights found" in replan


async def test_the_last_failure_is_returned_when_rounds_run_out() -> None:
    built, _, executor, _ = pattern(
        [Plan.model_validate({"steps": ["a", "b"]})],
        lambda r: "wrong",
        lambda r: Verdict(ok=False, feedback="still wrong"),
        max_rounds=1,
        max_step_retries=2,
    )
    outcome = (await asyncio.wait_for(built.run("do a then b"), 10)).output
    assert outcome is not None and not outcome.ok
    assert "still wrong" in outcome.verdict.feedback
    # a is tried 3 times; b depends on a and never runs
    assert len(executor.requests) == 3 and outcome.results == ["wrong", None] and outcome.attempts == [3, 0]


async def test_a_run_that_fails_mid_plan_resumes_without_rerunning_passed_steps(tmp_path: Path) -> None:
    from bastion.checkpoint import SqliteCheckpointer

    calls: list[str] = []

    def execute(request: ModelRequest) -> str:
        step = step_of(request)
        calls.append(step)
        if step == "c" and calls.count("c") == 1:
            raise ConnectionError("provider down")  # the edge fails once
        return f"{step} done"

    built, _, _, verifier = pattern(
        [Plan.model_validate({"steps": ["a", "b", "c"]})],
        execute,
        lambda r: Verdict(ok=True),
        checkpointer=SqliteCheckpointer(tmp_path / "plan.db"),
    )
    with pytest.raises(ConnectionError, match="provider down"):
        await asyncio.wait_for(built.run("abc", thread_id="t1"), 10)
    result = await asyncio.wait_for(built.resume(thread_id="t1"), 10)
    outcome = result.output
    assert outcome is not None and outcome.ok and outcome.results == ["a done", "b done", "c done"]
    # a and b passed before the failure and are not run (or verified) again; c is continued.
    assert calls == ["a", "b", "c", "c"] and len(verifier.requests) == 3
