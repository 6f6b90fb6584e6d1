"""A worker that just read a thread's latest checkpoint (holding the run) tells the engine, which
then skips its own first read of the thread when the thread is new or its cache holds exactly
that checkpoint; any other answer is read from storage, and the engine moves the hint on with each
checkpoint it writes on the thread. Likewise a task of a checkpoint the run has just written reads no
journal (nothing can be journaled under its id yet)."""

from __future__ import annotations

from typing import TypedDict

from bastion.checkpoint import KNOWN_LATEST, CheckpointRecord, KnownLatest, MemoryCheckpointer
from bastion.graph import START, Graph


class S(TypedDict, total=False):
    x: int


class CountingSaver(MemoryCheckpointer):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> CheckpointRecord | None:
        self.gets += 1
        return await super().get(thread_id, ns, checkpoint_id)


def _app(saver: CountingSaver):
    g = Graph(S)
    g.add_node("inc", lambda s: {"x": s.get("x", 0) + 1})
    g.add_edge(START, "inc")
    return g.compile(checkpointer=saver)


async def _run(app, thread: str, known: KnownLatest | None) -> int:
    token = KNOWN_LATEST.set(known)
    try:
        return (await app.ainvoke({}, thread_id=thread))["x"]
    finally:
        KNOWN_LATEST.reset(token)


async def test_a_new_thread_is_not_read() -> None:
    saver = CountingSaver()
    app = _app(saver)
    assert await _run(app, "t", KnownLatest("t", None)) == 1
    assert saver.gets == 0


async def test_the_cached_latest_is_not_read_again_but_anything_else_is() -> None:
    saver = CountingSaver()
    app = _app(saver)
    assert await _run(app, "t", None) == 1
    latest = await saver.get("t")
    assert latest is not None
    saver.gets = 0
    assert await _run(app, "t", KnownLatest("t", latest.checkpoint_id)) == 2  # the cache holds it
    assert saver.gets == 0
    # another process moved the thread on: the hint names a checkpoint the cache does not hold
    other = _app(CountingSaver())
    other._engine.checkpointer = saver  # (same storage, its own cache)
    await other.ainvoke({}, thread_id="t")
    newest = await saver.get("t")
    assert newest is not None
    saver.gets = 0
    assert await _run(app, "t", KnownLatest("t", newest.checkpoint_id)) == 4  # read, not the stale cache
    assert saver.gets >= 1


async def test_a_hint_follows_the_runs_own_checkpoints() -> None:
    saver = CountingSaver()
    app = _app(saver)
    known = KnownLatest("t", None)
    token = KNOWN_LATEST.set(known)
    try:
        assert (await app.aget_state("t")).values == {}  # as an agent checks for a pending decision
        assert (await app.aget_state("t")).values == {}
        assert saver.gets == 0
        assert (await app.ainvoke({}, thread_id="t"))["x"] == 1  # the run itself: not read either
        latest = await saver.get("t")
        assert latest is not None and known.checkpoint_id == latest.checkpoint_id
        saver.gets = 0
        assert (await app.aget_state("t")).values == {"x": 1}  # the final state: from the cache
        assert saver.gets == 0
    finally:
        KNOWN_LATEST.reset(token)


async def test_a_hint_is_for_its_thread() -> None:
    saver = CountingSaver()
    app = _app(saver)
    await _run(app, "a", None)
    known = KnownLatest("b", None)
    assert await _run(app, "a", known) == 2 and known.checkpoint_id is None  # another thread: ignored
    token = KNOWN_LATEST.set(KnownLatest("a", None))
    try:
        first = await app.ainvoke({}, thread_id="a")  # "a has none": believed...
        second = await app.ainvoke({}, thread_id="a")  # ...then the hint names what the first wrote
    finally:
        KNOWN_LATEST.reset(token)
    assert first["x"] == 1 and second["x"] == 2


async def test_a_task_of_a_checkpoint_just_written_reads_no_journal_but_a_resumed_one_does() -> None:
    from bastion.graph import Command, interrupt, memo

    class JournalCountingSaver(CountingSaver):
        def __init__(self) -> None:
            super().__init__()
            self.journal_reads = 0

        async def get_journal(self, thread_id: str, ns: str, task_id: str) -> dict[str, str]:
            self.journal_reads += 1
            return await super().get_journal(thread_id, ns, task_id)

    calls: list[str] = []

    async def node(s: S) -> S:
        async def work() -> int:
            calls.append("work")
            return 41

        value = await memo("work", work)
        answer = interrupt("ok?")  # pauses the first time; the resumed task replays the memo
        return {"x": value + int(answer)}

    saver = JournalCountingSaver()
    g = Graph(S)
    g.add_node("n", node)
    g.add_edge(START, "n")
    app = g.compile(checkpointer=saver)
    await app.ainvoke({}, thread_id="j")
    assert saver.journal_reads == 0 and calls == ["work"]  # a fresh task: nothing to read
    out = await app.ainvoke(Command(resume=1), thread_id="j")
    assert out["x"] == 42
    assert saver.journal_reads == 1 and calls == ["work"]  # resumed: read, and the memo replayed
