"""Human-in-the-loop: dynamic interrupt(), static interrupt_before/after, resume by id, restarts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

from bastion.checkpoint import Checkpointer
from bastion.errors import UserError
from bastion.graph import START, Command, Graph, append, interrupt, memo


class State(TypedDict, total=False):
    log: Annotated[list[str], append]
    amount: int
    status: str


def _approval_graph(calls: Counter[str]) -> Graph:
    async def propose(s: State) -> State:
        return {"amount": s.get("amount", 100)}

    async def approve(s: State) -> State:
        await memo("quote", lambda: calls.update(["quote"]))  # work before the pause is not repeated
        calls["approve"] += 1
        decision = interrupt({"question": "pay?", "amount": s["amount"]})
        if decision == "approve":
            return {"status": "paid", "log": [f"paid {s['amount']}"]}
        if isinstance(decision, dict) and "edit" in decision:
            return {"status": "paid", "amount": decision["edit"], "log": [f"paid {decision['edit']}"]}
        return {"status": "rejected", "log": ["rejected"]}

    g = Graph(State)
    g.add_node("propose", propose).add_node("approve", approve)
    g.add_edge(START, "propose").add_edge("propose", "approve")
    return g


@pytest.mark.parametrize(
    ("answer", "status", "log"),
    [("approve", "paid", ["paid 100"]), ({"edit": 70}, "paid", ["paid 70"]), ("no", "rejected", ["rejected"])],
)
async def test_interrupt_then_approve_edit_or_reject(
    backend: Checkpointer, answer: Any, status: str, log: list[str]
) -> None:
    calls: Counter[str] = Counter()
    app = _approval_graph(calls).compile(checkpointer=backend)
    out = await app.ainvoke({}, thread_id="t")
    [pending] = out["__interrupt__"]
    assert pending.value == {"question": "pay?", "amount": 100} and pending.node == "approve"
    snap = await app.aget_state("t")
    assert snap.next == ("approve",) and [i.id for i in snap.interrupts] == [pending.id]

    out = await app.ainvoke(Command(resume=answer), thread_id="t")
    assert out["status"] == status and out["log"] == log and "__interrupt__" not in out
    assert calls == Counter(quote=1, approve=2)
    assert (await app.aget_state("t")).interrupts == ()


async def test_parallel_interrupts_are_addressed_by_id(backend: Checkpointer) -> None:
    runs: Counter[str] = Counter()

    def asker(name: str) -> Any:
        def fn(s: State) -> State:
            runs[name] += 1
            return {"log": [f"{name}={interrupt(f'ok {name}?')}"]}

        return fn

    g = Graph(State)
    g.add_node("a", asker("a")).add_node("b", asker("b")).add_node("quiet", lambda s: {"log": ["quiet"]})
    g.add_node("end", lambda s: {"status": "done"})
    g.add_edge(START, "a").add_edge(START, "b").add_edge(START, "quiet").add_edge(["a", "b", "quiet"], "end")
    app = g.compile(checkpointer=backend)
    await app.ainvoke({}, thread_id="t")
    snap = await app.aget_state("t")
    by_node = {i.node: i for i in snap.interrupts}
    assert set(by_node) == {"a", "b"} and by_node["a"].id != by_node["b"].id
    assert set(snap.next) == {"a", "b"}, "quiet finished; its write is pending"

    with pytest.raises(UserError, match="2 interrupts are pending"):
        await app.ainvoke(Command(resume="yes"), thread_id="t")

    out = await app.ainvoke(Command(resume={by_node["a"].id: "yes"}), thread_id="t")
    assert [i.node for i in out["__interrupt__"]] == ["b"]
    out = await app.ainvoke(Command(resume={by_node["b"].id: "sure"}), thread_id="t")
    assert out["status"] == "done" and sorted(out["log"]) == ["a=yes", "b=sure", "quiet"]
    assert runs == Counter(a=2, b=3)


async def test_several_interrupts_in_one_node_are_answered_in_order(backend: Checkpointer) -> None:
    def form(s: State) -> State:
        name = interrupt("name?")
        age = interrupt("age?")
        return {"log": [f"{name}:{age}"]}

    g = Graph(State)
    g.add_node("form", form).add_edge(START, "form")
    app = g.compile(checkpointer=backend)
    assert (await app.ainvoke({}, thread_id="t"))["__interrupt__"][0].value == "name?"
    assert (await app.ainvoke(Command(resume="ann"), thread_id="t"))["__interrupt__"][0].value == "age?"
    assert (await app.ainvoke(Command(resume=33), thread_id="t"))["log"] == ["ann:33"]


async def test_static_interrupt_before_and_after_with_an_edit(backend: Checkpointer) -> None:
    g = Graph(State)
    g.add_node("plan", lambda s: {"amount": 10, "log": ["plan"]})
    g.add_node("pay", lambda s: {"log": [f"pay {s['amount']}"]})
    g.add_node("report", lambda s: {"log": ["report"]})
    g.add_edge(START, "plan").add_edge("plan", "pay").add_edge("pay", "report")
    app = g.compile(checkpointer=backend, interrupt_before=["pay"], interrupt_after=["pay"])

    out = await app.ainvoke({}, thread_id="t")
    assert out["log"] == ["plan"] and out["__interrupt__"][0].value == {"when": "before", "nodes": ["pay"]}
    assert (await app.aget_state("t")).next == ("pay",)
    await app.aupdate_state("t", {"amount": 7})  # a human edits the plan while paused
    out = await app.ainvoke(None, thread_id="t")
    assert out["log"] == ["plan", "pay 7"] and out["__interrupt__"][0].value["when"] == "after"
    out = await app.ainvoke(Command(resume="continue"), thread_id="t")
    assert out["log"] == ["plan", "pay 7", "report"] and "__interrupt__" not in out


async def test_interrupts_survive_a_restart_on_the_same_sqlite_file(tmp_path: Path) -> None:
    from bastion.checkpoint import SqliteCheckpointer

    path = tmp_path / "runs.db"
    calls: Counter[str] = Counter()
    first = SqliteCheckpointer(path)
    try:
        out = await _approval_graph(calls).compile(checkpointer=first).ainvoke({"amount": 5}, thread_id="t")
        pending_id = out["__interrupt__"][0].id
    finally:
        first.close()

    second = SqliteCheckpointer(path)  # a new process would do exactly this
    try:
        app = _approval_graph(calls).compile(checkpointer=second)
        assert [i.id for i in (await app.aget_state("t")).interrupts] == [pending_id]
        out = await app.ainvoke(Command(resume={pending_id: "approve"}), thread_id="t")
        assert out["log"] == ["paid 5"] and calls["quote"] == 1
    finally:
        second.close()


async def test_interrupt_needs_a_checkpointer_and_resume_needs_a_pause(backend: Checkpointer) -> None:
    g = Graph(State)
    g.add_node("ask", lambda s: {"status": interrupt("?")}).add_edge(START, "ask")
    with pytest.raises(UserError, match="interrupt\\(\\) needs durable state"):
        await g.compile().ainvoke({})
    with pytest.raises(UserError, match="only be called while a graph node runs"):
        interrupt("outside")
    app = g.compile(checkpointer=backend)
    with pytest.raises(UserError, match="no checkpoint"):
        await app.ainvoke(Command(resume=1), thread_id="t")
    await app.ainvoke({}, thread_id="t")
    await app.ainvoke(Command(resume="x"), thread_id="t")
    with pytest.raises(UserError, match="no pending interrupt"):
        await app.ainvoke(Command(resume=1), thread_id="t")


async def test_a_pause_after_one_node_still_honours_a_pause_before_the_next(backend: Checkpointer) -> None:
    g = Graph(State)
    g.add_node("plan", lambda s: {"log": ["plan"]}).add_node("pay", lambda s: {"log": ["pay"]})
    g.add_edge(START, "plan").add_edge("plan", "pay")
    app = g.compile(checkpointer=backend, interrupt_after=["plan"], interrupt_before=["pay"])
    out = await app.ainvoke({}, thread_id="t")
    assert out["__interrupt__"][0].value == {"when": "after", "nodes": ["plan"]}
    out = await app.ainvoke(None, thread_id="t")
    assert out["log"] == ["plan"] and out["__interrupt__"][0].value == {"when": "before", "nodes": ["pay"]}
    out = await app.ainvoke(None, thread_id="t")
    assert out["log"] == ["plan", "pay"] and "__interrupt__" not in out
