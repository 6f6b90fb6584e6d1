"""The runnable graph: invoke, stream, inspect and edit threads, time travel."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterator, Mapping
from typing import Any, Generic

from bastion._sync import run_sync
from bastion.checkpoint import Checkpointer
from bastion.errors import UserError
from bastion.graph._pregel import FAILED_AT, Engine, Run, Sink
from bastion.graph._types import END, START, Command, GraphEvent, StateSnapshot, StateT
from bastion.types import RunContext, new_sortable_id

GraphInput = Mapping[str, Any] | Command[Any] | None
"""Besides a state instance: a dict of updates, `None` (continue) or `Command(resume=...)`."""


class CompiledGraph(Generic[StateT]):
    """A compiled graph. Async methods are the core; `invoke`/`get_state`/... are sync wrappers.

    With a checkpointer and a `thread_id`, every superstep is persisted: a run that fails, is
    interrupted or whose process dies continues with `ainvoke(None, thread_id=...)`.
    `Graph(State).compile()` is a `CompiledGraph[State]`: `invoke` returns a `State`.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine  # the structure and the superstep loop; not part of the API

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def checkpointer(self) -> Checkpointer | None:
        """Where the threads of this graph are stored (None: runs are not durable)."""
        return self._engine.checkpointer

    # --- running -----------------------------------------------------------------------------

    def _output(self, run: Run) -> Any:
        out = self._engine.schema.output(run.values)
        pending = run.pending_interrupts()
        if pending and isinstance(out, dict):
            out["__interrupt__"] = pending
        return out

    async def ainvoke(
        self,
        input: StateT | GraphInput,
        *,
        thread_id: str | None = None,
        context: RunContext | None = None,
        checkpoint_id: str | None = None,
        step_limit: int | None = None,
    ) -> StateT:
        """Run until the graph finishes or pauses; return the final state.

        `input`: a dict of updates (or a state instance) to start a turn, `None` to continue a
        paused/failed thread, or `Command(resume=...)` to answer interrupts. For dict states a
        paused run's result carries the pending interrupts under `"__interrupt__"`.
        """
        run = await self._execute_top(input, thread_id, context, checkpoint_id, step_limit, None)
        return self._output(run)

    def invoke(
        self,
        input: StateT | GraphInput,
        *,
        thread_id: str | None = None,
        context: RunContext | None = None,
        checkpoint_id: str | None = None,
        step_limit: int | None = None,
    ) -> StateT:
        """Sync wrapper of `ainvoke` (refuses inside a running event loop)."""
        return run_sync(
            self.ainvoke(
                input, thread_id=thread_id, context=context, checkpoint_id=checkpoint_id, step_limit=step_limit
            )
        )

    async def _execute_top(
        self,
        input: Any,
        thread_id: str | None,
        context: RunContext | None,
        checkpoint_id: str | None,
        step_limit: int | None,
        sink: Sink | None,
    ) -> Run:
        try:
            return await self._engine.execute(
                input,
                checkpointer=self._engine.checkpointer,
                thread_id=thread_id,
                context=context,
                sink=sink,
                checkpoint_id=checkpoint_id,
                step_limit=step_limit,
            )
        except Exception as e:
            # A node's failure was already streamed with its node and task; report the rest
            # (routing, step limits, a checkpointer failing) here, without a node.
            if sink is not None and getattr(e, FAILED_AT, None) is None:
                sink(GraphEvent("error", None, e))
            raise

    async def astream(
        self,
        input: StateT | GraphInput,
        *,
        thread_id: str | None = None,
        context: RunContext | None = None,
        checkpoint_id: str | None = None,
        step_limit: int | None = None,
        kinds: Collection[str] | None = None,
    ) -> AsyncGenerator[GraphEvent, None]:
        """Run like `ainvoke`, yielding events as they happen: node_start, node_end, update,
        token / tool_call (from `emit()` in nodes), interrupt, checkpoint, error, done.

        `kinds` filters the event kinds. A failure is yielded as an `error` event and then
        raised. Leaving the loop early cancels the run (resumable from its last checkpoint).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GraphEvent | None] = asyncio.Queue()
        loop_thread = threading.get_ident()
        wanted = frozenset(kinds) if kinds is not None else None

        def sink(ev: GraphEvent) -> None:
            if wanted is not None and ev.kind not in wanted:
                return
            if threading.get_ident() == loop_thread:
                queue.put_nowait(ev)
            else:  # emit() from a sync node running in a worker thread
                loop.call_soon_threadsafe(queue.put_nowait, ev)

        async def drive() -> Run:
            run = await self._execute_top(input, thread_id, context, checkpoint_id, step_limit, sink)
            sink(GraphEvent("done", None, self._output(run), run.step, ""))
            return run

        task = loop.create_task(drive())
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                ev = await queue.get()
                if ev is None:
                    break
                yield ev
            await task
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:
                    pass

    def stream(
        self,
        input: StateT | GraphInput,
        *,
        thread_id: str | None = None,
        context: RunContext | None = None,
        checkpoint_id: str | None = None,
        step_limit: int | None = None,
        kinds: Collection[str] | None = None,
    ) -> Iterator[GraphEvent]:
        """Sync wrapper of `astream`: the run goes on a private event loop in a worker thread and
        events are handed over as they happen. Leaving the loop early cancels the run."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise UserError("stream() was called inside a running event loop; use `async for ... in app.astream(...)`")
        handoff: queue.SimpleQueue[GraphEvent | BaseException | None] = queue.SimpleQueue()
        stop = threading.Event()
        running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]]] = []

        async def pump() -> None:
            task = asyncio.current_task()
            assert task is not None
            running.append((asyncio.get_running_loop(), task))
            events = self.astream(
                input,
                thread_id=thread_id,
                context=context,
                checkpoint_id=checkpoint_id,
                step_limit=step_limit,
                kinds=kinds,
            )
            try:
                async for ev in events:
                    if stop.is_set():  # the consumer left: closing the stream cancels the run
                        break
                    handoff.put(ev)
            finally:
                await events.aclose()

        def worker() -> None:
            try:
                asyncio.run(pump())
                handoff.put(None)
            except BaseException as e:  # handed to the consumer, re-raised there
                handoff.put(e)

        thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,), daemon=True)
        thread.start()
        try:
            while True:
                item = handoff.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            if running and thread.is_alive():  # the consumer left early: cancel the run now
                loop, task = running[0]
                with contextlib.suppress(RuntimeError):  # the loop may have just finished
                    loop.call_soon_threadsafe(task.cancel)
            thread.join()

    # --- inspecting threads ------------------------------------------------------------------

    def _require_cp(self) -> Checkpointer:
        if self._engine.checkpointer is None:
            raise UserError("this needs durable state: compile the graph with checkpointer=...")
        return self._engine.checkpointer

    async def aget_state(self, thread_id: str, checkpoint_id: str | None = None) -> StateSnapshot[StateT]:
        """The thread's state at its latest (or the given) checkpoint, with pending interrupts."""
        cp = self._require_cp()
        engine = self._engine
        decoded = await engine.decoded(cp, thread_id, "", checkpoint_id)
        if decoded is None:
            if checkpoint_id is not None:
                raise UserError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
            return StateSnapshot(engine.schema.view({}), (), (), None, None, thread_id, 0, None, "none")
        return await engine.snapshot(cp, thread_id, decoded)

    def get_state(self, thread_id: str, checkpoint_id: str | None = None) -> StateSnapshot[StateT]:
        return run_sync(self.aget_state(thread_id, checkpoint_id))

    async def aget_state_history(
        self, thread_id: str, *, limit: int | None = None
    ) -> AsyncIterator[StateSnapshot[StateT]]:
        """Every checkpoint of the thread (all branches), newest first."""
        from bastion.checkpoint.format import decode_history

        cp = self._require_cp()
        rows = await cp.list(thread_id, "")
        states = decode_history(rows, self._engine.schema.log_channels)
        for rec in rows if limit is None else rows[:limit]:
            yield await self._engine.snapshot(cp, thread_id, states[rec.checkpoint_id])

    def get_state_history(self, thread_id: str, *, limit: int | None = None) -> list[StateSnapshot[StateT]]:
        async def collect() -> list[StateSnapshot[StateT]]:
            return [s async for s in self.aget_state_history(thread_id, limit=limit)]

        return run_sync(collect())

    # --- editing threads ---------------------------------------------------------------------

    async def aupdate_state(
        self,
        thread_id: str,
        values: Mapping[str, Any] | None,
        *,
        as_node: str | None = None,
        checkpoint_id: str | None = None,
    ) -> str:
        """Apply `values` through the reducers as a new checkpoint; returns its id.

        With `as_node`, the update counts as that node's output and the next step follows its
        edges; without, the pending next step is kept (edit a paused thread, then resume).
        Starting from an older `checkpoint_id` branches the thread there (time travel).
        """
        return await self._engine.update_state(self._require_cp(), thread_id, values, as_node, checkpoint_id)

    def update_state(
        self,
        thread_id: str,
        values: Mapping[str, Any] | None,
        *,
        as_node: str | None = None,
        checkpoint_id: str | None = None,
    ) -> str:
        return run_sync(self.aupdate_state(thread_id, values, as_node=as_node, checkpoint_id=checkpoint_id))

    async def afork(
        self, thread_id: str, checkpoint_id: str | None = None, *, new_thread_id: str | None = None
    ) -> StateSnapshot[StateT]:
        """Copy the thread at `checkpoint_id` (default: latest) into a new thread and return its
        snapshot. The fork re-executes from there: completed-task records and memoized calls
        of the original are not copied."""
        cp = self._require_cp()
        if checkpoint_id is None:
            latest = await cp.get(thread_id, "")
            if latest is None:
                raise UserError(f"thread {thread_id!r} has no checkpoint to fork")
            checkpoint_id = latest.checkpoint_id
        target = new_thread_id or new_sortable_id("thread_")
        if await cp.get(target, "") is not None:
            raise UserError(f"thread {target!r} already exists; pick another new_thread_id")
        await cp.fork(thread_id, "", checkpoint_id, target)
        return await self.aget_state(target)

    def fork(
        self, thread_id: str, checkpoint_id: str | None = None, *, new_thread_id: str | None = None
    ) -> StateSnapshot[StateT]:
        return run_sync(self.afork(thread_id, checkpoint_id, new_thread_id=new_thread_id))

    def draw_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (edges solid, conditional edges dotted, joins
        labelled `join`); paste it into any Markdown that renders Mermaid."""

        def node_id(name: str) -> str:
            return {START: "__start__", END: "__end__"}.get(name, name)

        g = self._engine
        lines = ["flowchart TD", "    __start__([START])", "    __end__([END])"]
        lines += [f"    {n}[{n}]" for n in g.nodes]
        for src, dsts in g.edges.items():
            lines += [f"    {node_id(src)} --> {node_id(d)}" for d in dsts]
        for src, branches in g.branches.items():
            for b in branches:
                if b.path_map is None:
                    lines.append(f"    {node_id(src)} -.-> |router| __end__")
                else:
                    lines += [f"    {node_id(src)} -.-> |{k}| {node_id(d)}" for k, d in b.path_map.items()]
        for src, joins in g.joins_by_src.items():
            lines += [f"    {node_id(src)} --> |join| {node_id(dst)}" for _key, _sources, dst in joins]
        for n in g.nodes:
            if not g.edges.get(n) and n not in g.branches and n not in g.joins_by_src:
                lines.append(f"    {n} --> __end__")  # the branch ends here (explicitly or not)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CompiledGraph({self.name!r}, nodes={sorted(self._engine.nodes)})"


__all__ = ["CompiledGraph"]
