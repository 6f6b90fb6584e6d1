"""Workers: claim runs with leases, keep them alive with heartbeats, drain on SIGTERM.

A worker killed mid-run simply stops heartbeating; once its lease expires another worker
claims the run and invokes the agent with `recover=True`, which continues from the last
checkpoint (completed steps and journaled tool calls are not repeated).

Whatever a runnable does wrong (a wrong signature, an exception in it or in its event callback,
garbage returned, an output that cannot be stored), its run ends `failed` with the error and a
`run_failed` event, and keeps the trace id of the attempt (`_watchdog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from bastion.runtime._store import DONE_CHANNEL, NOTIFY_CHANNEL, RunStore, run_from_json
from bastion.runtime._types import Run, Runnable, RunOutcome
from bastion.runtime._watchdog import CURRENT, Attempt, check_outcome, describe, start
from bastion.types import new_id

log = logging.getLogger("bastion.runtime")
CLAIM_BATCH = 16  # runs claimed in one query at most (fewer when fewer slots are free)


class Wakeup(Protocol):
    """Tells idle workers that new work may be there (so they need not poll tightly)."""

    async def wait(self, timeout: float) -> None: ...
    def notify(self) -> None: ...


class LocalWakeup:
    """In-process wake-ups for embedded mode."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    def notify(self) -> None:
        self._event.set()


class PostgresWakeup:
    """LISTEN/NOTIFY across processes: the store NOTIFYs `bastion_runs` when a run is queued
    (idle workers wake) and `bastion_runs_done` when one ends (API servers answer waiting
    clients at once instead of polling; `on_done` callbacks get the run id).

    One task holds the listening connection and reads notifications as they arrive, so none is
    lost between a worker's empty claim and its next wait; it reconnects after a database blip
    and then wakes everyone, as notifications sent meanwhile are gone.

    It listens only where someone hears: `bastion_runs` once a `Worker` uses it (or `wait()` is
    called), `bastion_runs_done` when `on_done` has callbacks; with neither known at connect
    time, both. Every NOTIFY is delivered to every backend listening on its channel, so a
    `bastion worker` that also heard each run's end (and an API server each run's creation)
    cost the database and the process a wake-up per run for nothing. Add `on_done` callbacks
    before `start()`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set once LISTEN is active
        self.on_done: list[Callable[[str], None]] = []
        # The run whose end notification is being dispatched, as the notification carried it:
        # an `on_done` callback may take it (`take_ended`) and answer a waiting client without
        # reading the run back. Only during the callbacks: a later waiter reads the store.
        self._ended: Run | None = None
        self._wants_runs = False  # a worker waits on this wake-up
        self._channels: frozenset[str] = frozenset()  # what the open connection listens to

    @property
    def channels(self) -> frozenset[str]:
        """The channels the open connection listens to (empty while not listening)."""
        return self._channels

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen())

    def want_runs(self) -> None:
        """A worker waits on this wake-up: listen for queued runs (reconnecting if the open
        connection does not, which wakes everyone once)."""
        if self._wants_runs:
            return
        self._wants_runs = True
        if self.listening.is_set() and NOTIFY_CHANNEL not in self._channels and self._task is not None:
            self._task.cancel()  # the new connection wakes everyone: nothing sent meanwhile is missed
            self.listening.clear()
            self._channels = frozenset()
            self._task = asyncio.create_task(self._listen())

    def _wanted(self) -> frozenset[str]:
        channels = {NOTIFY_CHANNEL} if self._wants_runs else set()
        if self.on_done:
            channels.add(DONE_CHANNEL)
        return frozenset(channels or (NOTIFY_CHANNEL, DONE_CHANNEL))

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    channels = self._wanted()
                    if NOTIFY_CHANNEL in channels:
                        await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if DONE_CHANNEL in channels:
                        await conn.execute(f"LISTEN {DONE_CHANNEL}")
                    self._channels = channels
                    self.listening.set()
                    self._woken("")
                    async for note in conn.notifies():
                        if note.channel == NOTIFY_CHANNEL:
                            self._event.set()
                        else:
                            self._ended, run_id = self._ended_run(note.payload)
                            try:
                                self._woken(run_id)
                            finally:
                                self._ended = None
            except Exception as e:  # the database went away: polling covers the gap, then listen again
                self.listening.clear()
                self._channels = frozenset()
                log.warning("LISTEN connection lost (%s); reconnecting in 1 s", describe(e))
                await asyncio.sleep(1.0)

    def _ended_run(self, payload: str) -> tuple[Run | None, str]:
        """A `bastion_runs_done` payload: the run id, or the ended run's row as JSON."""
        if not payload.startswith("{"):
            return None, payload
        try:
            run = run_from_json(payload)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("unreadable run-done notification (%s); the run is read from the store", describe(e))
            found = re.search(r'"id"\s*:\s*"([^"]+)"', payload)
            return None, found.group(1) if found else ""
        return run, run.id

    def take_ended(self, run_id: str) -> Run | None:
        """In an `on_done` callback: the run as its end notification carried it, if it did."""
        return self._ended if self._ended is not None and self._ended.id == run_id else None

    def _woken(self, run_id: str) -> None:
        """A run ended (`run_id`), or, with "", anything may have happened while not listening."""
        if not run_id:
            self._event.set()
        for callback in self.on_done:
            try:
                callback(run_id)
            except Exception:
                log.exception("a run-done callback failed")

    async def wait(self, timeout: float) -> None:
        self.want_runs()
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    def notify(self) -> None:
        self._event.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.listening.clear()


class Worker:
    """Runs up to `concurrency` runs at once from `store`, for the agents in `agents`."""

    def __init__(
        self,
        store: RunStore,
        agents: Mapping[str, Runnable],
        *,
        worker_id: str | None = None,
        concurrency: int = 16,
        lease_seconds: float = 30.0,
        poll_interval: float = 2.0,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.store = store
        self.agents = agents
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[:6]}"
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.wakeup: Wakeup = wakeup or LocalWakeup()
        if isinstance(self.wakeup, PostgresWakeup):
            self.wakeup.want_runs()  # before its connection opens, which then listens for runs
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._stopping = asyncio.Event()
        self.completed = 0
        self._running: dict[str, asyncio.Task[RunOutcome]] = {}
        self._cancelled: set[str] = set()
        self.done_callbacks: list[Any] = []  # called with the run id when an attempt ends
        self.memory: Any = None  # a memory store whose search indexes warm up when `run()` starts
        self._warming: asyncio.Task[None] | None = None

    @staticmethod
    async def _warm(memory: Any) -> None:
        warm = getattr(memory, "warm", None)
        if warm is not None:
            try:
                await warm()  # loads in a thread; a search meanwhile waits for its own tenant only
            except Exception:
                log.exception("warming the memory search indexes failed; searches load them on demand")

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and execute runs until `stop()`; then wait for in-flight runs (drain). The
        `memory` store's search indexes warm up meanwhile; runs do not wait for them."""
        self._warming = asyncio.create_task(self._warm(self.memory))
        while not self._stopping.is_set():
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                break
            free = 1
            while free < CLAIM_BATCH and not self._slots.locked():  # free slots: claim a burst at once
                await self._slots.acquire()
                free += 1
            try:
                runs = await self.store.claim_many(self.id, self.lease_seconds, free)
            except Exception:
                for _ in range(free):
                    self._slots.release()
                log.exception("claiming a run failed; retrying")
                await self._idle()
                continue
            for _ in range(free - len(runs)):
                self._slots.release()
            for run in runs:
                task = asyncio.create_task(self._execute(run))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if len(runs) < free:
                # The queue held fewer runs than free slots: it is empty now, so wait for the next
                # wake-up instead of claiming again at once (an empty claim per run, doubling the
                # claims at low load). A run queued meanwhile has set the wake-up already: the
                # wait returns at once.
                await self._idle()
        await self.drain()

    async def _idle(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self.wakeup.wait(self.poll_interval))
        await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
        for t in (stop, wake):
            t.cancel()
        await asyncio.gather(stop, wake, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()
        self.wakeup.notify()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop claiming and let in-flight runs finish (drain)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    def cancel_local(self, run_id: str) -> bool:
        """Cancel a run this worker is executing right now (other workers notice at their heartbeat)."""
        task = self._running.get(run_id)
        if task is None:
            return False
        self._cancelled.add(run_id)
        task.cancel()
        return True

    # -- one run ------------------------------------------------------------------------------

    async def _execute(self, run: Run) -> None:
        try:
            await self._execute_inner(run)
        except Exception as e:
            # The watchdog of last resort: whatever broke (the store included), the run must not
            # stay `running` until its lease expires and another worker meets the same bug.
            log.exception("run %s: the worker failed while executing it", run.id)
            await self._finish(run, None, f"the worker failed while executing this run: {describe(e)}", None)
        finally:
            self._slots.release()
            for cb in self.done_callbacks:
                try:
                    cb(run.id)
                except Exception:
                    log.exception("a done callback failed for run %s", run.id)

    async def _execute_inner(self, run: Run) -> None:
        agent = self.agents.get(run.agent)
        if agent is None:
            await self.store.finish(run.id, self.id, None, f"unknown agent {run.agent!r}; register it on the worker")
            return
        attempt = Attempt()
        events = EventBuffer(self.store, run.id)
        try:
            work = await self._start(run, agent, attempt, events)
        except Exception as e:  # a broken runnable (signature, latest_checkpoint, not a coroutine)
            log.warning("run %s could not start: %s", run.id, describe(e))
            await events.drain()
            await self._finish(run, None, describe(e), attempt.trace_id)
            return
        self._running[run.id] = work
        try:
            lease = await self._keep_lease(run, work)
        finally:
            self._running.pop(run.id, None)
        if run.id in self._cancelled:
            self._cancelled.discard(run.id)
            lease = "cancel"
        if lease != "ok":
            await events.drain()  # the run's events are stored before its final one
        if lease == "lost":
            log.warning("lost the lease on run %s; another worker owns it now", run.id)
            return
        if lease == "cancel":
            await self.store.finish(run.id, self.id, None, "cancelled on request", cancelled=True)
            return
        # The events not written yet go with the run's end, in its transaction (one write less).
        unstored, last = await events.rest()
        outcome: RunOutcome | None = None
        error: str | None = None
        try:
            outcome = check_outcome(work.result(), run.agent)
        except Exception as e:  # anything the runnable (or its callbacks) raised, or garbage it returned
            error = describe(e)
            log.warning("run %s failed: %s", run.id, error)
        if unstored is not None:
            last = []  # after a lost write, none of the later events: the history has no holes
            if error is None:
                outcome, error = None, f"the run's events could not be stored: {describe(unstored)}"
        if outcome is not None and outcome.trace_id is None:
            outcome.trace_id = attempt.trace_id
        if await self._finish(run, outcome, error, attempt.trace_id, last):
            self.completed += 1

    async def _start(
        self, run: Run, agent: Runnable, attempt: Attempt, events: EventBuffer | None = None
    ) -> asyncio.Task[RunOutcome]:
        events = events or EventBuffer(self.store, run.id)
        recover = run.attempts > 1
        if recover:
            await events.emit("recovered", {"worker": self.id, "attempt": run.attempts})
        emit = events.emit
        latest = getattr(agent, "latest_checkpoint", None)
        known: tuple[Any, Any] | None = None
        if not recover and run.resume is None and latest is not None:
            # Remember where the thread stood, so a crash before this run's first checkpoint
            # is recovered by starting over rather than by resuming an older run's state. A
            # thread opened for this run has no state yet: nothing to read.
            run.checkpoint_before = None if run.opened_thread else await latest(run.thread_key)
            if run.checkpoint_before is not None:  # a new thread: the column is NULL already
                await self.store.update(run.id, checkpoint_before=run.checkpoint_before)
            # ...and tell the graph engine: it need not read the thread again (this run holds it).
            # (Imported here: a runnable with checkpoints has loaded them already.)
            from bastion.checkpoint import KNOWN_LATEST, KnownLatest

            known = (KNOWN_LATEST, KNOWN_LATEST.set(KnownLatest(run.thread_key, run.checkpoint_before)))
        await emit("run_started", {"worker": self.id, "attempt": run.attempts})
        token = CURRENT.set(attempt)  # the task copies the context: the runnable can report its trace
        try:
            invoked = start(
                agent.invoke, run.agent, input=run.input, thread_id=run.thread_key, context=run.context(),
                resume=run.resume, recover=recover, emit=emit, checkpoint_before=run.checkpoint_before,
            )  # fmt: skip
            task = asyncio.create_task(_awaited(invoked))
        finally:
            CURRENT.reset(token)
            if known is not None:
                known[0].reset(known[1])
        # Cancelled before its first step, the wrapper never awaits `invoked`: close it, so it is
        # not reported as a coroutine that was never awaited.
        task.add_done_callback(lambda _: _close(invoked))
        return task

    async def _finish(
        self,
        run: Run,
        outcome: RunOutcome | None,
        error: str | None,
        trace_id: str | None,
        events: Sequence[tuple[str, str, float]] = (),
    ) -> bool:
        """Record the attempt's end (with `events`, its last ones). An outcome the store cannot
        record (output that does not serialise, say) fails the run instead; if even that fails,
        the lease expiring hands the run to recovery."""
        try:
            return await self.store.finish(run.id, self.id, outcome, error, trace_id=trace_id, events=events)
        except Exception as e:
            if outcome is None:
                log.exception("could not record the failure of run %s", run.id)
                return False
            problem = describe(e)
            log.warning("could not record the outcome of run %s: %s", run.id, problem)
        try:
            # The events are JSON text already: they are kept, as when they were written before.
            return await self.store.finish(
                run.id,
                self.id,
                None,
                f"the run's outcome could not be recorded: {problem}",
                trace_id=trace_id,
                events=events,
            )
        except Exception:
            log.exception("could not record the failure of run %s", run.id)
            return False

    async def _keep_lease(self, run: Run, work: asyncio.Task[RunOutcome]) -> str:
        """Heartbeat until `work` ends; cancel it if the lease is lost or a cancel is requested."""
        every = self.lease_seconds / 3
        while True:
            done, _ = await asyncio.wait({work}, timeout=every)
            if done:
                if work.cancelled():
                    return "cancel"
                return "ok"
            try:
                state = await self.store.heartbeat(run.id, self.id, self.lease_seconds)
            except Exception as e:  # a database blip: try again next beat; a lease that expires meanwhile reads "lost"
                log.warning("heartbeat for run %s failed: %s", run.id, describe(e))
                continue
            if state != "ok":
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return state


class EventBuffer:
    """A run's events, written behind: `emit` serialises at once (a payload that cannot be
    stored fails the run right there, in the runnable) and returns; one flusher per run writes
    whatever accumulated meanwhile in one statement, in order. A run with three node updates
    costs one or two writes instead of three, and what is left when the run ends goes with its
    end, in the same transaction (`rest`). The flusher starts at once, not after a delay: an
    event is stored about when the step it reports is checkpointed, so a worker killed after
    the checkpoint does not take the event with it (recovery resumes after that step and does
    not emit it again)."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._pending: list[tuple[str, str, float]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        self._pending.append((kind, json.dumps(data, default=str), time.time()))
        if self._flusher is None or self._flusher.done():
            if self._flusher is not None:
                self._flusher.result()  # a failed write surfaces in the run, not silently
            if not self._closing:
                self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending and not self._closing:
            batch, self._pending = self._pending, []
            await self.store.add_events(self.run_id, batch)

    async def rest(self) -> tuple[BaseException | None, list[tuple[str, str, float]]]:
        """Stop writing: wait for the write in flight, and return its error (the run then fails)
        and the events not written yet, for the run's final transaction."""
        self._closing = True
        error = await self.drain()
        rest, self._pending = self._pending, []
        return error, rest

    async def drain(self) -> BaseException | None:
        """Wait for every write; returns the error of a failed one (the run then fails)."""
        if self._flusher is None:
            return None
        try:
            await self._flusher
        except Exception as e:
            return e
        return None


def _close(awaitable: Awaitable[RunOutcome]) -> None:
    if inspect.iscoroutine(awaitable):
        awaitable.close()  # a no-op once it has finished


async def _awaited(awaitable: Awaitable[RunOutcome]) -> RunOutcome:
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as e:
        # Raised by code inside a run (a node calling sys.exit()), not by a signal: asyncio would
        # let it stop the whole server. It fails this run instead.
        raise RuntimeError(f"the run raised {type(e).__name__}({e})") from e
