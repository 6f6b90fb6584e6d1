"""The trajectory judge grades the tool calls and their results, with LLMJudge's parsing."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.errors import UserError
from bastion.evals import (
    Case,
    Dataset,
    Expected,
    ScriptedUser,
    Trajectory,
    TrajectoryJudge,
    run_eval,
    session_target,
)
from bastion.graph.agent import Agent
from bastion.testing import FunctionModel, ScriptedModel
from bastion.types import ModelRequest, ToolCall, ToolResult


def _judge_by_steps(request: ModelRequest) -> str:
    """A judge that fails any trajectory deleting before it looked the record up."""
    prompt = request.messages[-1].text
    steps = prompt.split("## Trajectory (tool calls in order)")[1]
    lookup, delete = steps.find("lookup("), steps.find("delete(")
    if delete != -1 and (lookup == -1 or delete < lookup):
        return '```json\n{"reasoning": "deleted before checking", "score": 2, "pass": false}\n```'
    return 'Looks right. {"score": "9/10", "reasoning": "checked then acted"}'


async def test_judge_sees_the_ordered_calls_of_a_real_agent() -> None:
    def run_agent(order: list[str]) -> Agent[Any]:
        script: list[Any] = [ToolCall(name, {"id": 7}) for name in order] + ["done"]

        def lookup(id: int) -> str:
            """Look a record up."""
            return f"record {id}: stale"

        def delete(id: int) -> str:
            """Delete a record."""
            return f"deleted {id}"

        return Agent(ScriptedModel(script), tools=[lookup, delete], name="cleaner")

    judge_model = FunctionModel(_judge_by_steps)
    judge = TrajectoryJudge(judge_model, "Look a record up before deleting it.", scale=10)

    async def good(case: Case) -> Trajectory:
        r = await run_agent(["lookup", "delete"]).run("clean 7")
        return Trajectory.from_messages(r.messages)

    async def bad(case: Case) -> Trajectory:
        r = await run_agent(["delete", "lookup"]).run("clean 7")
        return Trajectory.from_messages(r.messages)

    ds = Dataset.from_cases(
        "t", [Case(input="clean 7", id="c", expected=Expected(tool_calls=[ToolCall("lookup", {"id": 7})]))]
    )
    ok = await run_eval(ds, good, [judge])
    r = ok.cases[0].attempts[0].results[0]
    assert r.name == "trajectory_judge" and r.passed and r.score == pytest.approx(0.9)
    prompt = judge_model.requests[-1].messages[-1].text
    assert "1. lookup" in prompt and "2. delete" in prompt and "returned:" in prompt and "record 7: stale" in prompt
    assert "## Reference trajectory" in prompt
    assert "trajectory" in judge_model.requests[-1].messages[0].text  # its own system prompt

    failed = await run_eval(ds, bad, [judge])
    r = failed.cases[0].attempts[0].results[0]
    assert not r.passed and r.score == pytest.approx(0.2) and r.explanation == "deleted before checking"


async def test_scale_and_unparseable_answers_follow_llm_judge_rules() -> None:
    traj = Trajectory(
        tool_calls=[ToolCall("search", {"q": "x"}, id="1")],
        tool_results=[ToolResult("1", "search", "boom", is_error=True)],
    )
    out_of_scale = await TrajectoryJudge(FunctionModel(lambda r: '{"score": 8}'), "r").evaluate(Case(input="q"), traj)
    assert not out_of_scale.passed and out_of_scale.label == "out_of_scale"
    garbage = await TrajectoryJudge(FunctionModel(lambda r: "no idea"), "r").evaluate(Case(input="q"), traj)
    assert garbage.label == "unparseable"
    seen: list[str] = []

    def capture(r: ModelRequest) -> str:
        seen.append(r.messages[-1].text)
        return "PASS"

    assert (await TrajectoryJudge(FunctionModel(capture), "r").evaluate(Case(input="q"), traj)).passed
    assert "1. search" in seen[0] and "error: boom" in seen[0]
    with pytest.raises(UserError, match="scale"):
        TrajectoryJudge(FunctionModel(capture), "r", scale=0)


async def test_judge_sees_a_whole_session() -> None:
    agent = Agent(FunctionModel(lambda r: f"answer to {r.messages[-1].text}"), name="a")
    prompts: list[str] = []

    def judge(r: ModelRequest) -> str:
        prompts.append(r.messages[-1].text)
        return '{"pass": true, "score": 1}'

    ds = Dataset.from_cases("s", [Case(input="two questions", id="c")])
    report = await run_eval(
        ds, session_target(agent, ScriptedUser(["q1", "q2"])), [TrajectoryJudge(FunctionModel(judge), "r")]
    )
    assert report.passes == 1
    assert "USER: q1\nAGENT: answer to q1" in prompts[0] and "USER: q2" in prompts[0]
    assert "(the agent called no tools)" in prompts[0]
