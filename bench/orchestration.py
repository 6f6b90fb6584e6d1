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


class Timer:
    """Timed rounds on one event loop. Rounds of the two engines alternate, so load from
    other processes on a shared machine hits both alike; each result is a median of rounds."""

    def __init__(self, budget: float, rounds: int = 5) -> None:
        self.runner = asyncio.Runner()
        self.round_seconds = budget / rounds
        self.rounds = rounds

    def close(self) -> None:
        self.runner.close()

    def _round(self, call: Callable[[], Any], is_async: bool) -> float:
        async def timed_async() -> float:
            n, start = 0, time.perf_counter()
            deadline = start + self.round_seconds
            while True:
                await call()
                n += 1
                now = time.perf_counter()
                if now >= deadline:
                    return (now - start) / n

        def timed_sync() -> float:
            n, start = 0, time.perf_counter()
            deadline = start + self.round_seconds
            while True:
                call()
                n += 1
                now = time.perf_counter()
                if now >= deadline:
                    return (now - start) / n

        gc.collect()
        return self.runner.run(timed_async()) if is_async else timed_sync()

    def compare(
        self, ours: Callable[[], Awaitable[Any]], peer: Callable[[], Any] | None, peer_async: bool
    ) -> tuple[float, float | None]:
        """Median seconds per call of `ours` (async) and `peer`, rounds interleaved."""
        self._round(ours, True)  # warm up
        if peer is not None:
            self._round(peer, peer_async)
        a: list[float] = []
        b: list[float] = []
        for _ in range(self.rounds):
            a.append(self._round(ours, True))
            if peer is not None:
                b.append(self._round(peer, peer_async))
        return statistics.median(a), (statistics.median(b) if b else None)


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


def measure(tmp: Path, budget: float, turns: int, with_peer: bool) -> tuple[dict[str, float], dict[str, float] | None]:
    from bastion.checkpoint import SqliteCheckpointer

    timer = Timer(budget)
    ours: dict[str, float] = {}
    peer: dict[str, float] | None = {} if with_peer else None
    counter = iter(range(10**9))
    cp = SqliteCheckpointer(tmp / "bastion-runs.db")
    conn = lg_conn(tmp / "lg-runs.db") if with_peer else None
    try:
        chain = bastion_chain().compile()
        fan = bastion_fanout()
        durable = bastion_three(cp)
        if peer is None:
            ours["step_us"] = timer.compare(lambda: chain.ainvoke({"x": 0}), None, False)[0] / 10 * 1e6
            ours["durable_runs_s"] = (
                1 / timer.compare(lambda: durable.ainvoke({"x": 0}, thread_id=f"t{next(counter)}"), None, False)[0]
            )
            ours["fanout_ms"] = timer.compare(lambda: fan.ainvoke({}), None, False)[0] * 1e3
        else:
            from langgraph.checkpoint.sqlite import SqliteSaver

            lg_achain = lg_chain(use_async=True).compile()
            lg_schain = lg_chain(use_async=False).compile()
            lg_fan = lg_fanout()
            lg_durable = lg_three(SqliteSaver(conn))
            # LangGraph's best of its async and sync paths (its sync path is usually faster).
            a, b = timer.compare(lambda: chain.ainvoke({"x": 0}), lambda: lg_achain.ainvoke({"x": 0}), True)
            _, c = timer.compare(lambda: chain.ainvoke({"x": 0}), lambda: lg_schain.invoke({"x": 0}), False)
            assert b is not None and c is not None
            ours["step_us"] = a / 10 * 1e6
            peer["step_us_async"], peer["step_us_sync"] = b / 10 * 1e6, c / 10 * 1e6
            peer["step_us"] = min(peer["step_us_async"], peer["step_us_sync"])
            a, b = timer.compare(
                lambda: durable.ainvoke({"x": 0}, thread_id=f"t{next(counter)}"),
                lambda: lg_durable.invoke({"x": 0}, {"configurable": {"thread_id": f"t{next(counter)}"}}),
                False,
            )
            assert b is not None
            ours["durable_runs_s"], peer["durable_runs_s"] = 1 / a, 1 / b
            a, b = timer.compare(lambda: fan.ainvoke({}), lambda: lg_fan.ainvoke({}), True)
            assert b is not None
            ours["fanout_ms"], peer["fanout_ms"] = a * 1e3, b * 1e3
        ours["bytes_per_turn"] = timer.runner.run(bastion_bytes_per_turn(tmp / "bastion-chat.db", turns))
        if peer is not None:
            peer["bytes_per_turn"] = lg_bytes_per_turn(tmp / "lg-chat.db", turns)
    finally:
        cp.close()
        if conn is not None:
            conn.close()
        timer.close()
    return ours, peer


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

    budget = 1.0 if args.quick else 3.0  # seconds per engine and measurement
    turns = 20 if args.quick else 50
    started = time.perf_counter()
    peer_version = None
    try:
        from importlib.metadata import version

        import langgraph  # noqa: F401

        peer_version = version("langgraph")
    except ImportError:
        print("LangGraph is not installed; its column shows n/a", flush=True)
    with tempfile.TemporaryDirectory(prefix="bastion-bench-orch-") as d:
        print(f"measuring Bastion and LangGraph {peer_version or '(absent)'}, rounds interleaved ...", flush=True)
        ours, peer = measure(Path(d), budget, turns, peer_version is not None)

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
    print(f"\n{machine_note()}; medians of interleaved timed rounds; both engines in one process and run.")
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
