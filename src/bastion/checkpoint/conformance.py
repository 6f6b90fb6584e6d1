"""Conformance kit: the behaviour every `Checkpointer` must have, as reusable async checks.

```python
from bastion.checkpoint.conformance import CHECKS

@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_my_backend(check):
    cp = MyCheckpointer(...)
    try:
        await check(cp)
    finally:
        await cp.aclose()
```

Each check starts from an empty store and raises `AssertionError` on a violation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from bastion.checkpoint._base import Checkpointer, CheckpointRecord, JournalEntry, WriteRecord

Check = Callable[[Checkpointer], Awaitable[None]]


def _rec(
    thread: str, cid: str, parent: str | None, keyframe: str, *, ns: str = "", step: int = 0, at: float | None = None
) -> CheckpointRecord:
    return CheckpointRecord(
        thread, ns, cid, parent, keyframe, step, time.time() if at is None else at, f'{{"v":2,"id":"{cid}"}}'
    )


def _ids(records: list[CheckpointRecord]) -> list[str]:
    return [r.checkpoint_id for r in records]


async def check_put_and_get_latest(cp: Checkpointer) -> None:
    assert await cp.get_chain("t", "") == [], "an unknown thread has no checkpoints"
    await cp.put(_rec("t", "01", None, "01"))
    await cp.put(_rec("t", "02", "01", "01", step=1))
    chain = await cp.get_chain("t", "")
    assert _ids(chain) == ["02", "01"], f"latest chain back to the keyframe, newest first: {_ids(chain)}"
    assert chain[0].payload == '{"v":2,"id":"02"}' and chain[0].step == 1 and chain[0].parent_id == "01"
    assert _ids(await cp.get_chain("t", "", "01")) == ["01"]
    assert await cp.get_chain("t", "", "99") == [], "a missing checkpoint id gives []"
    latest = await cp.get("t", "")
    assert latest is not None and latest.checkpoint_id == "02" and latest.payload == chain[0].payload
    first = await cp.get("t", "", "01")
    assert first is not None and first.is_keyframe and first.parent_id is None
    assert await cp.get("t", "", "99") is None and await cp.get("nope", "") is None


async def check_chain_stops_at_keyframe(cp: Checkpointer) -> None:
    await cp.put(_rec("t", "01", None, "01"))
    await cp.put(_rec("t", "02", "01", "01"))
    await cp.put(_rec("t", "03", "02", "03"))  # a new keyframe
    await cp.put(_rec("t", "04", "03", "03"))
    assert _ids(await cp.get_chain("t", "")) == ["04", "03"]
    assert _ids(await cp.get_chain("t", "", "02")) == ["02", "01"]


async def check_branches(cp: Checkpointer) -> None:
    await cp.put(_rec("t", "01", None, "01"))
    await cp.put(_rec("t", "02", "01", "01"))
    await cp.put(_rec("t", "03", "01", "01"))  # a sibling branch off 01 (time travel)
    await cp.put(_rec("t", "04", "02", "01"))
    assert _ids(await cp.get_chain("t", "", "03")) == ["03", "01"], "a branch does not see its sibling"
    assert _ids(await cp.get_chain("t", "")) == ["04", "02", "01"]


async def check_list_and_namespaces(cp: Checkpointer) -> None:
    for i in range(1, 6):
        await cp.put(_rec("t", f"0{i}", f"0{i - 1}" if i > 1 else None, "01", step=i))
    await cp.put(_rec("t", "09", None, "09", ns="sub:1"))
    await cp.put(_rec("u", "08", None, "08"))
    assert _ids(await cp.list("t", "")) == ["05", "04", "03", "02", "01"]
    assert _ids(await cp.list("t", "", limit=2)) == ["05", "04"]
    assert _ids(await cp.list("t", "", before="03")) == ["02", "01"]
    assert _ids(await cp.list("t", "sub:1")) == ["09"], "namespaces are separate"
    assert _ids(await cp.get_chain("t", "sub:1")) == ["09"]
    assert _ids(await cp.list("u", "")) == ["08"], "threads are separate"


async def check_writes(cp: Checkpointer) -> None:
    await cp.put(_rec("t", "01", None, "01"))
    w = [
        WriteRecord("t", "", "01", "01:0", "done", '{"v":2,"n":0}'),
        WriteRecord("t", "", "01", "01:1", "interrupt", '{"v":2,"n":1}'),
    ]
    await cp.put_writes(w)
    await cp.put_writes([WriteRecord("t", "", "01", "__resume__", "resume", '{"v":2,"n":2}')])
    await cp.put_writes([])
    got = await cp.get_writes("t", "", "01")
    assert [(x.task_id, x.kind, x.payload) for x in got] == [
        ("01:0", "done", '{"v":2,"n":0}'),
        ("01:1", "interrupt", '{"v":2,"n":1}'),
        ("__resume__", "resume", '{"v":2,"n":2}'),
    ], "writes come back in insertion order"
    assert await cp.get_writes("t", "", "02") == []
    assert await cp.get_writes("t", "x", "01") == [], "writes are per namespace"


async def check_journal(cp: Checkpointer) -> None:
    await cp.put_journal(JournalEntry("t", "", "01:0", "model:1", '{"v":2,"value":1}'))
    await cp.put_journal(JournalEntry("t", "", "01:0", "model:1", '{"v":2,"value":"other"}'))
    await cp.put_journal(JournalEntry("t", "", "01:0", "tool:1", '{"v":2,"value":2}'))
    await cp.put_journal(JournalEntry("t", "", "01:1", "model:1", '{"v":2,"value":3}'))
    assert await cp.get_journal("t", "", "01:0") == {
        "model:1": '{"v":2,"value":1}',
        "tool:1": '{"v":2,"value":2}',
    }, "the first recorded result wins"
    assert await cp.get_journal("t", "", "01:1") == {"model:1": '{"v":2,"value":3}'}
    assert await cp.get_journal("t", "", "nope") == {}


async def check_fork(cp: Checkpointer) -> None:
    await cp.put(_rec("t", "01", None, "01"))
    await cp.put(_rec("t", "02", "01", "01"))
    await cp.put(_rec("t", "03", "02", "01"))
    await cp.fork("t", "", "02", "f")
    assert _ids(await cp.get_chain("f", "")) == ["02", "01"], "the fork's latest is the forked checkpoint"
    assert _ids(await cp.get_chain("t", "")) == ["03", "02", "01"], "the original is untouched"
    await cp.put(_rec("f", "05", "02", "01"))
    assert _ids(await cp.get_chain("f", "")) == ["05", "02", "01"]
    assert _ids(await cp.list("t", "")) == ["03", "02", "01"], "writing to the fork leaves the original alone"


async def check_delete_thread(cp: Checkpointer) -> None:
    await cp.put(_rec("t", "01", None, "01"))
    await cp.put(_rec("t", "02", None, "02", ns="sub:1"))
    await cp.put_writes([WriteRecord("t", "", "01", "01:0", "done", '{"v":2}')])
    await cp.put_journal(JournalEntry("t", "sub:1", "02:0", "k", '{"v":2}'))
    await cp.put(_rec("u", "01", None, "01"))
    await cp.delete_thread("t")
    assert await cp.get_chain("t", "") == [] and await cp.get_chain("t", "sub:1") == []
    assert await cp.get_writes("t", "", "01") == []
    assert await cp.get_journal("t", "sub:1", "02:0") == {}
    assert _ids(await cp.get_chain("u", "")) == ["01"], "other threads survive"


async def check_prune_keeps_interrupted(cp: Checkpointer) -> None:
    old, now = 1_000.0, time.time()
    await cp.put(_rec("old", "01", None, "01", at=old))
    await cp.put(_rec("waiting", "01", None, "01", at=old))
    await cp.put_writes([WriteRecord("waiting", "", "01", "01:0", "interrupt", '{"v":2}')])
    await cp.put(_rec("answered", "01", None, "01", at=old))
    await cp.put_writes([WriteRecord("answered", "", "01", "01:0", "interrupt", '{"v":2}')])
    await cp.put(_rec("answered", "02", "01", "01", at=old + 1))  # a later step: no longer waiting
    await cp.put(_rec("fresh", "01", None, "01", at=now))
    deleted = await cp.prune(older_than=now - 60)
    assert sorted(deleted) == ["answered", "old"], deleted
    assert await cp.get_chain("old", "") == []
    assert _ids(await cp.get_chain("waiting", "")) == ["01"], "a thread waiting on a human is kept"
    assert _ids(await cp.get_chain("fresh", "")) == ["01"]
    assert sorted(await cp.prune(older_than=now - 60, keep_interrupted=False)) == ["waiting"]


CHECKS: list[Check] = [
    check_put_and_get_latest,
    check_chain_stops_at_keyframe,
    check_branches,
    check_list_and_namespaces,
    check_writes,
    check_journal,
    check_fork,
    check_delete_thread,
    check_prune_keeps_interrupted,
]

__all__ = ["CHECKS", "Check"]
