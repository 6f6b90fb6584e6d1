"""The runtime facade used by the server and the CLI: create, wait, stream, cancel and resume runs.

Embedded mode: one process, SQLite, in-process workers (`Runtime.embedded(...)`).
Scale-out mode: API servers and `bastion worker` processes share PostgreSQL; API servers
create runs and read results, workers claim and execute them (`Runtime.postgres(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, UserError
from bastion.runtime._store import RunStore, SqlRunStore, new_run
from bastion.runtime._types import TERMINAL, MultitaskStrategy, Run, Runnable, thread_key
from bastion.runtime._worker import LocalWakeup, PostgresWakeup, Wakeup, Worker

# The event each way a run ends or pauses writes with its final status (`RunStore.finish`).
_FINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled", "run_interrupted"})


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until `event` is set or `timeout` passes (no task of its own, unlike `wait_for`)."""
    if event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class RunConflictError(UserError):
    """The thread already has an active run and the strategy is `reject`."""


class RunNotFoundError(UserError):
    """No such run for this tenant."""


class ThreadNotFoundError(UserError):
    """No such thread (or checkpoint of it) for this tenant. Another tenant's thread is reported
    the same way as one that does not exist, so ids cannot be probed."""


class Runtime:
    def __init__(
        self,
        store: RunStore,
        agents: Mapping[str, Runnable] | None = None,
        *,
        workers: int = 1,
        worker_concurrency: int = 64,
        lease_seconds: float = 30.0,
        multitask: MultitaskStrategy = "reject",
        wakeup: Wakeup | None = None,
    ) -> None:
        self.store = store
        self.agents: dict[str, Runnable] = dict(agents or {})
        self.multitask: MultitaskStrategy = multitask
        self.wakeup: Wakeup = wakeup or LocalWakeup()
        self._n_workers = workers
        self._worker_concurrency = worker_concurrency
        self._lease_seconds = lease_seconds
        self.workers: list[Worker] = []
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._finished: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # run id -> clients in `wait`
        self._ended: dict[str, Run] = {}  # runs that ended while a client waited, as notified

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def embedded(cls, path: str | Path, agents: Mapping[str, Runnable] | None = None, **kw: Any) -> Runtime:
        return cls(SqlRunStore.sqlite(path), agents, **kw)

    @classmethod
    def postgres(cls, url: str, agents: Mapping[str, Runnable] | None = None, **kw: Any) -> Runtime:
        kw.setdefault("wakeup", PostgresWakeup(url))
        return cls(SqlRunStore.postgres(url), agents, **kw)

    def register(self, name: str, agent: Runnable) -> None:
        self.agents[name] = agent

    async def start(self) -> None:
        on_done = getattr(self.wakeup, "on_done", None)
        if on_done is not None and self._on_done not in on_done:
            on_done.append(self._on_done)  # runs that other processes finish wake our waiters
        begin = getattr(self.wakeup, "start", None)
        if begin is not None:
            begin()
        for _ in range(self._n_workers):
            worker = Worker(
                self.store,
                self.agents,
                concurrency=self._worker_concurrency,
                lease_seconds=self._lease_seconds,
                wakeup=self.wakeup,
            )
            worker.done_callbacks.append(self._on_done)
            self.workers.append(worker)
            self._worker_tasks.append(asyncio.create_task(worker.run()))

    async def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*self._worker_tasks, return_exceptions=True)
        self.workers.clear()
        self._worker_tasks.clear()
        close = getattr(self.wakeup, "close", None)
        if close is not None:
            await close()
        await self.store.close()

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _pushed(self) -> bool:
        """Whether every run's end wakes `wait` (so it need not poll): embedded with workers
        here, or a LISTEN connection that is up."""
        listening = getattr(self.wakeup, "listening", None)
        if isinstance(listening, asyncio.Event):
            return listening.is_set()
        return isinstance(self.wakeup, LocalWakeup) and bool(self.workers)

    def _on_done(self, run_id: str) -> None:
        """An attempt of `run_id` ended; "" means any run may have (notifications were missed)."""
        if not run_id:
            for event in self._finished.values():
                event.set()
            return
        event = self._finished.pop(run_id, None)  # waiters hold their own reference
        if event is not None:
            take = getattr(self.wakeup, "take_ended", None)
            ended = take(run_id) if take is not None and run_id in self._waiting else None
            if ended is not None:  # (PostgreSQL) the waiter need not read the run back
                self._ended[run_id] = ended
            event.set()

    # -- runs ---------------------------------------------------------------------------------

    async def create_run(
        self,
        *,
        tenant: str,
        agent: str,
        input: Any,
        thread_id: str | None = None,
        user: str | None = None,
        metadata: dict[str, Any] | None = None,
        multitask: MultitaskStrategy | None = None,
    ) -> Run:
        if agent not in self.agents:
            raise UserError(f"unknown agent {agent!r}; registered agents: {sorted(self.agents)}")
        strategy = multitask or self.multitask
        if thread_id is not None:
            active = await self.store.active_for_thread(tenant, thread_id)
            if active:
                if strategy == "reject":
                    raise RunConflictError(
                        f"thread {thread_id!r} already has an active run ({active[0].id}, {active[0].status}); "
                        "wait for it, cancel it, or send multitask_strategy=enqueue|interrupt|rollback"
                    )
                if strategy in ("interrupt", "rollback"):
                    for run in active:
                        await self.cancel(run.id, tenant=tenant)
                if strategy == "rollback":
                    await self._rollback(tenant, thread_id, active)
        run = new_run(tenant=tenant, thread_id=thread_id, agent=agent, input=input, user=user, metadata=metadata)
        self._finished[run.id] = asyncio.Event()
        await self.store.create(run, thread_metadata=metadata or {})  # with the thread and the run_queued event
        self.wakeup.notify()
        return run

    async def _rollback(self, tenant: str, thread_id: str, cancelled: list[Run]) -> None:
        """Undo what the cancelled runs wrote: restore the thread to where the earliest of them
        started (its `checkpoint_before`, recorded by the worker). Runs that never started wrote
        nothing and need nothing undone."""
        started = [r for r in cancelled if r.attempts > 0]
        if not started:
            return
        for run in started:  # bounded: a cancelled run stops at its next await, or at its lease
            await self.wait(run.id, tenant=tenant, timeout=self._lease_seconds + 5)
        first = min(started, key=lambda r: r.created_at)
        fresh = await self.get_run(first.id, tenant=tenant)
        agent = self.agents.get(first.agent)
        restore = getattr(agent, "rollback", None)
        if restore is None:
            raise UserError(
                f"agent {first.agent!r} cannot roll a thread back (its runnable has no rollback()); "
                "use multitask_strategy=interrupt"
            )
        await restore(thread_key(tenant, thread_id), fresh.checkpoint_before)
        await self.store.add_event(first.id, "run_rolled_back", {"to_checkpoint": fresh.checkpoint_before})

    async def get_run(self, run_id: str, *, tenant: str) -> Run:
        run = await self.store.get(run_id, tenant)
        if run is None:
            raise RunNotFoundError(f"run {run_id!r} not found for this tenant")
        return run

    async def wait(self, run_id: str, *, tenant: str, timeout: float = 60.0) -> Run:
        """Wait until the run completes, fails, is cancelled or waits for a human (bounded)."""
        deadline = time.monotonic() + timeout
        # With completions pushed to us (in-process workers, or PostgreSQL's NOTIFY) polling is
        # only a safety net; otherwise it is how we learn, so start fast and back off.
        delay = 0.25 if self._pushed() else 0.005
        # A run created here was certainly not done a moment ago: wait for its wake-up before
        # the first read. Completions wake us at once (local workers, or PostgreSQL's NOTIFY);
        # polling with backoff is the fallback for anything that was missed.
        created_here = run_id in self._finished
        self._waiting[run_id] = self._waiting.get(run_id, 0) + 1
        try:
            return await self._wait(run_id, tenant, deadline, delay, created_here, timeout)
        finally:
            left = self._waiting.pop(run_id) - 1
            if left:
                self._waiting[run_id] = left
            else:
                self._ended.pop(run_id, None)

    async def _wait(
        self, run_id: str, tenant: str, deadline: float, delay: float, created_here: bool, timeout: float
    ) -> Run:
        while True:
            event = self._finished.setdefault(run_id, asyncio.Event())
            if created_here:
                created_here = False
                await _wait_event(event, min(delay, timeout))
                event.clear()
                event = self._finished.setdefault(run_id, asyncio.Event())
            ended = self._ended.pop(run_id, None)
            if ended is not None and ended.tenant == tenant:
                run = ended
            else:
                run = await self.get_run(run_id, tenant=tenant)
            if run.status in TERMINAL or run.status == "interrupted":
                self._finished.pop(run_id, None)
                return run
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"run {run_id} still {run.status} after {timeout}s")
            await _wait_event(event, min(delay, remaining))
            event.clear()  # woken without an end (a lost lease, a LISTEN reconnect): wait again
            delay = min(delay * 2, 0.25)

    async def run(self, *, tenant: str, agent: str, input: Any, timeout: float = 60.0, **kw: Any) -> Run:
        run = await self.create_run(tenant=tenant, agent=agent, input=input, **kw)
        return await self.wait(run.id, tenant=tenant, timeout=timeout)

    async def stream(
        self, run_id: str, *, tenant: str, after: int = 0, timeout: float = 300.0
    ) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
        """Yield the run's events (seq, kind, data) until it ends or pauses (bounded by `timeout`)."""
        await self.get_run(run_id, tenant=tenant)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            ended = self._finished.setdefault(run_id, asyncio.Event())  # before reading: no end is missed
            events = await self.store.events(run_id, after)
            for seq, kind, data in events:
                after = seq
                yield seq, kind, data
            if events:
                delay = 0.01
                if events[-1][1] in _FINAL_EVENTS:
                    # A run's final event is written with its final status, and anything it does
                    # later (a resume) comes after it: the latest event says the run has ended.
                    self._finished.pop(run_id, None)
                    return
            run = await self.get_run(run_id, tenant=tenant)
            if run.status in TERMINAL or run.status == "interrupted":
                self._finished.pop(run_id, None)
                for seq, kind, data in await self.store.events(run_id, after):
                    yield seq, kind, data
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.status} after {timeout}s of streaming")
            # The run's end wakes us at once; its events in between are polled.
            await _wait_event(ended, delay)
            ended.clear()
            delay = min(delay * 2, 0.2)

    async def cancel(self, run_id: str, *, tenant: str) -> Run:
        run = await self.get_run(run_id, tenant=tenant)
        if run.status in TERMINAL:
            return run
        if run.status in ("queued", "interrupted"):
            await self.store.update(run_id, status="cancelled", cancel_requested=True)
            await self.store.add_event(run_id, "run_cancelled", {})
            self._on_done(run_id)
        else:
            await self.store.update(run_id, cancel_requested=True)
            for worker in self.workers:
                worker.cancel_local(run_id)
            event = self._finished.setdefault(run_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):  # bounded: remote workers notice at their heartbeat
                await asyncio.wait_for(event.wait(), 1.0)
        return await self.get_run(run_id, tenant=tenant)

    async def resume(self, run_id: str, *, tenant: str, decision: Any) -> Run:
        """Answer a run's pending interrupt(s) (approve / edit / reject ...) and queue it again."""
        run = await self.get_run(run_id, tenant=tenant)
        if run.status != "interrupted":
            raise UserError(f"run {run_id} is {run.status}, not waiting for a decision; nothing to resume")
        # attempts restart at 0 so the worker treats this as a resume, not crash recovery
        await self.store.update(run_id, resume=decision, status="queued", attempts=0)
        await self.store.add_event(run_id, "run_resumed", {"decision": decision})
        self._finished[run_id] = asyncio.Event()
        self.wakeup.notify()
        return await self.get_run(run_id, tenant=tenant)

    async def prune(self, *, older_than: float, tenant: str | None = None) -> list[tuple[str, str]]:
        """Retention: delete threads idle since `older_than` (epoch seconds) — their runs, events
        and the agents' checkpoints. Threads with a queued, running or interrupted run (a pending
        approval) are kept. Returns the (tenant, thread) pairs deleted."""
        deleted: list[tuple[str, str]] = []
        for tenant_id, thread_id, agents in await self.store.idle_threads(older_than, tenant):
            for name in agents:
                forget = getattr(self.agents.get(name), "forget", None)
                if forget is not None:
                    await forget(thread_key(tenant_id, thread_id))
            await self.store.delete_thread(tenant_id, thread_id)
            deleted.append((tenant_id, thread_id))
        return deleted

    # -- threads ------------------------------------------------------------------------------

    async def _require_thread(self, tenant: str, thread_id: str) -> None:
        if not await self.store.has_thread(tenant, thread_id):
            raise ThreadNotFoundError(f"thread {thread_id!r} not found for this tenant")

    async def delete_thread(self, thread_id: str, *, tenant: str) -> None:
        """Delete a thread and everything stored for it: its runs and events, every agent's
        checkpoints and step journal for it, and its pending approvals (the interrupted runs are
        cancelled first, so a decision arriving meanwhile finds nothing to resume). The next run
        on the same id starts empty. Refused (`RunConflictError`) while a run is queued or running."""
        await self._require_thread(tenant, thread_id)
        active = await self.store.active_for_thread(tenant, thread_id)
        busy = [r for r in active if r.status != "interrupted"]
        if busy:
            raise RunConflictError(
                f"thread {thread_id!r} has an active run ({busy[0].id}, {busy[0].status}); cancel it first"
            )
        for run in active:
            await self.store.update(run.id, status="cancelled", cancel_requested=True)
            self._on_done(run.id)
        key = thread_key(tenant, thread_id)
        # Every agent, not only those with runs on record: state must not outlive the thread
        # even if its run rows went first (retention, or a delete before this existed).
        for agent in self.agents.values():
            forget = getattr(agent, "forget", None)
            if forget is not None:
                await forget(key)
        await self.store.delete_thread(tenant, thread_id)

    async def _agents_of(self, tenant: str, thread_id: str) -> list[str]:
        """Agents that may hold the thread's state: those that ran in it first, then the others
        (a fork has state before it has runs)."""
        ran = [n for n in await self.store.thread_agents(tenant, thread_id) if n in self.agents]
        return ran + sorted(n for n in self.agents if n not in ran)

    async def thread_history(self, thread_id: str, *, tenant: str) -> list[dict[str, Any]]:
        """The thread's checkpoints, newest first per agent:
        `{"agent", "checkpoint_id", "parent_id", "step", "created_at"}`. Agents sharing one
        checkpointer share the thread's state; each checkpoint is listed once."""
        await self._require_thread(tenant, thread_id)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for name in await self._agents_of(tenant, thread_id):
            history = getattr(self.agents[name], "history", None)
            if history is None:
                continue
            for item in await history(thread_key(tenant, thread_id)):
                if item["checkpoint_id"] not in seen:
                    seen.add(item["checkpoint_id"])
                    out.append({"agent": name, **item})
        return out

    async def fork_thread(
        self, thread_id: str, *, tenant: str, checkpoint_id: str | None = None, new_thread_id: str | None = None
    ) -> str:
        """Copy the thread's state (at `checkpoint_id`, else its latest) into a new thread of the
        same tenant; returns the new thread's id. Time travel: runs on the fork continue from there."""
        from bastion.types import new_sortable_id

        await self._require_thread(tenant, thread_id)
        target = new_thread_id or new_sortable_id("thread_")
        if await self.store.has_thread(tenant, target):
            raise RunConflictError(f"thread {target!r} already exists; fork into a new thread id")
        copied = False
        for name in await self._agents_of(tenant, thread_id):
            fork = getattr(self.agents[name], "fork", None)
            if fork is not None:
                copied = await fork(thread_key(tenant, thread_id), checkpoint_id, thread_key(tenant, target)) or copied
        if checkpoint_id is not None and not copied:
            raise ThreadNotFoundError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r} for this tenant")
        await self.store.upsert_thread(tenant, target, {"forked_from": thread_id, "checkpoint_id": checkpoint_id})
        return target

    async def list_runs(self, *, tenant: str, **filters: Any) -> list[Run]:
        return await self.store.list(tenant, **filters)


__all__ = ["BastionError", "RunConflictError", "RunNotFoundError", "Runtime", "ThreadNotFoundError"]
