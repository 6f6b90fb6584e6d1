"""Checkpoints written behind the steps (a checkpointer with `write_behind = True`, as
`PostgresCheckpointer`): the next step overlaps the write, the run ends only once every write is
stored, and a failed write fails the run instead of vanishing."""

from __future__ import annotations

import asyncio
from typing import TypedDict

import pytest

from bastion.checkpoint import CheckpointRecord, MemoryCheckpointer
from bastion.errors import CheckpointError
from bastion.graph import START, Graph


class S(TypedDict, total=False):
    x: int


class BehindSaver(MemoryCheckpointer):
    """A memory checkpointer whose writes the engine may leave behind; `hold` makes a write wait."""

    write_behind = True

    def __init__(self) -> None:
        super().__init__()
        self.hold: asyncio.Event | None = None
        self.fail_at_step: int | None = None

    async def put(self, record: CheckpointRecord) -> None:
        if self.hold is not None:
            await asyncio.wait_for(self.hold.wait(), 5)
        if record.step == self.fail_at_step:
            raise CheckpointError("disk full")
        await super().put(record)


def _chain(on_b: object = None) -> Graph:
    def a(s: S) -> S:
        return {"x": s.get("x", 0) + 1}

    def b(s: S) -> S:
        if callable(on_b):
            on_b()
        return {"x": s["x"] + 1}

    g = Graph(S)
    g.add_node("a", a).add_node("b", b)
    g.add_edge(START, "a").add_edge("a", "b")
    return g


async def test_the_next_step_runs_while_the_checkpoint_is_written() -> None:
    saver = BehindSaver()
    saver.hold = asyncio.Event()
    # node b releases the writes: it can only run if the engine did not wait for them
    app = _chain(on_b=saver.hold.set).compile(checkpointer=saver)
    out = await asyncio.wait_for(app.ainvoke({"x": 0}, thread_id="t"), 10)
    assert out["x"] == 2
    # ...and the run returned only once all of them were stored
    snap = await app.aget_state("t")
    assert snap.values["x"] == 2 and snap.next == ()
    assert len(await saver.list("t")) == 3  # input, after a, after b


async def test_a_failed_write_fails_the_run() -> None:
    saver = BehindSaver()
    saver.fail_at_step = 1
    app = _chain().compile(checkpointer=saver)
    with pytest.raises(CheckpointError, match="disk full"):
        await asyncio.wait_for(app.ainvoke({"x": 0}, thread_id="t"), 10)


async def test_a_failed_step_keeps_the_steps_before_it() -> None:
    saver = BehindSaver()
    boom = True

    def fail() -> None:
        if boom:
            raise RuntimeError("b broke")

    app = _chain(on_b=fail).compile(checkpointer=saver)
    with pytest.raises(RuntimeError, match="b broke"):
        await app.ainvoke({"x": 0}, thread_id="t")
    snap = await app.aget_state("t")
    assert snap.next == ("b",) and snap.values["x"] == 1  # stored though written behind
    boom = False
    assert (await app.ainvoke(None, thread_id="t"))["x"] == 2  # resumed at the failed node
