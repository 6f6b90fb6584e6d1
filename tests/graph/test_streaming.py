"""astream: node lifecycle, updates, tokens and tool calls from nodes, interrupts, errors."""

from __future__ import annotations

import asyncio
from typing import Annotated, TypedDict

import pytest

from bastion.checkpoint import Checkpointer
from bastion.graph import START, Graph, GraphEvent, NodeConfig, append, emit, interrupt
from bastion.types import ToolCall


class State(TypedDict, total=False):
    log: Annotated[list[str], append]
    text: str


async def test_event_sequence_with_tokens_and_tool_calls(backend: Checkpointer) -> None:
    async def talk(s: State) -> State:
        out = ""
        for tok in ("Hel", "lo"):
            emit("token", tok)
            out += tok
        emit("tool_call", ToolCall("search", {"q": "x"}, id="c1"))
        return {"text": out}

    def done(s: State, config: NodeConfig) -> State:
        config.emit("token", "!")
        return {"log": ["done"]}

    g = Graph(State)
    g.add_node("talk", talk).add_node("done", done).add_edge(START, "talk").add_edge("talk", "done")
    events = [e async for e in g.compile(checkpointer=backend).astream({}, thread_id="t")]
    kinds = [(e.kind, e.node) for e in events]
    assert kinds == [
        ("checkpoint", None),
        ("node_start", "talk"),
        ("token", "talk"),
        ("token", "talk"),
        ("tool_call", "talk"),
        ("node_end", "talk"),
        ("update", "talk"),
        ("checkpoint", None),
        ("node_start", "done"),
        ("token", "done"),
        ("node_end", "done"),
        ("update", "done"),
        ("checkpoint", None),
        ("done", None),
    ]
    assert [e.data for e in events if e.kind == "token"] == ["Hel", "lo", "!"]
    assert events[4].data.name == "search"
    assert events[6].data == {"text": "Hello"}
    assert events[-1].data == {"text": "Hello", "log": ["done"]}


async def test_kinds_filter_interrupt_event_and_emit_outside_streaming(backend: Checkpointer) -> None:
    g = Graph(State)
    g.add_node("ask", lambda s: {"text": interrupt("sure?")}).add_edge(START, "ask")
    app = g.compile(checkpointer=backend)
    events = [e async for e in app.astream({}, thread_id="t", kinds={"interrupt", "done"})]
    assert [e.kind for e in events] == ["interrupt", "done"]
    assert events[0].data[0].value == "sure?"

    g2 = Graph(State)
    g2.add_node("n", lambda s: emit("token", "nobody listens") or {"text": "ok"}).add_edge(START, "n")
    assert (await g2.compile().ainvoke({}))["text"] == "ok"


async def test_error_is_streamed_then_raised() -> None:
    def boom(s: State) -> State:
        raise RuntimeError("kaput")

    g = Graph(State)
    g.add_node("boom", boom).add_edge(START, "boom")
    seen: list[GraphEvent] = []
    with pytest.raises(RuntimeError, match="kaput"):
        async for e in g.compile().astream({}):
            seen.append(e)
    assert seen[-1].kind == "error" and isinstance(seen[-1].data, RuntimeError)


async def test_leaving_the_stream_early_cancels_the_run() -> None:
    cancelled = asyncio.Event()

    async def slow(s: State) -> State:
        emit("token", "first")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    g = Graph(State)
    g.add_node("slow", slow).add_edge(START, "slow")
    stream = g.compile().astream({})
    async for e in stream:
        if e.kind == "token":
            break
    await stream.aclose()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_emit_from_a_sync_node_in_a_worker_thread() -> None:
    def worker(s: State) -> State:
        emit("token", "from thread")
        return {"text": "ok"}

    g = Graph(State)
    g.add_node("w", worker, timeout=5).add_edge(START, "w")  # a timeout runs sync nodes in a thread
    tokens = [e.data async for e in g.compile().astream({}, kinds={"token"})]
    assert tokens == ["from thread"]


async def test_cancelling_a_stream_keeps_finished_siblings(backend: Checkpointer) -> None:
    from collections import Counter

    runs: Counter[str] = Counter()
    hang = {"on": True}

    def fast(s: State) -> State:
        runs["fast"] += 1
        return {"log": ["fast"]}

    async def slow(s: State) -> State:
        runs["slow"] += 1
        if hang["on"]:
            await asyncio.Event().wait()
        return {"log": ["slow"]}

    g = Graph(State)
    g.add_node("fast", fast).add_node("slow", slow)
    g.add_edge(START, "fast").add_edge(START, "slow")
    app = g.compile(checkpointer=backend)
    stream = app.astream({}, thread_id="t")
    async for e in stream:
        if e.kind == "node_end" and e.node == "fast":
            break  # the consumer walks away while "slow" is still running
    await stream.aclose()
    hang["on"] = False
    out = await app.ainvoke(None, thread_id="t")
    assert sorted(out["log"]) == ["fast", "slow"] and runs == Counter(fast=1, slow=2)


def test_sync_stream_yields_live_events_and_cancels_when_left(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    from bastion.checkpoint import SqliteCheckpointer

    cancelled = threading.Event()

    async def talk(s: State) -> State:
        emit("token", "a")
        emit("token", "b")
        return {"text": "ab"}

    async def hang(s: State) -> State:
        emit("token", "hanging")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    cp = SqliteCheckpointer(tmp_path / "s.db")
    try:
        g = Graph(State)
        g.add_node("talk", talk).add_node("hang", hang).add_edge(START, "talk").add_edge("talk", "hang")
        app = g.compile(checkpointer=cp)
        seen = []
        for ev in app.stream({}, thread_id="t", kinds={"token"}):
            seen.append(ev.data)
            if ev.data == "hanging":
                break  # the run is blocked in "hang": leaving must cancel it, not wait for it
        assert seen == ["a", "b", "hanging"]
        assert cancelled.wait(5)
        assert app.get_state("t").next == ("hang",), "resumable from its last checkpoint"

        g2 = Graph(State)
        g2.add_node("boom", lambda s: 1 / 0).add_edge(START, "boom")
        with pytest.raises(ZeroDivisionError):
            list(g2.compile().stream({}))
    finally:
        cp.close()
