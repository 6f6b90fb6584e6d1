"""In-process checkpointer: for tests and short-lived runs. Stores the same serialized payloads
as the durable backends, so serialization errors surface here too."""

from __future__ import annotations

from collections.abc import Sequence

from bastion.checkpoint._base import CheckpointRecord, JournalEntry, WriteRecord, follow_parents


class MemoryCheckpointer:
    """Keeps everything in dicts; lost when the process exits."""

    def __init__(self) -> None:
        # (thread, ns) -> checkpoint_id -> record; ids sort by creation time.
        self._checkpoints: dict[tuple[str, str], dict[str, CheckpointRecord]] = {}
        self._writes: dict[tuple[str, str, str], list[WriteRecord]] = {}
        self._journal: dict[tuple[str, str, str], dict[str, str]] = {}
        self._latest: dict[tuple[str, str], str] = {}

    async def put(self, record: CheckpointRecord) -> None:
        key = (record.thread_id, record.ns)
        self._checkpoints.setdefault(key, {})[record.checkpoint_id] = record
        if record.checkpoint_id > self._latest.get(key, ""):
            self._latest[key] = record.checkpoint_id

    async def put_writes(self, writes: Sequence[WriteRecord]) -> None:
        for w in writes:
            self._writes.setdefault((w.thread_id, w.ns, w.checkpoint_id), []).append(w)

    async def get(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> CheckpointRecord | None:
        rows = self._checkpoints.get((thread_id, ns))
        if not rows:
            return None
        return rows.get(checkpoint_id) if checkpoint_id else rows[self._latest[(thread_id, ns)]]

    async def get_chain(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> list[CheckpointRecord]:
        target = await self.get(thread_id, ns, checkpoint_id)
        if target is None:
            return []
        return follow_parents(list(self._checkpoints[(thread_id, ns)].values()), target)

    async def list(
        self, thread_id: str, ns: str = "", *, before: str | None = None, limit: int | None = None
    ) -> list[CheckpointRecord]:
        rows = self._checkpoints.get((thread_id, ns), {})
        ids = sorted((i for i in rows if before is None or i < before), reverse=True)
        if limit is not None:
            ids = ids[:limit]
        return [rows[i] for i in ids]

    async def get_writes(self, thread_id: str, ns: str, checkpoint_id: str) -> list[WriteRecord]:
        return list(self._writes.get((thread_id, ns, checkpoint_id), ()))

    async def put_journal(self, entry: JournalEntry) -> None:
        self._journal.setdefault((entry.thread_id, entry.ns, entry.task_id), {}).setdefault(entry.key, entry.payload)

    async def get_journal(self, thread_id: str, ns: str, task_id: str) -> dict[str, str]:
        return dict(self._journal.get((thread_id, ns, task_id), {}))

    async def fork(self, thread_id: str, ns: str, checkpoint_id: str, new_thread_id: str) -> None:
        chain = await self.get_chain(thread_id, ns, checkpoint_id)
        if not chain:
            from bastion.errors import CheckpointError

            raise CheckpointError(f"no checkpoint {checkpoint_id!r} in thread {thread_id!r} to fork")
        for r in chain:
            await self.put(
                CheckpointRecord(
                    new_thread_id, ns, r.checkpoint_id, r.parent_id, r.keyframe_id, r.step, r.created_at, r.payload
                )
            )

    async def delete_thread(self, thread_id: str) -> None:
        for key in [k for k in self._checkpoints if k[0] == thread_id]:
            del self._checkpoints[key]
            self._latest.pop(key, None)
        for wkey in [k for k in self._writes if k[0] == thread_id]:
            del self._writes[wkey]
        for jkey in [k for k in self._journal if k[0] == thread_id]:
            del self._journal[jkey]

    def _interrupted(self, thread_id: str) -> bool:
        rows = self._checkpoints.get((thread_id, ""))
        if not rows:
            return False
        writes = self._writes.get((thread_id, "", self._latest[(thread_id, "")]), [])
        return any(w.kind == "interrupt" for w in writes)

    async def prune(self, *, older_than: float, keep_interrupted: bool = True) -> list[str]:
        latest: dict[str, float] = {}
        for (thread, _ns), rows in self._checkpoints.items():
            t = max(r.created_at for r in rows.values())
            latest[thread] = max(t, latest.get(thread, t))
        doomed = [
            t for t, ts in sorted(latest.items()) if ts < older_than and not (keep_interrupted and self._interrupted(t))
        ]
        for t in doomed:
            await self.delete_thread(t)
        return doomed

    async def aclose(self) -> None:
        return None


__all__ = ["MemoryCheckpointer"]
