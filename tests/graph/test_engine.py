"""The superstep engine without persistence: routing, reducers, concurrency, limits, policies."""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import threading
from typing import Annotated, Any, TypedDict

import pytest
from pydantic import BaseModel

from bastion.errors import (
    GraphRecursionError,
    InvalidGraphError,
    InvalidUpdateError,
    NodeTimeoutError,
    UserError,
)
from bastion.graph import END, START, Command, Graph, NodeConfig, RetryPolicy, Send, append, get_config
from bastion.types import Message, RunContext


class State(TypedDict, total=False):
    messages: Annotated[list[Message], append]
    log: Annotated[list[str], operator.add]
    count: int


@dataclasses.dataclass
class DCState:
    log: Annotated[list[str], append] = dataclasses.field(default_factory=list)
    count: int = 0


class PDState(BaseModel):
    log: Annotated[list[str], append] = []
    count: int = 0


@pytest.mark.parametrize("schema", [State, DCState, PDState], ids=["typeddict", "dataclass", "pydantic"])
async def test_chain_of_sync_and_async_nodes_with_reducers(schema: type[Any]) -> None:
    def read(s: Any, key: str) -> Any:
        return s[key] if isinstance(s, dict) else getattr(s, key)

    def a(s: Any) -> dict[str, Any]:
        return {"log": ["a"], "count": read(s, "count") + 1}

    async def b(s: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"log": ["b"], "count": read(s, "count") * 10}

    g = Graph(schema)
    g.add_node("a", a).add_node("b", b)
    g.add_edge(START, "a").add_edge("a", "b").add_edge("b", END)
    out = await g.compile().ainvoke({"log": ["in"], "count": 1})
    assert read(out, "log") == ["in", "a", "b"]
    assert read(out, "count") == 20
    assert isinstance(out, dict if schema is State else schema)


async def test_parallel_branches_run_concurrently_and_merge_at_the_barrier() -> None:
    both = asyncio.Barrier(2)
    seen: dict[str, int] = {}

    def branch(name: str) -> Any:
        async def node(s: State) -> State:
            seen[name] = s["count"]  # both read the state as of the step start
            await asyncio.wait_for(both.wait(), 5)  # deadlocks unless b and c run at the same time
            return {"log": [name], "count": s["count"] + 1}

        return node

    g = Graph(State)
    g.add_node("a", lambda s: {"count": 1})
    g.add_node("b", branch("b")).add_node("c", branch("c"))
    g.add_node("d", lambda s: {"log": [f"d saw {s['log']}"]})
    g.add_edge(START, "a").add_edge("a", "b").add_edge("a", "c").add_edge("b", "d").add_edge("c", "d")
    events = [e async for e in g.compile().astream({}, kinds={"node_start"})]
    out = await g.compile().ainvoke({})
    assert seen == {"b": 1, "c": 1}
    assert out["log"] == ["b", "c", "d saw ['b', 'c']"], "updates applied in task order; d ran once"
    assert [e.node for e in events] == ["a", "b", "c", "d"]


async def test_send_fan_out_1000_way_map_reduce() -> None:
    g = Graph(State)
    g.add_node("fan", lambda s: [Send("work", i) for i in range(1000)])
    g.add_node("work", lambda i: {"log": [str(i * 2)]})
    g.add_node("reduce", lambda s: {"count": sum(int(x) for x in s["log"])})
    g.add_edge(START, "fan").add_edge("work", "reduce")
    out = await g.compile().ainvoke({})
    assert len(out["log"]) == 1000 and out["count"] == 2 * sum(range(1000))


async def test_conditional_edges_with_path_map_lists_and_end() -> None:
    def route(s: State) -> Any:
        return ["x", "y"] if s["count"] == 0 else "done"

    g = Graph(State)
    g.add_node("start", lambda s: {"count": s.get("count", 0)})
    g.add_node("left", lambda s: {"log": ["left"]}).add_node("right", lambda s: {"log": ["right"]})
    g.add_edge(START, "start")
    g.add_conditional_edges("start", route, {"x": "left", "y": "right", "done": END})
    app = g.compile()
    assert (await app.ainvoke({"count": 0}))["log"] == ["left", "right"]
    assert "log" not in await app.ainvoke({"count": 5})


async def test_router_result_outside_path_map_is_a_clear_error() -> None:
    g = Graph(State)
    g.add_node("a", lambda s: {})
    g.add_edge(START, "a").add_conditional_edges("a", lambda s: "nowhere", {"x": END})
    with pytest.raises(InvalidUpdateError, match="'nowhere', which is not in its path_map"):
        await g.compile().ainvoke({})


async def test_join_waits_for_every_source() -> None:
    g = Graph(State)
    for n in ("a", "b", "b2", "c"):
        g.add_node(n, lambda s, n=n: {"log": [n]})
    g.add_node("join", lambda s: {"log": [f"join after {sorted(s['log'])}"]})
    g.add_edge(START, "a").add_edge("a", "b").add_edge("b", "b2").add_edge("a", "c")
    g.add_edge(["b2", "c"], "join")  # c finishes a step before b2; join must wait for both
    out = await g.compile().ainvoke({})
    assert out["log"] == ["a", "b", "c", "b2", "join after ['a', 'b', 'b2', 'c']"]


async def test_command_updates_and_routes() -> None:
    g = Graph(State)
    g.add_node("a", lambda s: Command(update={"log": ["a"]}, goto=["b", Send("c", "payload")]))
    g.add_node("b", lambda s: {"log": ["b"]})
    g.add_node("c", lambda arg: {"log": [f"c:{arg}"]})
    g.add_edge(START, "a")
    assert (await g.compile().ainvoke({}))["log"] == ["a", "b", "c:payload"]


async def test_step_limit_names_the_limit_and_how_to_raise_it() -> None:
    g = Graph(State)
    g.add_node("loop", lambda s: {"count": s.get("count", 0) + 1})
    g.add_edge(START, "loop").add_edge("loop", "loop")
    with pytest.raises(GraphRecursionError, match=r"step limit of 7 .*step_limit="):
        await g.compile(step_limit=7).ainvoke({})
    g2 = Graph(State)
    g2.add_node("loop", lambda s: {"count": s.get("count", 0) + 1})
    g2.add_edge(START, "loop").add_conditional_edges("loop", lambda s: END if s["count"] >= 30 else "loop")
    assert (await g2.compile().ainvoke({}, step_limit=40))["count"] == 30


async def test_retry_policy_retries_matching_errors_only() -> None:
    calls = {"flaky": 0, "fatal": 0}

    def flaky(s: State) -> State:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("transient")
        return {"count": calls["flaky"]}

    def fatal(s: State) -> State:
        calls["fatal"] += 1
        raise KeyError("bug")

    fast = RetryPolicy(max_attempts=3, base_delay=0, jitter="none", retry_on=(ConnectionError,))
    g = Graph(State)
    g.add_node("flaky", flaky, retry=fast)
    g.add_edge(START, "flaky")
    assert (await g.compile().ainvoke({}))["count"] == 3

    g = Graph(State)
    g.add_node("fatal", fatal, retry=fast)
    g.add_edge(START, "fatal")
    with pytest.raises(KeyError):
        await g.compile().ainvoke({})
    assert calls["fatal"] == 1, "KeyError is not in retry_on"

    calls["flaky"] = -10
    g = Graph(State)
    g.add_node("flaky", flaky, retry=fast)
    g.add_edge(START, "flaky")
    with pytest.raises(ConnectionError):
        await g.compile().ainvoke({})
    assert calls["flaky"] == -7, "gave up after max_attempts"


def test_retry_backoff_grows_with_bounded_jitter() -> None:
    p = RetryPolicy(base_delay=1.0, max_delay=5.0, jitter="none")
    assert [p.backoff(n, lambda: 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    j = RetryPolicy(base_delay=1.0)  # full jitter: uniform in [0, cap]
    assert [j.backoff(1, lambda r=r: r) for r in (0.0, 0.25, 1.0)] == [0.0, 0.25, 1.0]


def test_one_retry_policy_serves_every_layer() -> None:
    import bastion.gateway
    import bastion.graph
    import bastion.tools

    assert bastion.graph.RetryPolicy is bastion.tools.RetryPolicy is bastion.gateway.RetryPolicy
    # a node retries any failure by default, the gateway only transient ones
    from bastion.graph._types import node_retryable

    p = RetryPolicy()
    assert p.should_retry(KeyError("x"), node_retryable) and not p.should_retry(KeyError("x"))


async def test_timeouts_for_async_and_sync_nodes() -> None:
    never = asyncio.Event()

    async def hangs(s: State) -> State:
        await never.wait()
        return {}

    g = Graph(State)
    g.add_node("hangs", hangs, timeout=0.05)
    g.add_edge(START, "hangs")
    with pytest.raises(NodeTimeoutError, match=r"'hangs' did not finish within its timeout of 0\.05 s"):
        await g.compile().ainvoke({})

    release = threading.Event()

    def blocks(s: State) -> State:
        release.wait(10)
        return {}

    g = Graph(State)
    g.add_node("blocks", blocks, timeout=0.05)
    g.add_edge(START, "blocks")
    try:
        with pytest.raises(TimeoutError):  # NodeTimeoutError is also a TimeoutError
            await g.compile().ainvoke({})
    finally:
        release.set()


async def test_nodes_receive_config_and_run_context() -> None:
    seen: list[NodeConfig] = []

    def node(s: State, config: NodeConfig) -> State:
        seen.append(config)
        assert get_config().task_id == config.task_id
        return {}

    g = Graph(State)
    g.add_node("n", node)
    g.add_edge(START, "n")
    await g.compile().ainvoke({}, context=RunContext(tenant="acme", user="u1"))
    assert seen[0].node == "n" and seen[0].context.tenant == "acme" and seen[0].context.user == "u1"


@pytest.mark.parametrize(
    ("ret", "message"),
    [
        ({"nope": 1}, r"unknown state key\(s\) \['nope'\]"),
        ("text", "returned a str; return a dict"),
        (Command(goto="ghost"), "routed to unknown node 'ghost'"),
    ],
)
async def test_bad_node_output_is_a_clear_error(ret: Any, message: str) -> None:
    g = Graph(State)
    g.add_node("n", lambda s: ret)
    g.add_edge(START, "n")
    with pytest.raises(InvalidUpdateError, match=message):
        await g.compile().ainvoke({})


async def test_bad_input_is_refused_before_anything_runs() -> None:
    ran: list[str] = []
    g = Graph(State)
    g.add_node("n", lambda s: ran.append("n"))
    g.add_edge(START, "n")
    with pytest.raises(InvalidUpdateError, match="unknown state key"):
        await g.compile().ainvoke({"typo": 1})
    with pytest.raises(UserError, match="graph input must be a dict"):
        await g.compile().ainvoke(42)
    assert ran == []


def test_compile_checks_the_graph() -> None:
    g = Graph(State)
    g.add_node("a", lambda s: {})
    with pytest.raises(InvalidGraphError, match="no entry point"):
        g.compile()
    g.add_edge(START, "a").add_edge("a", "ghost")
    with pytest.raises(InvalidGraphError, match="unknown node 'ghost'"):
        g.compile()
    with pytest.raises(InvalidGraphError, match="already exists"):
        g.add_node("a", lambda s: {})
    with pytest.raises(InvalidGraphError, match="reserved"):
        g.add_node(END, lambda s: {})
    g2 = Graph(State)
    g2.add_node("a", lambda s: {}).add_edge(START, "a")
    with pytest.raises(InvalidGraphError, match="interrupt_before"):
        g2.compile(interrupt_before=["zzz"])
    with pytest.raises(InvalidGraphError, match="TypedDict, a dataclass or a pydantic"):
        Graph(int)


def test_sync_invoke_and_its_guard_inside_a_loop() -> None:
    g = Graph(State)
    g.add_node("a", lambda s: {"count": 41 + s["count"]})
    g.add_edge(START, "a")
    app = g.compile()
    assert app.invoke({"count": 1})["count"] == 42

    async def inside() -> None:
        with pytest.raises(UserError, match="running event loop"):
            app.invoke({"count": 1})

    asyncio.run(inside())


def test_sync_invoke_from_many_threads_on_one_app(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from bastion.checkpoint import SqliteCheckpointer

    cp = SqliteCheckpointer(tmp_path / "threads.db")
    try:
        g = Graph(State)
        g.add_node("a", lambda s: {"count": s.get("count", 0) + 1, "log": ["a"]})
        g.add_node("b", lambda s: {"count": s["count"] * 2, "log": ["b"]})
        g.add_edge(START, "a").add_edge("a", "b")
        app = g.compile(checkpointer=cp)

        def worker(i: int) -> list[int]:
            return [app.invoke({"count": i}, thread_id=f"w{i}")["count"] for _ in range(10)]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(worker, range(8)))
        for i, counts in enumerate(results):
            assert counts == [(i + 1) * 2] * 10  # each turn: input sets count=i, a adds 1, b doubles
            assert len(app.get_state(f"w{i}").values["log"]) == 20
    finally:
        cp.close()


async def test_an_empty_fan_out_is_a_no_op() -> None:
    g = Graph(State)
    g.add_node("fan", lambda s: [Send("work", i) for i in s.get("log", [])])
    g.add_node("work", lambda i: {"count": 1})
    g.add_edge(START, "fan")
    assert await g.compile().ainvoke({"count": 0}) == {"count": 0}


def test_draw_mermaid_shows_edges_branches_and_joins() -> None:
    g = Graph(State)
    for n in "abcd":
        g.add_node(n, lambda s: {})
    g.add_edge(START, "a").add_conditional_edges("a", lambda s: "y", {"y": "b", "n": END})
    g.add_edge("a", "c").add_edge(["b", "c"], "d").add_edge("d", END)
    lines = g.compile().draw_mermaid().splitlines()
    assert lines[0] == "flowchart TD"
    for expected in (
        "    __start__ --> a",
        "    a --> c",
        "    a -.-> |y| b",
        "    a -.-> |n| __end__",
        "    b --> |join| d",
        "    c --> |join| d",
        "    d --> __end__",
    ):
        assert expected in lines
