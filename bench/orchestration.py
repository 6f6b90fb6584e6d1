"""Orchestration benchmark: Bastion's graph engine vs LangGraph on the same graphs, one run.

Measures (a) per-step overhead of a 10-node chain of trivial nodes without persistence,
(b) durable 3-node runs per second on SQLite (SqliteCheckpointer vs LangGraph's SqliteSaver),
(c) checkpoint bytes per chat turn with a 50-message state (growth of the SQLite file), and
(d) a 1,000-way Send fan-out (map-reduce). Prints a Markdown table and writes
bench/results/orchestration.json. LangGraph lives only in .bench-venv; when it is not importable
here, the script re-runs itself there (creating it from bench/requirements.txt if needed).

    python bench/orchestration.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import operator
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import ROOT, ensure_bench_venv, fmt, has_module, machine_note, table, write_results

TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore " * 2


class ChainState(TypedDict):
    x: int


class FanState(TypedDict, total=False):
    items: Annotated[list[int], operator.add]
    total: int


# --- timing ----------------------------------------------------------------------------------


async def per_op(fn: Callable[[], Awaitable[Any]], budget: float, rounds: int = 5) -> float:
    """Median seconds per call over `rounds` rounds of about `budget / rounds` seconds each."""
    await fn()  # warm up
    samples: list[float] = []
    for _ in range(rounds):
        n = 0
        gc.collect()
        start = time.perf_counter()
        deadline = start + budget / rounds
        while True:
            await fn()
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        samples.append((now - start) / n)
    return statistics.median(samples)


def sync_per_op(fn: Callable[[], Any], budget: float, rounds: int = 5) -> float:
    async def wrapped() -> None:
        fn()

    return asyncio.run(per_op(wrapped, budget, rounds))


def db_bytes(path: Path) -> int:
    """Bytes in use by an SQLite file (pages minus free pages), read through a fresh connection."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


# --- Bastion ---------------------------------------------------------------------------------


def bastion_chain() -> Any:
    from bastion.graph import START, Graph

    async def inc(s: ChainState) -> ChainState:
        return {"x": s["x"] + 1}

    g = Graph(ChainState)
    names = [f"n{i}" for i in range(10)]
    for n in names:
        g.add_node(n, inc)
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


def bastion_three(checkpointer: Any) -> Any:
    from bastion.graph import START, Graph

    def inc(s: ChainState) -> ChainState:
        return {"x": s["x"] + 1}

    g = Graph(ChainState)
    g.add_node("a", inc).add_node("b", inc).add_node("c", inc)
    g.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c")
    return g.compile(checkpointer=checkpointer)


def bastion_fanout() -> Any:
    from bastion.graph import START, Graph, Send

    async def work(i: int) -> FanState:
        return {"items": [i]}

    async def reduce(s: FanState) -> FanState:
        return {"total": sum(s["items"])}

    g = Graph(FanState)
    g.add_node("fan", lambda s: {}).add_node("work", work).add_node("reduce", reduce)
    g.add_edge(START, "fan").add_conditional_edges("fan", lambda s: [Send("work", i) for i in range(1000)])
    g.add_edge("work", "reduce")
    return g.compile()


async def bastion_bytes_per_turn(path: Path, turns: int) -> float:
    from bastion.checkpoint import SqliteCheckpointer
    from bastion.graph import START, Graph, append
    from bastion.types import Message

    Chat = TypedDict("Chat", {"messages": Annotated[list[Message], append]})  # noqa: UP013

    def bot(s: Any) -> Any:
        return {"messages": [Message.assistant(f"reply {len(s['messages'])}: {TEXT}")]}

    cp = SqliteCheckpointer(path)
    try:
        g = Graph(Chat)
        g.add_node("bot", bot).add_edge(START, "bot")
        app = g.compile(checkpointer=cp)
        history = [Message.user(f"{i} {TEXT}") if i % 2 == 0 else Message.assistant(f"{i} {TEXT}") for i in range(49)]
        await app.ainvoke({"messages": history}, thread_id="chat")  # 50 messages now
        before = db_bytes(path)
        for t in range(turns):
            await app.ainvoke({"messages": [Message.user(f"turn {t}: {TEXT}")]}, thread_id="chat")
        return (db_bytes(path) - before) / turns
    finally:
        cp.close()


# --- LangGraph -------------------------------------------------------------------------------


def lg_conn(path: Path) -> sqlite3.Connection:
    """LangGraph's SqliteSaver on the same SQLite settings Bastion uses (WAL, synchronous=NORMAL);
    its default rollback journal would fsync every commit and make the comparison unfair."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def lg_chain(use_async: bool) -> Any:
    from langgraph.graph import START, StateGraph

    async def ainc(s: ChainState) -> ChainState:
        return {"x": s["x"] + 1}

    def sinc(s: ChainState) -> ChainState:
        return {"x": s["x"] + 1}

    inc = ainc if use_async else sinc

    g = StateGraph(ChainState)
    names = [f"n{i}" for i in range(10)]
    for n in names:
        g.add_node(n, inc)
    g.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        g.add_edge(a, b)
    return g


def lg_three(checkpointer: Any) -> Any:
    from langgraph.graph import START, StateGraph

    def inc(s: ChainState) -> ChainState:
        return {"x": s["x"] + 1}

    g = StateGraph(ChainState)
    g.add_node("a", inc)
    g.add_node("b", inc)
    g.add_node("c", inc)
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    return g.compile(checkpointer=checkpointer)


def lg_fanout() -> Any:
    from langgraph.graph import START, StateGraph
    from langgraph.types import Send

    async def work(i: int) -> FanState:
        return {"items": [i]}

    async def reduce(s: FanState) -> FanState:
        return {"total": sum(s["items"])}

    g = StateGraph(FanState)
    g.add_node("fan", lambda s: {})
    g.add_node("work", work)
    g.add_node("reduce", reduce)
    g.add_edge(START, "fan")
    g.add_conditional_edges("fan", lambda s: [Send("work", i) for i in range(1000)])
    g.add_edge("work", "reduce")
    return g.compile()


def lg_bytes_per_turn(path: Path, turns: int) -> float:
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import START, StateGraph
    from langgraph.graph.message import add_messages

    Chat = TypedDict("Chat", {"messages": Annotated[list[Any], add_messages]})  # noqa: UP013

    def bot(s: Any) -> Any:
        return {"messages": [AIMessage(f"reply {len(s['messages'])}: {TEXT}")]}

    conn = lg_conn(path)
    try:
        g = StateGraph(Chat)
        g.add_node("bot", bot)
        g.add_edge(START, "bot")
        app = g.compile(checkpointer=SqliteSaver(conn))
        cfg: Any = {"configurable": {"thread_id": "chat"}}
        history = [HumanMessage(f"{i} {TEXT}") if i % 2 == 0 else AIMessage(f"{i} {TEXT}") for i in range(49)]
        app.invoke({"messages": history}, cfg)
        before = db_bytes(path)
        for t in range(turns):
            app.invoke({"messages": [HumanMessage(f"turn {t}: {TEXT}")]}, cfg)
        return (db_bytes(path) - before) / turns
    finally:
        conn.close()


# --- the run ---------------------------------------------------------------------------------


async def measure_bastion(tmp: Path, budget: float, turns: int) -> dict[str, float]:
    from bastion.checkpoint import SqliteCheckpointer

    out: dict[str, float] = {}
    chain = bastion_chain().compile()
    out["step_us"] = await per_op(lambda: chain.ainvoke({"x": 0}), budget) / 10 * 1e6

    cp = SqliteCheckpointer(tmp / "bastion-runs.db")
    try:
        app = bastion_three(cp)
        counter = iter(range(10**9))
        out["durable_runs_s"] = 1 / await per_op(lambda: app.ainvoke({"x": 0}, thread_id=f"t{next(counter)}"), budget)
    finally:
        cp.close()
    out["bytes_per_turn"] = await bastion_bytes_per_turn(tmp / "bastion-chat.db", turns)
    fan = bastion_fanout()
    out["fanout_ms"] = await per_op(lambda: fan.ainvoke({}), budget, rounds=3) * 1e3
    return out


def measure_langgraph(tmp: Path, budget: float, turns: int) -> dict[str, float]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    out: dict[str, float] = {}
    achain = lg_chain(use_async=True).compile()
    schain = lg_chain(use_async=False).compile()

    async def run_chain() -> Any:
        return await achain.ainvoke({"x": 0})

    # LangGraph's best of its async and sync paths (its sync path is usually faster).
    out["step_us_async"] = asyncio.run(per_op(run_chain, budget)) / 10 * 1e6
    out["step_us_sync"] = sync_per_op(lambda: schain.invoke({"x": 0}), budget) / 10 * 1e6
    out["step_us"] = min(out["step_us_async"], out["step_us_sync"])

    conn = lg_conn(tmp / "lg-runs.db")
    try:
        app = lg_three(SqliteSaver(conn))
        counter = iter(range(10**9))
        out["durable_runs_s"] = 1 / sync_per_op(
            lambda: app.invoke({"x": 0}, {"configurable": {"thread_id": f"t{next(counter)}"}}), budget
        )
    finally:
        conn.close()
    out["bytes_per_turn"] = lg_bytes_per_turn(tmp / "lg-chat.db", turns)
    fan = lg_fanout()

    async def run_fan() -> Any:
        return await fan.ainvoke({})

    out["fanout_ms"] = asyncio.run(per_op(run_fan, budget, rounds=3)) * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds (about 30 s)")
    parser.add_argument("--no-peer-venv", action="store_true", help="do not use/create .bench-venv for LangGraph")
    args = parser.parse_args(argv)
    if not args.no_peer_venv and not has_module("langgraph"):
        python = ensure_bench_venv(ROOT / "bench" / "requirements.txt")
        if python is not None and Path(python).parent.parent.resolve() != Path(sys.prefix).resolve():
            if not has_module("langgraph", python):
                print(f"langgraph missing in {python}; installing bench/requirements.txt there", flush=True)
                import subprocess

                subprocess.run(
                    [str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "bench" / "requirements.txt")],
                    check=False,
                    timeout=900,
                )
            print(f"langgraph is not installed here; re-running under {python}", flush=True)
            os.execv(str(python), [str(python), __file__, *argv, "--no-peer-venv"])

    budget = 1.0 if args.quick else 3.0
    turns = 20 if args.quick else 50
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bastion-bench-orch-") as d:
        tmp = Path(d)
        print("measuring Bastion ...", flush=True)
        ours = asyncio.run(measure_bastion(tmp, budget, turns))
        peer: dict[str, float] | None = None
        peer_version = None
        try:
            from importlib.metadata import version

            import langgraph  # noqa: F401

            peer_version = version("langgraph")
            print(f"measuring LangGraph {peer_version} ...", flush=True)
            peer = measure_langgraph(tmp, budget, turns)
        except ImportError:
            print("LangGraph is not installed; its column shows n/a", flush=True)

    def ratio(key: str, higher_is_better: bool) -> float | None:
        if peer is None:
            return None
        return ours[key] / peer[key] if higher_is_better else peer[key] / ours[key]

    rows = [
        ("per-step overhead, 10-node chain, no checkpointer", "step_us", " µs", False, "≥ 10x lower"),
        ("durable 3-node run on SQLite", "durable_runs_s", " runs/s", True, "≥ 5x faster"),
        (f"checkpoint bytes per turn, 50-message state ({turns} turns)", "bytes_per_turn", " B", False, "≥ 10x fewer"),
        ("1,000-way Send fan-out + reduce, no checkpointer", "fanout_ms", " ms", False, "faster"),
    ]
    body = []
    for label, key, unit, higher, target in rows:
        r = ratio(key, higher)
        body.append(
            [
                label,
                fmt(ours[key], 1, unit),
                fmt(peer[key] if peer else None, 1, unit),
                fmt(r, 1, "x") if r is not None else "n/a",
                target,
            ]
        )
    print()
    print(
        table(["benchmark", "Bastion", f"LangGraph {peer_version or ''}".strip(), "Bastion advantage", "target"], body)
    )
    print(f"\n{machine_note()}; medians of timed rounds; both engines in the same process and run.")
    data: dict[str, Any] = {
        "machine": machine_note(),
        "langgraph_version": peer_version,
        "quick": args.quick,
        "bastion": ours,
        "langgraph": peer,
        "advantage": {key: ratio(key, higher) for _, key, _, higher, _ in rows},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_results("orchestration", data)
    print(f"wrote {path.relative_to(ROOT)} in {data['wall_seconds']} s")


if __name__ == "__main__":
    main()
