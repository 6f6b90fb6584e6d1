"""Final-state checks: the database after the run decides, not what the agent claimed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from bastion.evals import Case, Dataset, EvalResult, FinalState, Trajectory, run_eval
from bastion.graph.agent import Agent
from bastion.testing import FunctionModel
from bastion.types import ModelRequest, ToolCall


def _db(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("create table orders (id integer primary key, status text)")
        db.executemany("insert into orders values (?, ?)", [(1, "open"), (2, "open")])
    return path


def _agent(db_for: dict[str, Path], *, lie: bool) -> Agent[Any]:
    """Cancels the order named in the case; with `lie=True` it says so without calling the tool."""

    def cancel(order: int, case_id: str) -> str:
        """Cancel an order."""
        with sqlite3.connect(db_for[case_id]) as db:
            db.execute("update orders set status = 'cancelled' where id = ?", (order,))
        return "cancelled"

    def reply(request: ModelRequest) -> str | list[ToolCall]:
        last = request.messages[-1]
        if last.role == "tool" or lie:
            return "Done, the order is cancelled."
        order, case_id = last.text.split()
        return [ToolCall("cancel", {"order": int(order), "case_id": case_id})]

    return Agent(FunctionModel(reply), tools=[cancel], name="orders")


def _status(db_path: Path) -> dict[int, str]:
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("select id, status from orders").fetchall())


async def test_final_state_reads_the_database_after_the_run(tmp_path: Path) -> None:
    cases = [Case(input="1 c1", id="c1", metadata={"order": 1}), Case(input="2 c2", id="c2", metadata={"order": 2})]
    db_for = {c.id: _db(tmp_path / f"{c.id}.db") for c in cases}
    expected = {"c1": {1: "cancelled", 2: "open"}, "c2": {1: "open", 2: "cancelled"}}

    def env_for(case: Case) -> tuple[Path, dict[int, str]]:
        return db_for[case.id], expected[case.id]

    def check(env: tuple[Path, dict[int, str]]) -> tuple[bool, str]:
        actual = _status(env[0])
        return actual == env[1], f"orders are {actual}, expected {env[1]}"

    async def target(case: Case) -> str:
        return (await _agent(db_for, lie=False).run(str(case.input))).text

    ds = Dataset.from_cases("db", cases)
    report = await run_eval(ds, target, [FinalState(check, env_for=env_for)])
    assert report.passes == 2

    # Same claim in the output, but the database is untouched: the check fails and says why.
    fresh = {c.id: _db(tmp_path / f"lie-{c.id}.db") for c in cases}
    db_for.clear()
    db_for.update(fresh)

    async def liar(case: Case) -> str:
        return (await _agent(db_for, lie=True).run(str(case.input))).text

    report = await run_eval(ds, liar, [FinalState(check, env_for=env_for)])
    assert report.passes == 0
    r = report.cases[0].attempts[0].results[0]
    assert r.label == "fail" and "'open'" in r.explanation and "cancelled" in r.explanation


async def test_final_state_on_a_mutated_object_and_trajectory_state() -> None:
    inventory = {"apples": 3}

    def target(case: Case) -> Trajectory:
        inventory["apples"] -= int(case.input)
        return Trajectory(output="ok", state={"left": inventory["apples"]})

    ds = Dataset.from_cases("inv", [Case(input=1, id="take1")])
    on_object = FinalState(lambda inv: inv["apples"] == 2, env=inventory, name="obj")
    on_state = FinalState(lambda st: (st["left"] == 99, f"left={st['left']}"), name="state")
    report = await run_eval(ds, target, [on_object, on_state])
    results = {r.name: r for r in report.cases[0].attempts[0].results}
    assert results["obj"].passed and results["obj"].score == 1.0
    assert not results["state"].passed and results["state"].explanation == "left=2"
    assert not report.cases[0].attempts[0].passed


async def test_check_that_raises_or_returns_a_result_is_reported() -> None:
    def boom(env: Any) -> bool:
        raise KeyError("orders")

    async def custom(env: Any) -> EvalResult:
        return EvalResult("final_state", True, 0.75, "partial", "3 of 4 rows right")

    case = Case(input="x")
    raised = await FinalState(boom).evaluate(case, Trajectory())
    assert not raised.passed and "raised KeyError" in raised.explanation
    given = await FinalState(custom).evaluate(case, Trajectory())
    assert given.score == 0.75 and given.label == "partial"
