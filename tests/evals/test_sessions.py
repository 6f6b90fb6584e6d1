"""Session-level evals: a real Agent (scripted model at the edge) converses with a scripted
or model-driven user simulator over several turns on one thread."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.checkpoint import MemoryCheckpointer
from bastion.errors import UserError
from bastion.evals import (
    Case,
    Dataset,
    ModelUser,
    OutcomeCheck,
    ScriptedUser,
    SessionView,
    Trajectory,
    run_eval,
    session_target,
)
from bastion.graph.agent import Agent
from bastion.testing import FunctionModel
from bastion.types import Message, ModelRequest, ToolCall


def _echo_agent(checkpointer: Any = None) -> tuple[Agent[Any], list[int]]:
    """An agent that answers with how many user messages it can see (its memory of the thread)."""
    seen: list[int] = []

    def reply(request: ModelRequest) -> str:
        users = [m for m in request.messages if m.role == "user"]
        seen.append(len(users))
        return f"turn {len(users)}: got {users[-1].text}"

    return Agent(FunctionModel(reply), checkpointer=checkpointer, name="echo"), seen


@pytest.mark.parametrize("checkpointer", [None, MemoryCheckpointer()], ids=["history", "thread"])
async def test_scripted_session_keeps_one_thread(checkpointer: Any) -> None:
    agent, seen = _echo_agent(checkpointer)
    ds = Dataset.from_cases("s", [Case(input="three turns", id="c1")])
    target = session_target(agent, ScriptedUser(["hi", "my order is 42", "thanks"]), max_turns=10)
    report = await run_eval(ds, target, [OutcomeCheck(required_outputs=["got thanks"])])
    assert report.cases[0].passes == 1
    assert seen == [1, 2, 3]  # every turn saw the earlier ones: one conversation, not three
    traj = await target(Case(input="x"))
    session = traj.state["session"]
    assert [t["user"] for t in session["turns"]] == ["hi", "my order is 42", "thanks"]
    assert session["ended"] == "done"
    assert [m.role for m in traj.messages if m.role == "user"] == ["user"] * 3


async def test_scripted_function_of_last_answer_and_max_turns_stop() -> None:
    agent, _ = _echo_agent()

    def user(session: SessionView) -> str | None:
        # never satisfied: keeps asking, so only max_turns ends the session
        return "again" if session.last_answer is None or "turn" in session.last_answer else None

    traj = await session_target(agent, ScriptedUser(user), max_turns=4)(Case(input="loop"))
    assert traj.state["session"]["ended"] == "max_turns"
    assert len(traj.state["session"]["turns"]) == 4
    assert traj.output == "turn 4: got again"


async def test_model_driven_user_reaches_goal_and_ends() -> None:
    def agent_reply(request: ModelRequest) -> str | list[ToolCall]:
        last = request.messages[-1]
        if last.role == "tool":
            return "Refund issued for order 42."
        if "42" in last.text:
            return [ToolCall("refund", {"order": 42})]
        return "Which order?"

    refunds: list[int] = []

    def refund(order: int) -> str:
        """Refund an order."""
        refunds.append(order)
        return "ok"

    agent = Agent(FunctionModel(agent_reply), tools=[refund], name="support")

    def user_reply(request: ModelRequest) -> str:
        system = request.messages[0].text
        assert "refund of order 42" in system  # the goal comes from the case input
        # roles are swapped: the agent's answers arrive as the simulator's "user" messages
        last = request.messages[-1]
        if last.role == "user" and "Refund issued" in last.text:
            return "###DONE###"
        if last.role == "user" and "Which order" in last.text:
            return "Order 42."
        return "I want a refund."

    sim_model = FunctionModel(user_reply)
    ds = Dataset.from_cases("s", [Case(input="Get a refund of order 42", id="refund")])
    report = await run_eval(
        ds,
        session_target(agent, ModelUser(sim_model, persona="terse customer"), max_turns=6),
        [OutcomeCheck(lambda t: t.state["session"]["ended"] == "done", required_outputs=["refund issued"])],
    )
    assert report.cases[0].passes == 1, report.cases[0].attempts[0].results
    assert refunds == [42]
    assert len(sim_model.requests) == 3  # two user turns, then DONE
    first = sim_model.requests[0].messages
    assert isinstance(first[0], Message) and first[0].role == "system"


async def test_model_user_that_never_finishes_stops_at_max_turns() -> None:
    agent, seen = _echo_agent()
    sim = ModelUser(FunctionModel(lambda r: "still not happy"), goal="never satisfied")
    traj: Trajectory = await session_target(agent, sim, max_turns=3)(Case(input="x"))
    assert traj.state["session"]["ended"] == "max_turns"
    assert seen == [1, 2, 3]


async def test_agent_failure_mid_session_fails_the_attempt() -> None:
    calls = 0

    def reply(request: ModelRequest) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("provider down")
        return "ok"

    agent = Agent(FunctionModel(reply), name="flaky", max_turns=1)
    ds = Dataset.from_cases("s", [Case(input="x", id="c")])
    report = await run_eval(ds, session_target(agent, ScriptedUser(["a", "b", "c"])), [OutcomeCheck()])
    attempt = report.cases[0].attempts[0]
    assert not attempt.passed
    assert attempt.error is not None and "turn 2" in attempt.error


async def test_sessions_from_jsonl_case_inputs(tmp_path: Any) -> None:
    path = tmp_path / "sessions.jsonl"
    path.write_text(
        '{"id": "two", "input": ["hello", "bye"], "expected": {"output_contains": ["got bye"]}}\n'
        '{"id": "one", "input": ["only"], "expected": {"output_contains": ["got only"]}}\n'
    )
    agent, _ = _echo_agent()
    report = await run_eval(Dataset.load(path), session_target(agent, ScriptedUser()), [OutcomeCheck()])
    assert [c.passes for c in report.cases] == [1, 1]
    # A plain-text input is not a script: the caller's mistake, said plainly.
    with pytest.raises(UserError, match="list of strings"):
        await session_target(agent, ScriptedUser())(Case(input="not a list"))


async def test_simulator_failure_ends_the_session_with_its_turns() -> None:
    agent, _ = _echo_agent()
    calls = 0

    def flaky(request: ModelRequest) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("simulator model unreachable")
        return "hello"

    traj = await session_target(agent, ModelUser(FunctionModel(flaky)))(Case(input="goal"))
    assert traj.state["session"]["ended"] == "error" and len(traj.state["session"]["turns"]) == 1
    assert traj.error is not None and "user simulator, turn 2" in traj.error
