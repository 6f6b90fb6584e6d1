"""Subgraphs as nodes (own checkpoint namespace) and time travel: history, update, fork, replay."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, TypedDict

from bastion.checkpoint import Checkpointer
from bastion.graph import START, Command, Graph, append, interrupt
from bastion.types import Message


class State(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    count: int
    note: str


class Inner(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    note: str
    scratch: int  # private to the subgraph


def _inner(ask: bool) -> Graph:
    def research(s: Inner) -> Inner:
        return {"messages": [Message.assistant("found it")], "scratch": 1}

    def review(s: Inner) -> Inner:
        verdict = interrupt("publish?") if ask else "yes"
        return {"note": f"reviewed:{verdict}", "messages": [Message.assistant("reviewed")]}

    g = Graph(Inner)
    g.add_node("research", research).add_node("review", review)
    g.add_edge(START, "research").add_edge("research", "review")
    return g


async def test_subgraph_shares_channels_without_duplicating_messages(backend: Checkpointer) -> None:
    outer = Graph(State)
    outer.add_node("sub", _inner(ask=False).compile())
    outer.add_node("after", lambda s: {"count": len(s["messages"])})
    outer.add_edge(START, "sub").add_edge("sub", "after")
    app = outer.compile(checkpointer=backend)
    out = await app.ainvoke({"messages": [Message.user("go")]}, thread_id="t")
    assert [m.text for m in out["messages"]] == ["go", "found it", "reviewed"]
    assert out["note"] == "reviewed:yes" and out["count"] == 3 and "scratch" not in out
    root = await backend.list("t", "")
    task_ns = next(r for r in root if r.step == 0).checkpoint_id
    sub = await backend.list("t", f"sub:{task_ns}:0")
    assert len(sub) == 3, "the subgraph checkpoints in its own namespace"


async def test_interrupt_inside_a_subgraph_resumes_through_the_parent(backend: Checkpointer) -> None:
    runs: Counter[str] = Counter()
    outer = Graph(State)

    def before(s: State) -> State:
        runs["before"] += 1
        return {"count": 1}

    outer.add_node("before", before).add_node("sub", _inner(ask=True).compile())
    outer.add_edge(START, "before").add_edge("before", "sub")
    app = outer.compile(checkpointer=backend)
    out = await app.ainvoke({"messages": [Message.user("go")]}, thread_id="t")
    [pending] = out["__interrupt__"]
    assert pending.value == "publish?" and pending.ns.startswith("sub:")
    assert (await app.aget_state("t")).interrupts == (pending,)
    out = await app.ainvoke(Command(resume="ship it"), thread_id="t")
    assert out["note"] == "reviewed:ship it"
    assert [m.text for m in out["messages"]] == ["go", "found it", "reviewed"], "research ran once"
    assert runs["before"] == 1


def _counter_graph(runs: Counter[str]) -> Graph:
    def step(name: str):  # type: ignore[no-untyped-def]
        def fn(s: State) -> State:
            runs[name] += 1
            return {"count": s.get("count", 0) + 1, "note": name}

        return fn

    g = Graph(State)
    g.add_node("a", step("a")).add_node("b", step("b")).add_node("c", step("c"))
    g.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c")
    return g


async def test_history_update_fork_and_replay(backend: Checkpointer) -> None:
    runs: Counter[str] = Counter()
    app = _counter_graph(runs).compile(checkpointer=backend)
    await app.ainvoke({"count": 0}, thread_id="t")
    history = [s async for s in app.aget_state_history("t")]
    assert [s.step for s in history] == [3, 2, 1, 0]
    assert [s.next for s in history] == [(), ("c",), ("b",), ("a",)]
    assert [s.values["count"] for s in history] == [3, 2, 1, 0]
    after_a = history[2]

    # Fork the thread where b was about to run: the fork re-executes b and c, the original is untouched.
    forked = await app.afork("t", after_a.checkpoint_id, new_thread_id="t2")
    assert forked.thread_id == "t2" and forked.next == ("b",) and forked.values["count"] == 1
    out = await app.ainvoke(None, thread_id="t2")
    assert out["count"] == 3 and runs == Counter(a=1, b=2, c=2)
    assert (await app.aget_state("t")).values["count"] == 3

    # Edit the past as if node a had returned something else; the thread branches there.
    cid = await app.aupdate_state("t", {"count": 100}, as_node="a", checkpoint_id=after_a.checkpoint_id)
    snap = await app.aget_state("t")
    assert snap.checkpoint_id == cid and snap.parent_id == after_a.checkpoint_id
    assert snap.next == ("b",) and snap.values["count"] == 100
    out = await app.ainvoke(None, thread_id="t")
    assert out["count"] == 102

    # Replay from an explicit old checkpoint continues from there.
    out = await app.ainvoke(None, thread_id="t", checkpoint_id=history[1].checkpoint_id)
    assert out["count"] == 3 and out["note"] == "c"
    assert len([s async for s in app.aget_state_history("t")]) == 4 + 3 + 1


def test_sync_wrappers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bastion.checkpoint import SqliteCheckpointer

    cp = SqliteCheckpointer(tmp_path / "s.db")
    try:
        app = _counter_graph(Counter()).compile(checkpointer=cp)
        assert app.invoke({"count": 0}, thread_id="s")["count"] == 3
        assert app.get_state("s").values["note"] == "c"
        assert [s.step for s in app.get_state_history("s")] == [3, 2, 1, 0]
        app.update_state("s", {"note": "edited"})
        assert app.get_state("s").values["note"] == "edited"
        assert app.fork("s", new_thread_id="s2").values["note"] == "edited"
    finally:
        cp.close()


async def test_a_retried_subgraph_resumes_from_its_own_checkpoint(backend: Checkpointer) -> None:
    from bastion.graph import RetryPolicy

    runs: Counter[str] = Counter()

    def first(s: Inner) -> Inner:
        runs["first"] += 1
        return {"scratch": 1}

    def second(s: Inner) -> Inner:
        runs["second"] += 1
        if runs["second"] == 1:
            raise ConnectionError("blip")
        return {"note": "ok"}

    inner = Graph(Inner)
    inner.add_node("first", first).add_node("second", second)
    inner.add_edge(START, "first").add_edge("first", "second")
    outer = Graph(State)
    outer.add_node("sub", inner.compile(), retry=RetryPolicy(base_delay=0, jitter="none"))
    outer.add_edge(START, "sub")
    out = await outer.compile(checkpointer=backend).ainvoke({}, thread_id="t")
    assert out["note"] == "ok" and runs == Counter(first=1, second=2)
