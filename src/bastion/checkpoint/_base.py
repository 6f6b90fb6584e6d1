"""The Checkpointer contract: what every storage backend (memory, SQLite, PostgreSQL) implements.

A backend stores opaque, versioned JSON payloads; it never interprets state. Three kinds of
records, all scoped by `thread_id` and a namespace `ns` (`""` for the top graph, a path for
subgraphs):

- checkpoints: one per superstep, chained by `parent_id`. A payload holds only what changed
  since its parent (message lists as appended items), except keyframes, which are complete;
  `get_chain` returns a checkpoint and its ancestors back to the nearest keyframe.
- writes: per task of the step after a checkpoint: completed results (`done`), pending
  interrupts (`interrupt`) and human answers (`resume`). They make a failed or interrupted
  superstep resumable without repeating the tasks that finished.
- journal: memoized sub-calls of a task (`memo()`), so a node that re-runs does not repeat them.

How state becomes payloads lives in `_format.py`; backends stay storage-dumb.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias, runtime_checkable

WriteKind: TypeAlias = Literal["done", "interrupt", "resume"]


@dataclass(slots=True)
class CheckpointRecord:
    """One stored checkpoint. `keyframe_id == checkpoint_id` when the payload is complete."""

    thread_id: str
    ns: str
    checkpoint_id: str
    parent_id: str | None
    keyframe_id: str
    step: int
    created_at: float
    payload: str

    @property
    def is_keyframe(self) -> bool:
        return self.keyframe_id == self.checkpoint_id


@dataclass(slots=True)
class WriteRecord:
    """A task's contribution to the step that follows checkpoint `checkpoint_id`."""

    thread_id: str
    ns: str
    checkpoint_id: str
    task_id: str
    kind: WriteKind
    payload: str


@dataclass(slots=True)
class JournalEntry:
    """The recorded result of one memoized call made by task `task_id`."""

    thread_id: str
    ns: str
    task_id: str
    key: str
    payload: str


@runtime_checkable
class Checkpointer(Protocol):
    """Durable storage of graph runs. Every method is one transaction."""

    async def put(self, record: CheckpointRecord) -> None:
        """Store a checkpoint (the step barrier: one write per superstep)."""
        ...

    async def put_writes(self, writes: Sequence[WriteRecord]) -> None:
        """Append task writes (several tasks at once)."""
        ...

    async def get(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> CheckpointRecord | None:
        """One checkpoint record (the latest when `checkpoint_id` is None), or None."""
        ...

    async def get_chain(self, thread_id: str, ns: str = "", checkpoint_id: str | None = None) -> list[CheckpointRecord]:
        """The checkpoint (latest when `checkpoint_id` is None) and its ancestors back to the
        nearest keyframe, newest first; `[]` if there is none."""
        ...

    async def list(
        self, thread_id: str, ns: str = "", *, before: str | None = None, limit: int | None = None
    ) -> list[CheckpointRecord]:
        """Checkpoints of a thread (all branches), newest first."""
        ...

    async def get_writes(self, thread_id: str, ns: str, checkpoint_id: str) -> list[WriteRecord]:
        """Writes recorded after `checkpoint_id`, in insertion order."""
        ...

    async def put_journal(self, entry: JournalEntry) -> None:
        """Record one memoized result (first write wins)."""
        ...

    async def get_journal(self, thread_id: str, ns: str, task_id: str) -> dict[str, str]:
        """Memoized results of a task, by key."""
        ...

    async def fork(self, thread_id: str, ns: str, checkpoint_id: str, new_thread_id: str) -> None:
        """Copy a checkpoint (with the ancestors it needs) into a new thread as its latest."""
        ...

    async def delete_thread(self, thread_id: str) -> None:
        """Delete everything stored for a thread, in every namespace."""
        ...

    async def prune(self, *, older_than: float, keep_interrupted: bool = True) -> list[str]:
        """Delete threads whose latest checkpoint was written before `older_than` (a Unix
        time). Threads waiting on a human (pending interrupts) are kept unless told otherwise.
        Returns the deleted thread ids."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


def follow_parents(rows: Sequence[CheckpointRecord], target: CheckpointRecord) -> list[CheckpointRecord]:
    """Walk `target`'s parent links through `rows` (candidates of any branch) to its keyframe."""
    by_id = {r.checkpoint_id: r for r in rows}
    chain = [target]
    cur = target
    while not cur.is_keyframe:
        parent = by_id.get(cur.parent_id or "")
        if parent is None:
            from bastion.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint {cur.checkpoint_id} of thread {cur.thread_id!r} lost its ancestor "
                f"{cur.parent_id}; the store was modified outside Bastion. Fork from a keyframe "
                "or delete the thread"
            )
        chain.append(parent)
        cur = parent
    return chain


class KnownLatest:
    """A thread's latest checkpoint id, read by a caller that holds the thread (a worker, right
    after claiming the run): the graph engine's reads of that thread are then skipped when the
    thread has none, or when the engine's cache holds exactly that one. The engine moves it on
    with each checkpoint it writes on the thread (and caches), so the run's own later reads (an
    agent asks whether a decision is pending, runs, then reads its final state) skip storage too."""

    __slots__ = ("checkpoint_id", "thread_id")

    def __init__(self, thread_id: str, checkpoint_id: str | None) -> None:
        self.thread_id = thread_id
        self.checkpoint_id = checkpoint_id


KNOWN_LATEST: ContextVar[KnownLatest | None] = ContextVar("bastion_known_latest", default=None)


__all__ = [
    "KNOWN_LATEST",
    "CheckpointRecord",
    "Checkpointer",
    "JournalEntry",
    "KnownLatest",
    "WriteKind",
    "WriteRecord",
    "follow_parents",
]
