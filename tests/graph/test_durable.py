"""Durability over every backend: resume after failures, pending writes, deltas, memo journal."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any, TypedDict

import pytest

from bastion.checkpoint import Checkpointer
from bastion.errors import SerializationError
from bastion.graph import START, Graph, append, memo
from bastion.types import Message, ModelResponse, Usage


class State(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    log: Annotated[list[str], append]
    count: int
    extra: Any


async def test_failed_branch_keeps_siblings_results_and_resume_runs_only_it(backend: Checkpointer) -> None:
    runs: Counter[str] = Counter()
    fail = {"c": True}

    def node(name: str) -> Any:
        def fn(s: State) -> State:
            runs[name] += 1
            if fail.get(name):
                raise RuntimeError(f"{name} broke")
            return {"log": [name]}

        return fn

    g = Graph(State)
    for n in ("a", "b", "c", "d"):
        g.add_node(n, node(n))
    g.add_edge(START, "a").add_edge("a", "b").add_edge("a", "c").add_edge(["b", "c"], "d")
    app = g.compile(checkpointer=backend)

    with pytest.raises(RuntimeError, match="c broke"):
        await app.ainvoke({}, thread_id="t")
    snap = await app.aget_state("t")
    assert snap.next == ("c",), "b finished and was saved as a pending write; only c is left"
    assert snap.values["log"] == ["a"]

    fail["c"] = False
    out = await app.ainvoke(None, thread_id="t")
    assert out["log"] == ["a", "b", "c", "d"]
    assert runs == Counter(a=1, b=1, c=2, d=1)
    assert (await app.aget_state("t")).next == ()


async def test_single_node_failure_resumes_at_that_node(backend: Checkpointer) -> None:
    runs: Counter[str] = Counter()
    broken = {"on": True}

    def a(s: State) -> State:
        runs["a"] += 1
        return {"count": 1}

    def b(s: State) -> State:
        runs["b"] += 1
        if broken["on"]:
            raise ValueError("flaky upstream")
        return {"count": s["count"] + 1}

    g = Graph(State)
    g.add_node("a", a).add_node("b", b).add_edge(START, "a").add_edge("a", "b")
    app = g.compile(checkpointer=backend)
    with pytest.raises(ValueError):
        await app.ainvoke({}, thread_id="t")
    broken["on"] = False
    assert (await app.ainvoke(None, thread_id="t"))["count"] == 2
    assert runs == Counter(a=1, b=2)


async def test_message_lists_are_stored_as_append_only_deltas(backend: Checkpointer) -> None:
    def reply(s: State) -> State:
        return {"messages": [Message.assistant(f"reply {len(s['messages'])}")]}

    g = Graph(State)
    g.add_node("chat", reply).add_edge(START, "chat")
    app = g.compile(checkpointer=backend, keyframe_every=1000)
    history = [Message.user(f"old {i}") for i in range(50)]
    await app.ainvoke({"messages": history}, thread_id="t")
    for turn in range(5):
        await app.ainvoke({"messages": [Message.user(f"turn {turn}")]}, thread_id="t")
    records = await backend.list("t")
    assert len(records) == 12
    for rec in records[:10]:  # every checkpoint after the first two adds exactly one message
        payload = json.loads(rec.payload)
        assert payload["values"] == {} or set(payload["values"]) <= {"count"}
        assert [len(items) for items in payload["logs"].values()] == [1], payload
    first = json.loads(records[-1].payload)
    assert len(first["values"]["messages"]) == 50, "the first checkpoint is a complete keyframe"
    out = (await app.aget_state("t")).values
    assert len(out["messages"]) == 50 + 1 + 10
    assert out["messages"][-1].text == "reply 60"


async def test_keyframes_bound_the_chain_and_keep_state_exact(backend: Checkpointer) -> None:
    g = Graph(State)
    g.add_node("n", lambda s: {"log": [str(len(s.get("log", [])))], "count": s.get("count", 0) + 1})
    g.add_edge(START, "n")
    app = g.compile(checkpointer=backend, keyframe_every=3)
    for _ in range(7):
        await app.ainvoke({"log": ["in"]}, thread_id="t")
    chain = await backend.get_chain("t")
    assert 1 <= len(chain) <= 30 and chain[-1].is_keyframe  # hard cap: 10 x keyframe_every
    assert sum(r.is_keyframe for r in await backend.list("t")) >= 2, "later keyframes were written"
    values = (await app.aget_state("t")).values
    assert values["count"] == 7
    assert values["log"] == [x for i in range(7) for x in ("in", str(2 * i + 1))]
    history = [s async for s in app.aget_state_history("t")]  # rebuilt in one pass across keyframes
    assert len(history) == 14
    assert [len(s.values["log"]) for s in history] == list(range(14, 0, -1))
    assert [s.values.get("count", 0) for s in history][::2] == [7, 6, 5, 4, 3, 2, 1]


def test_checkpoint_ids_sort_after_their_parent_even_with_a_skewed_clock() -> None:
    import time

    from bastion.graph._pregel import new_checkpoint_id

    ahead = f"{time.time_ns() + 10**12:016x}abcd"  # written by a machine whose clock runs 1000 s fast
    child = new_checkpoint_id(ahead)
    assert child > ahead and new_checkpoint_id() > child


async def test_memo_results_are_journaled_and_not_repeated(backend: Checkpointer) -> None:
    calls: Counter[str] = Counter()
    fail_after_memo = {"on": True}

    async def model_call() -> ModelResponse:
        calls["model"] += 1
        return ModelResponse(Message.assistant("42"), Usage(10, 2), model="test:m")

    async def agent(s: State) -> State:
        r1 = await memo("model:1", model_call)
        r2 = await memo("tool:1", lambda: calls.update(["tool"]) or {"rows": [1, 2]})
        custom = await memo("custom", lambda: calls.update(["custom"]) or {3, 1}, encode=sorted, decode=set)
        if fail_after_memo["on"]:
            raise ConnectionError("crash after the expensive calls")
        return {"messages": [r1.message], "extra": {"rows": r2["rows"], "custom": sorted(custom)}}

    g = Graph(State)
    g.add_node("agent", agent).add_edge(START, "agent")
    app = g.compile(checkpointer=backend)
    with pytest.raises(ConnectionError):
        await app.ainvoke({}, thread_id="t")
    fail_after_memo["on"] = False
    out = await app.ainvoke(None, thread_id="t")
    assert calls == Counter(model=1, tool=1, custom=1), "memoized calls ran once across the re-run"
    assert out["messages"][0].text == "42" and out["extra"] == {"rows": [1, 2], "custom": [1, 3]}

    # A new turn is a new task: its calls are fresh.
    await app.ainvoke({"count": 1}, thread_id="t")
    assert calls["model"] == 2


async def test_memo_without_checkpointer_just_calls() -> None:
    assert await memo("k", lambda: 5) == 5
    g = Graph(State)

    async def n(s: State) -> State:
        return {"count": await memo("k", lambda: 7)}

    g.add_node("n", n).add_edge(START, "n")
    assert (await g.compile().ainvoke({}))["count"] == 7


async def test_unpersistable_state_names_the_path_and_loses_nothing(backend: Checkpointer) -> None:
    state = {"bad": True}

    def n(s: State) -> State:
        return {"extra": {"items": [1, 2, 3, {"when": object()}]} if state["bad"] else {"ok": 1}}

    g = Graph(State)
    g.add_node("first", lambda s: {"count": 1}).add_node("n", n)
    g.add_edge(START, "first").add_edge("first", "n")
    app = g.compile(checkpointer=backend)
    with pytest.raises(SerializationError) as info:
        await app.ainvoke({}, thread_id="t")
    assert info.value.path == "state.extra.items[3].when"
    snap = await app.aget_state("t")
    assert snap.values["count"] == 1 and snap.next == ("n",), "the last good checkpoint is intact"
    state["bad"] = False
    assert (await app.ainvoke(None, thread_id="t"))["extra"] == {"ok": 1}


async def test_fan_out_durable_1000_way(backend: Checkpointer) -> None:
    from bastion.graph import Send

    g = Graph(State)
    g.add_node("fan", lambda s: [Send("work", i) for i in range(1000)])
    g.add_node("work", lambda i: {"log": [str(i)]})
    g.add_node("reduce", lambda s: {"count": len(s["log"])})
    g.add_edge(START, "fan").add_edge("work", "reduce")
    app = g.compile(checkpointer=backend)
    assert (await app.ainvoke({}, thread_id="t"))["count"] == 1000
    assert (await app.aget_state("t")).values["count"] == 1000


async def test_warm_state_cache_stays_coherent_across_writers(backend: Checkpointer) -> None:
    def bot(s: State) -> State:
        return {"messages": [Message.assistant(f"seen {len(s['messages'])}")]}

    def build() -> Any:
        g = Graph(State)
        g.add_node("bot", bot).add_edge(START, "bot")
        return g.compile(checkpointer=backend)

    one, two = build(), build()  # e.g. two worker processes on the same store
    out = await one.ainvoke({"messages": [Message.user("a")]}, thread_id="t")
    out["messages"].append(Message.user("a caller mutating the result"))  # must not leak into state
    await two.ainvoke({"messages": [Message.user("b")]}, thread_id="t")
    out = await one.ainvoke({"messages": [Message.user("c")]}, thread_id="t")  # one's cache is stale now
    assert [m.text for m in out["messages"]] == ["a", "seen 1", "b", "seen 3", "c", "seen 5"]


async def test_serialization_error_in_a_parallel_branch_keeps_the_siblings(backend: Checkpointer) -> None:
    runs: Counter[str] = Counter()
    bad = {"on": True}

    def good(s: State) -> State:
        runs["good"] += 1
        return {"log": ["good"]}

    def odd(s: State) -> State:
        runs["odd"] += 1
        return {"extra": {"when": object() if bad["on"] else "fixed"}}

    g = Graph(State)
    g.add_node("good", good).add_node("odd", odd)
    g.add_edge(START, "good").add_edge(START, "odd")
    app = g.compile(checkpointer=backend)
    with pytest.raises(SerializationError) as info:
        await app.ainvoke({}, thread_id="t")
    assert info.value.path == "state.extra.when"
    bad["on"] = False
    out = await app.ainvoke(None, thread_id="t")
    assert out["log"] == ["good"] and out["extra"] == {"when": "fixed"} and runs == Counter(good=1, odd=2)


async def test_retention_prunes_finished_threads_but_keeps_waiting_ones(backend: Checkpointer) -> None:
    import time

    from bastion.graph import interrupt

    g = Graph(State)
    g.add_node("n", lambda s: {"log": [interrupt("ok?")]} if s.get("count") else {"log": ["done"]})
    g.add_edge(START, "n")
    app = g.compile(checkpointer=backend)
    await app.ainvoke({"count": 0}, thread_id="finished")
    await app.ainvoke({"count": 1}, thread_id="waiting")
    deleted = await backend.prune(older_than=time.time() + 1)
    assert deleted == ["finished"]
    assert (await app.aget_state("finished")).checkpoint_id is None
    assert [i.value for i in (await app.aget_state("waiting")).interrupts] == ["ok?"]


async def test_a_failed_step_with_an_in_place_reducer_is_rebuilt_from_storage(backend: Checkpointer) -> None:
    def extend_in_place(current: list[int], update: list[int]) -> list[int]:
        current.extend(update)  # a common (if impolite) reducer style
        return current

    class Bag(TypedDict, total=False):
        items: Annotated[list[int], extend_in_place]

    flaky = {"on": True}

    def route(s: Bag) -> str:
        if flaky["on"]:
            raise ConnectionError("router lost its backend")
        return "__end__"

    g = Graph(Bag)
    g.add_node("first", lambda s: {"items": [1]}).add_node("more", lambda s: {"items": [2]})
    g.add_edge(START, "first").add_edge("first", "more").add_conditional_edges("more", route)
    app = g.compile(checkpointer=backend)
    with pytest.raises(ConnectionError):
        await app.ainvoke({"items": [0]}, thread_id="t")
    flaky["on"] = False
    assert (await app.ainvoke(None, thread_id="t"))["items"] == [0, 1, 2]
