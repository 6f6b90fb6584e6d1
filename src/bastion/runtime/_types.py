"""Runs: the unit of work of the runtime, and what a runnable agent returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote

from bastion.types import RunContext

RunStatus = Literal["queued", "running", "interrupted", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"queued", "running", "interrupted"})

MultitaskStrategy = Literal["reject", "enqueue", "interrupt", "rollback"]
"""What to do with new input for a thread that already has an active run:
reject it (409), enqueue it behind the active run, interrupt (cancel) the active run and start
the new one, or roll back: cancel the active run, restore the thread to its state before that
run, then start the new one."""


def thread_key(tenant: str, thread_id: str) -> str:
    """Where a tenant's thread lives in storage (checkpoints, their namespaces, the step journal,
    pending interrupts): `<tenant>/<thread_id>`. Clients choose thread ids, so two tenants may name
    the same one; the key keeps them apart. Both parts are percent-encoded, so a key has exactly
    one `/`: no (tenant, thread) pair can spell another's key, nor the keys derived from one
    (a sub-agent's `<key>/<call>`, a rollback's `<key>/~rollback`). The only place it is derived."""
    return f"{quote(tenant, safe='')}/{quote(thread_id, safe='')}"


def opened_thread_id(run_id: str) -> str:
    """The thread a run opens when it names none: `run_<x>` opens `thread_<x>`."""
    return "thread_" + run_id.removeprefix("run_")


@dataclass(slots=True)
class Run:
    id: str
    tenant: str
    thread_id: str
    agent: str
    status: RunStatus
    input: Any
    output: Any = None
    error: str | None = None
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    resume: Any = None  # the human's decision(s) for a resumed run
    attempts: int = 0
    worker: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    trace_id: str | None = None
    checkpoint_before: str | None = None  # thread checkpoint when the run started (for rollback)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def thread_key(self) -> str:
        """The thread's storage key (see `thread_key`): what the runnable is given as `thread_id`."""
        return thread_key(self.tenant, self.thread_id)

    @property
    def opened_thread(self) -> bool:
        """Whether this run's thread was made for it (no `thread_id` given): such a thread is
        named after the run (`run_<x>` opens `thread_<x>`), so it has no state before this run. A
        later run on the same thread has an id of its own, and run ids are random: no client can
        name a thread this way ahead of its run."""
        return self.thread_id == opened_thread_id(self.id)

    def context(self) -> RunContext:
        return RunContext(tenant=self.tenant, user=self.user, session=self.thread_id, run_id=self.id, agent=self.agent)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(slots=True)
class RunOutcome:
    """What a runnable returns: finished, or paused waiting for humans."""

    status: Literal["completed", "interrupted"]
    output: Any = None
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    trace_id: str | None = None


EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]
"""`await emit(kind, data)`: progress events a runnable reports (tokens, tool calls, node ends)."""


class Runnable(Protocol):
    """An agent (or compiled graph) the runtime can drive. Adapters exist for `Agent` and graphs.

    `invoke` must be resumable: called again for the same thread after a crash (`recover=True`)
    it continues from the last checkpoint instead of starting over, and with `resume` it feeds
    the human's decision to the pending interrupt(s). `checkpoint_before` is the thread's latest
    checkpoint when this run first started (from `latest_checkpoint`, if the runnable has it):
    a recovered run that never got past it starts again from its input.

    `thread_id` is the thread's storage key, already scoped by tenant (`thread_key`); the id the
    client chose is `context.session`. The optional methods (`latest_checkpoint`, `forget`,
    `rollback`, `history`, `fork`) receive storage keys too.
    """

    async def invoke(
        self,
        input: Any,
        *,
        thread_id: str,
        context: RunContext,
        resume: Any = None,
        recover: bool = False,
        emit: EventSink | None = None,
        checkpoint_before: str | None = None,
    ) -> RunOutcome: ...
