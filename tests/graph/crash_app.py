"""A graph that test_crash.py runs in a child process, SIGKILLs mid-node, then resumes in-process.

Run as a script: `python crash_app.py WORKDIR` starts thread "job" on WORKDIR/runs.db and hangs
inside node `slow` after its memoized call, writing WORKDIR/mid-node once it is there.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any, TypedDict

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph import START, Graph, append, memo


class State(TypedDict, total=False):
    log: Annotated[list[str], append]


def calls(workdir: Path) -> list[str]:
    path = workdir / "calls.log"
    return path.read_text().split() if path.exists() else []


def build(workdir: Path, *, hang: bool) -> Graph:
    def mark(name: str) -> None:  # one line per execution; the file survives the kill
        with open(workdir / "calls.log", "a") as f:
            f.write(name + "\n")

    def node(name: str) -> Any:
        def fn(s: State) -> State:
            mark(name)
            return {"log": [name]}

        return fn

    async def slow(s: State) -> State:
        mark("slow")
        result = await memo("expensive", lambda: mark("expensive") or "paid-for result")
        if hang:
            await _until_sibling_is_durable(workdir / "runs.db")
            (workdir / "mid-node").write_text("now")
            await asyncio.Event().wait()  # never returns: the test kills the process here
        return {"log": [f"slow:{result}"]}

    g = Graph(State)
    g.add_node("prepare", node("prepare")).add_node("fast", node("fast")).add_node("slow", slow)
    g.add_node("finish", node("finish"))
    g.add_edge(START, "prepare").add_edge("prepare", "fast").add_edge("prepare", "slow")
    g.add_edge(["fast", "slow"], "finish")
    return g


async def _until_sibling_is_durable(db: Path) -> None:
    """The sibling's result is flushed as soon as the loop is free; wait for it (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with closing(sqlite3.connect(db)) as conn:
            if conn.execute("SELECT count(*) FROM writes WHERE kind='done'").fetchone()[0]:
                return
        await asyncio.sleep(0.001)
    raise SystemExit("sibling result never became durable")


async def _main(workdir: Path) -> None:
    cp = SqliteCheckpointer(workdir / "runs.db")
    await build(workdir, hang=True).compile(checkpointer=cp).ainvoke({}, thread_id="job")


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
