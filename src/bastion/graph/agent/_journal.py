"""The tool idempotency journal of an agent run, kept in the run's checkpointer.

A worker killed inside a side-effecting tool leaves the run to another worker, which sees
only what is in shared storage. So the "started" record of each side-effecting call goes
into the checkpointer's step journal of the tool task (the same PostgreSQL database or
SQLite file as the checkpoints, scoped by the thread key the run was given), committed
before the tool body runs; the task id is the same when the recovering worker runs the task
again, so it finds the record and reports "outcome unknown" instead of repeating the call.

The step journal is append-only (first write wins, no deletes), so each state is its own
key: `begin:N`, `abort:N` for the Nth attempt (a call that failed cleanly may run again) and
one `done` holding the result.
"""

from __future__ import annotations

import time
from typing import Any

from bastion.checkpoint import Checkpointer, JournalEntry
from bastion.checkpoint.format import decode_payload, encode_value
from bastion.graph._runtime import CURRENT
from bastion.graph.agent._codec import result_from_dict, result_to_dict
from bastion.tools import IdempotencyEntry
from bastion.types import ToolResult, new_id


class StepJournal:
    """`bastion.tools.IdempotencyJournal` over one graph task's step journal."""

    def __init__(self, checkpointer: Checkpointer, thread_id: str, ns: str, task_id: str) -> None:
        self._checkpointer = checkpointer
        self._where = (thread_id, ns, task_id)
        self._attempts: dict[str, int] = {}  # keys this process began: which attempt it owns

    async def _entries(self) -> dict[str, str]:
        return await self._checkpointer.get_journal(*self._where)

    async def _put(self, key: str, value: Any) -> None:
        thread_id, ns, task_id = self._where
        await self._checkpointer.put_journal(JournalEntry(thread_id, ns, task_id, key, encode_value(value, key)))

    async def begin(self, key: str, tool: str) -> IdempotencyEntry | None:
        entries = await self._entries()
        done = entries.get(f"tool:{key}:done")
        if done is not None:
            result = result_from_dict(decode_payload(done, "journal")["value"])
            return IdempotencyEntry(key, tool, "done", result)
        attempt = 0
        while f"tool:{key}:abort:{attempt}" in entries:
            attempt += 1
        began = f"tool:{key}:begin:{attempt}"
        if began in entries:
            return IdempotencyEntry(key, tool, "pending")
        nonce = new_id()
        await self._put(began, {"nonce": nonce, "tool": tool, "at": time.time()})
        # First write wins: read back whose record it is, so two processes running the same
        # task at once (a lease that expired under a live worker) cannot both go ahead.
        stored = (await self._entries()).get(began)
        if stored is None or decode_payload(stored, "journal")["value"].get("nonce") != nonce:
            return IdempotencyEntry(key, tool, "pending")
        self._attempts[key] = attempt
        return None

    async def complete(self, key: str, result: ToolResult) -> None:
        self._attempts.pop(key, None)
        await self._put(f"tool:{key}:done", result_to_dict(result))

    async def abort(self, key: str) -> None:
        attempt = self._attempts.pop(key, None)
        if attempt is not None:
            await self._put(f"tool:{key}:abort:{attempt}", {"at": time.time()})


def task_journal() -> StepJournal | None:
    """The journal of the graph task running now, or None without durable state."""
    ctx = CURRENT.get()
    run = ctx.run if ctx is not None else None
    if ctx is None or run is None or run.checkpointer is None or run.thread_id is None:
        return None
    return StepJournal(run.checkpointer, run.thread_id, run.ns, ctx.task_id)


__all__ = ["StepJournal", "task_journal"]
