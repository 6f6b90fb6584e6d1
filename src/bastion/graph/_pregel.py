"""The superstep engine (Pregel / bulk-synchronous parallel).

Each step runs every triggered task concurrently against the same state; their updates are
merged through the reducers at the barrier, the next tasks are routed from the new state, and
one checkpoint is written (one transaction). When a step has several tasks, each finished
task's result is saved as a pending write, so a failing or interrupted sibling never costs the
work of the others: resuming runs only what did not finish.

Hot path: no deep copies, no validation beyond a key check, no events unless someone streams,
no storage unless a checkpointer and thread are given.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from bastion.checkpoint import KNOWN_LATEST, Checkpointer, CheckpointRecord, WriteRecord
from bastion.checkpoint.format import (
    NO_ARG,
    Decoded,
    decode_chain,
    decode_done,
    decode_payload,
    encode_checkpoint,
    encode_done,
    encode_interrupt,
    encode_resume,
)
from bastion.errors import (
    ControlFlowSignal,
    GraphInterrupt,
    GraphRecursionError,
    InvalidUpdateError,
    NodeTimeoutError,
    UserError,
)
from bastion.graph._runtime import CURRENT, TaskContext, interrupt_id
from bastion.graph._state import StateSchema, append
from bastion.graph._types import END, START, Command, GraphEvent, Interrupt, Send, StateSnapshot, node_retryable
from bastion.types import RunContext

log = logging.getLogger("bastion.graph")

if TYPE_CHECKING:
    from bastion.graph._builder import Branch, Graph, NodeSpec

Sink = Callable[[GraphEvent], None]
Updates = list[tuple[str, Any]]
Gotos = list[tuple[str, Any]]
Result = tuple[Updates, Gotos]

_JOIN = "__join:"
_STATIC_TASK = "__static__"
_RESUME_TASK = "__resume__"
_CACHE_SIZE = 256


_id_lock = threading.Lock()
_last_ns = 0
_PROCESS_TAIL = f"{random.SystemRandom().getrandbits(16):04x}"


def new_checkpoint_id(after: str | None = None) -> str:
    """Time-ordered ids: hex nanoseconds (strictly increasing in this process, and greater than
    `after`, the parent's id, even if another machine's clock ran ahead) plus a per-process
    random tail that keeps two processes' ids apart."""
    global _last_ns
    floor = int(after[:16], 16) if after else 0
    with _id_lock:
        t = time.time_ns()
        if t <= _last_ns:
            t = _last_ns + 1
        if t <= floor:
            t = floor + 1
        _last_ns = t
    return f"{t:016x}{_PROCESS_TAIL}"


def _tracing_on() -> bool:
    """Whether spans would be recorded; decided once per run so untraced runs pay nothing."""
    if "bastion.tracing._state" not in sys.modules and "opentelemetry.trace" not in sys.modules:
        return False
    from bastion.tracing import active_tracer

    return active_tracer() is not None


class Task:
    """`fresh`: made from a checkpoint this run has just written. Its id names that checkpoint,
    so nothing can be journaled under it yet: `memo` need not read the journal first."""

    __slots__ = ("arg", "fresh", "id", "node")

    def __init__(self, node: str, arg: Any, task_id: str, fresh: bool = False) -> None:
        self.node = node
        self.arg = arg
        self.id = task_id
        self.fresh = fresh


class Run:
    """The mutable state of one invocation of a graph on one thread (and namespace)."""

    def __init__(
        self,
        checkpointer: Checkpointer | None,
        thread_id: str | None,
        ns: str,
        context: RunContext,
        sink: Sink | None,
        resume: dict[str, Any],
    ) -> None:
        self.checkpointer = checkpointer if thread_id is not None else None
        self.thread_id = thread_id
        self.ns = ns
        self.context = context
        self.sink = sink
        self.resume = resume  # interrupt id -> answer (shared with subgraphs)
        self.values: dict[str, Any] = {}
        self.joins: dict[str, list[str]] = {}
        self.dirty: set[str] = set()
        self.log_saved: dict[str, int] = {}
        self.checkpoint_id: str | None = None
        self.id_floor = ""  # new checkpoint ids sort after this (the thread's latest, when branching)
        self.keyframe_id = ""
        self.depth = 0
        self.delta_bytes = 0  # payload bytes written since the last keyframe
        self.keyframe_bytes = 0
        self.step = -1  # the first checkpoint (the input) is step 0
        self.done: dict[str, Result] = {}  # finished tasks of the coming step (from storage)
        self.interrupts: list[Interrupt] = []  # raised in the coming step
        self.static_pause = ""  # "before" / "after" when paused by interrupt_before / interrupt_after
        self.static_ids: set[str] = set()
        self.traced = False
        self._buffer: list[WriteRecord] = []
        self._flusher: asyncio.Task[None] | None = None
        self._behind: list[asyncio.Future[None]] = []  # checkpoints written behind the steps

    @property
    def durable(self) -> bool:
        return self.checkpointer is not None

    def pending_interrupts(self) -> list[Interrupt]:
        seen: set[str] = set()
        out: list[Interrupt] = []
        for i in self.interrupts:
            if i.id not in seen and i.id not in self.resume:
                seen.add(i.id)
                out.append(i)
        return out

    # --- pending writes of a multi-task step: batched, flushed as soon as the loop is free ---

    def buffer_write(self, record: WriteRecord) -> None:
        self._buffer.append(record)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        assert self.checkpointer is not None
        try:
            while self._buffer:
                batch, self._buffer = self._buffer, []
                await self.checkpointer.put_writes(batch)
        finally:
            self._flusher = None

    async def flush(self) -> None:
        if self._flusher is not None:
            await self._flusher
        if self._buffer:
            await self._flush_loop()

    # --- checkpoints written behind (a checkpointer with `write_behind = True`) ---------------

    def write_behind(self, write: Coroutine[Any, Any, None]) -> None:
        """The next step starts while this checkpoint is written; a failed write surfaces at the
        next checkpoint or at the end of the run (`settle`)."""
        for f in self._behind:
            if f.done() and f.exception() is not None:
                write.close()
                raise f.exception()  # type: ignore[misc]
        self._behind = [f for f in self._behind if not f.done()]
        self._behind.append(asyncio.ensure_future(write))

    async def settle(self) -> None:
        """Wait until every checkpoint written behind is stored; raise the first failure."""
        behind, self._behind = self._behind, []
        if behind:
            for outcome in await asyncio.gather(*behind, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome


class Engine:
    """Compiled graph structure plus the superstep loop. `CompiledGraph` adds the public API."""

    def __init__(
        self,
        graph: Graph,
        *,
        checkpointer: Checkpointer | None,
        interrupt_before: frozenset[str],
        interrupt_after: frozenset[str],
        step_limit: int,
        keyframe_every: int,
        name: str,
        trace_nodes: bool = False,
    ) -> None:
        self.schema: StateSchema = graph.schema
        self.nodes: dict[str, NodeSpec] = dict(graph.nodes)
        self.edges: dict[str, tuple[str, ...]] = {
            s: tuple(dict.fromkeys(d for d in ds if d != END)) for s, ds in graph.edges.items()
        }
        self.joins_by_src: dict[str, list[tuple[str, frozenset[str], str]]] = {}
        for i, (sources, dst) in enumerate(graph.joins):
            for s in sources:
                self.joins_by_src.setdefault(s, []).append((f"{_JOIN}{i}", frozenset(sources), dst))
        self.branches: dict[str, list[Branch]] = {s: list(b) for s, b in graph.branches.items()}
        self.checkpointer = checkpointer
        self.interrupt_before = interrupt_before
        self.interrupt_after = interrupt_after
        self.step_limit = step_limit
        self.keyframe_every = keyframe_every
        self.name = name
        self.trace_nodes = trace_nodes
        # The latest decoded state per (checkpointer, thread, ns): a warm thread's next turn
        # reads one record instead of its whole delta chain. Valid only while that record is
        # still the thread's latest (another process may have moved on).
        self._cache: OrderedDict[tuple[int, str, str], Decoded] = OrderedDict()
        self._cache_lock = threading.Lock()

    # --- loading -----------------------------------------------------------------------------

    async def decoded(
        self, checkpointer: Checkpointer, thread_id: str, ns: str, checkpoint_id: str | None
    ) -> Decoded | None:
        key = (id(checkpointer), thread_id, ns)
        known = KNOWN_LATEST.get()
        if known is not None and known.thread_id == thread_id and not ns and checkpoint_id is None:
            if known.checkpoint_id is None:
                return None
            with self._cache_lock:
                hit = self._cache.get(key)
            if hit is not None and hit.record.checkpoint_id == known.checkpoint_id:
                return hit
        rec = await checkpointer.get(thread_id, ns, checkpoint_id)
        if rec is None:
            return None
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None and hit.record.checkpoint_id == rec.checkpoint_id and hit.record.thread_id == thread_id:
            return hit
        chain = [rec] if rec.is_keyframe else await checkpointer.get_chain(thread_id, ns, rec.checkpoint_id)
        d = decode_chain(chain, self.schema.log_channels)
        self._remember(key, d)
        return d

    def _remember(self, key: tuple[int, str, str], d: Decoded) -> None:
        with self._cache_lock:  # sync wrappers may run the same app from several threads
            self._cache[key] = d
            self._cache.move_to_end(key)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _load(self, run: Run, d: Decoded) -> list[Task]:
        run.values = {k: v for k, v in d.values.items() if not k.startswith("__")}
        run.joins = {k: list(v) for k, v in d.values.items() if k.startswith(_JOIN)}
        rec = d.record
        run.checkpoint_id = rec.checkpoint_id
        run.keyframe_id = rec.keyframe_id
        run.depth = d.depth
        run.delta_bytes = d.delta_bytes
        run.keyframe_bytes = d.keyframe_bytes
        run.step = rec.step
        run.log_saved = {
            ch: len(v) for ch, v in run.values.items() if ch in self.schema.log_channels and isinstance(v, list)
        }
        return [Task(n, a, f"{rec.checkpoint_id}:{i}") for i, (n, a) in enumerate(d.next)]

    async def _absorb_writes(self, run: Run) -> None:
        assert run.checkpointer is not None and run.thread_id is not None and run.checkpoint_id
        for w in await run.checkpointer.get_writes(run.thread_id, run.ns, run.checkpoint_id):
            if w.kind == "done":
                run.done[w.task_id] = decode_done(w.payload)
            elif w.kind == "interrupt":
                p = decode_payload(w.payload)
                run.interrupts.append(Interrupt(p["id"], p["value"], p["node"], p.get("ns", "")))
                if w.task_id == _STATIC_TASK and isinstance(p["value"], dict):
                    run.static_pause = str(p["value"].get("when", ""))
                    run.static_ids.add(p["id"])
            elif w.kind == "resume":
                run.resume.update(decode_payload(w.payload)["values"])

    # --- updates and routing -----------------------------------------------------------------

    def _normalise(self, node: str, out: Any) -> Result:
        if out is None:
            return [], []
        if type(out) is dict:
            if not out.keys() <= self.schema.channel_set:
                self._bad_keys(node, out)
            return list(out.items()), []
        if isinstance(out, Command):
            cmd: Command[Any] = out
            upd = cmd.update or {}
            if not upd.keys() <= self.schema.channel_set:
                self._bad_keys(node, upd)
            return list(upd.items()), self._gotos(node, cmd.goto)
        if isinstance(out, Send):
            return [], self._gotos(node, out)
        if isinstance(out, list | tuple) and all(isinstance(x, Send) for x in out):  # type: ignore[union-attr]
            return [], self._gotos(node, out)  # type: ignore[arg-type]  # [] is an empty fan-out
        if isinstance(out, dict):
            return self._normalise(node, dict(out))  # type: ignore[arg-type]
        raise InvalidUpdateError(
            f"node {node!r} returned a {type(out).__name__}; return a dict of state updates "
            "(e.g. {'count': 1}), a Command, Send(s) or None"
        )

    def _bad_keys(self, node: str, upd: dict[str, Any]) -> None:
        unknown = sorted(str(k) for k in upd if k not in self.schema.channel_set)
        raise InvalidUpdateError(
            f"node {node!r} updated unknown state key(s) {unknown}; the state "
            f"{self.schema.cls.__name__} has {sorted(self.schema.channels)}. Add the field or fix the key"
        )

    def _gotos(self, node: str, goto: Any) -> Gotos:
        items = [goto] if isinstance(goto, str | Send) else list(goto)
        out: Gotos = []
        for g in items:
            if isinstance(g, Send):
                out.append((g.node, g.arg))
            elif g == END:
                continue
            else:
                out.append((g, NO_ARG))
        for n, _ in out:
            if n not in self.nodes:
                raise InvalidUpdateError(
                    f"node {node!r} routed to unknown node {n!r}; known nodes: {sorted(self.nodes)}"
                )
        return out

    def _apply(self, run: Run, updates: Updates) -> None:
        values = run.values
        reducers = self.schema.reducers
        dirty = run.dirty
        for ch, v in updates:
            r = reducers.get(ch)
            if r is None:
                values[ch] = v
            elif ch in values:
                values[ch] = r(values[ch], v)
            elif r is append:
                values[ch] = append(None, v)
            else:
                values[ch] = v
            dirty.add(ch)

    async def _route(self, run: Run, ran: Sequence[str], gotos: Gotos) -> list[tuple[str, Any]]:
        """Next tasks after nodes `ran` finished (in order) with explicit `gotos`."""
        names: dict[str, None] = {}
        sends: list[tuple[str, Any]] = []
        for n in dict.fromkeys(ran):
            for d in self.edges.get(n, ()):
                names[d] = None
            for key, sources, dst in self.joins_by_src.get(n, ()):
                seen = run.joins.setdefault(key, [])
                if n not in seen:
                    seen.append(n)
                    run.dirty.add(key)
                if sources.issubset(seen):
                    seen.clear()
                    if dst != END:
                        names[dst] = None
            for b in self.branches.get(n, ()):
                for g, a in await self._branch(run, n, b):
                    if a is NO_ARG:
                        names[g] = None
                    else:
                        sends.append((g, a))
        for g, a in gotos:
            if a is NO_ARG:
                names[g] = None
            else:
                sends.append((g, a))
        return [(n, NO_ARG) for n in names] + sends

    async def _branch(self, run: Run, src: str, b: Branch) -> Gotos:
        state = self.schema.view(run.values)
        if b.wants_config:
            ctx = TaskContext(run, f"{run.checkpoint_id}:route:{src}", src, run.step)
            out = b.router(state, ctx.config())
        else:
            out = b.router(state)
        if b.is_async or asyncio.iscoroutine(out):
            out = await out
        items: list[Any] = list(out) if isinstance(out, list | tuple) else [out]  # type: ignore[arg-type]
        if b.path_map is not None:
            mapped: list[Any] = []
            for x in items:
                if isinstance(x, Send):
                    mapped.append(x)
                elif x in b.path_map:
                    mapped.append(b.path_map[x])
                else:
                    raise InvalidUpdateError(
                        f"router of conditional edges from {src!r} returned {x!r}, which is not in its "
                        f"path_map {sorted(map(str, b.path_map))}; return one of those or add it"
                    )
            items = mapped
        return self._gotos(src, items)

    # --- running tasks -----------------------------------------------------------------------

    def _emit(self, run: Run, kind: str, node: str | None, data: Any, task_id: str | None = None) -> None:
        if run.sink is not None:
            run.sink(GraphEvent(kind, node, data, run.step + 1, run.ns, task_id))

    async def _run_task(self, run: Run, task: Task, record: bool) -> Result:
        spec = self.nodes[task.node]
        ctx = TaskContext(run, task.id, task.node, run.step + 1, journal={} if task.fresh else None)
        token = CURRENT.set(ctx)
        try:
            if run.sink is not None:
                self._emit(run, "node_start", task.node, None, task.id)
            if run.traced and self.trace_nodes:
                out = await self._traced_call(run, spec, task, ctx)
            elif spec.retry is not None or spec.timeout is not None:
                out = await self._call_with_policy(run, spec, task, ctx)
            elif spec.subgraph is not None:
                out = await self._call_subgraph(run, spec, task)
            else:
                fn = spec.fn
                assert fn is not None
                state = task.arg if task.arg is not NO_ARG else self.schema.view(run.values)
                out = fn(state, ctx.config()) if spec.wants_config else fn(state)
                if spec.is_async or (type(out) is not dict and asyncio.iscoroutine(out)):
                    out = await out
            result = self._normalise(task.node, out)
            if record:
                assert run.thread_id is not None and run.checkpoint_id is not None
                run.buffer_write(
                    WriteRecord(
                        run.thread_id,
                        run.ns,
                        run.checkpoint_id,
                        task.id,
                        "done",
                        encode_done(result[0], result[1], task.node),
                    )
                )
            if run.sink is not None:
                self._emit(run, "node_end", task.node, dict(result[0]), task.id)
            return result
        except Exception as e:
            if not isinstance(e, ControlFlowSignal):
                self._report_failure(run, task, e)
            raise
        finally:
            CURRENT.reset(token)

    def _report_failure(self, run: Run, task: Task, error: Exception) -> None:
        """Name the node and task that failed, on the exception and as an `error` event; only
        the innermost node reports (a subgraph's parent node fails with the same exception)."""
        if getattr(error, FAILED_AT, None) is not None:
            return
        where = {"node": task.node, "task_id": task.id, "step": run.step + 1, "ns": run.ns}
        setattr(error, FAILED_AT, where)
        error.add_note(
            f"in graph node {task.node!r} (task {task.id}, step {run.step + 1}{', ' + run.ns if run.ns else ''})"
        )
        self._emit(run, "error", task.node, error, task.id)

    async def _traced_call(self, run: Run, spec: NodeSpec, task: Task, ctx: TaskContext) -> Any:
        from bastion.tracing import spans

        attrs = {"bastion.graph.node": task.node, "bastion.graph.step": ctx.step, "bastion.graph.task_id": task.id}
        with spans.span(f"graph node {task.node}", attrs):
            if spec.retry is not None or spec.timeout is not None or spec.fn is None:
                return await self._call_with_policy(run, spec, task, ctx)
            state = task.arg if task.arg is not NO_ARG else self.schema.view(run.values)
            out = spec.fn(state, ctx.config()) if spec.wants_config else spec.fn(state)
            return await out if asyncio.iscoroutine(out) else out

    async def _call_with_policy(self, run: Run, spec: NodeSpec, task: Task, ctx: TaskContext) -> Any:
        fn = spec.fn
        attempt = 0
        while True:
            attempt += 1
            ctx.counter = 0
            state = task.arg if task.arg is not NO_ARG else self.schema.view(run.values)
            try:
                if fn is None:  # a subgraph: a retry resumes it from its own last checkpoint
                    coro = self._call_subgraph(run, spec, task)
                elif spec.is_async:
                    coro = fn(state, ctx.config()) if spec.wants_config else fn(state)
                elif spec.timeout is not None:
                    # A sync node cannot be cancelled in the loop; run it in a thread so the timeout holds.
                    args = (state, ctx.config()) if spec.wants_config else (state,)
                    coro = asyncio.to_thread(fn, *args)
                else:
                    out = fn(state, ctx.config()) if spec.wants_config else fn(state)
                    coro = out if asyncio.iscoroutine(out) else None
                    if coro is None:
                        return out
                if spec.timeout is None:
                    return await coro
                try:
                    async with asyncio.timeout(spec.timeout):
                        return await coro
                except TimeoutError:
                    raise NodeTimeoutError(
                        f"node {spec.name!r} did not finish within its timeout of {spec.timeout} s; "
                        "raise timeout= in add_node() or make the node faster"
                    ) from None
            except Exception as e:
                policy = spec.retry
                if policy is None or attempt >= policy.max_attempts or not policy.should_retry(e, node_retryable):
                    raise
                delay = policy.backoff(attempt, random.random)
                # Visible in the stream: a node that only succeeds on its third try is a diagnosis.
                self._emit(
                    run,
                    "retry",
                    task.node,
                    {
                        "attempt": attempt,
                        "max_attempts": policy.max_attempts,
                        "error": f"{type(e).__name__}: {e}",
                        "delay": delay,
                    },
                    task.id,
                )
                await asyncio.sleep(delay)

    async def _call_subgraph(self, run: Run, spec: NodeSpec, task: Task) -> dict[str, Any]:
        child = spec.subgraph
        assert child is not None
        child_channels = child.schema.channel_set
        if task.arg is not NO_ARG:
            inp: dict[str, Any] = child.schema.input_dict(task.arg)
        else:
            inp = {k: v for k, v in run.values.items() if k in child_channels}
        child_ns = f"{run.ns}/{task.node}:{task.id}" if run.ns else f"{task.node}:{task.id}"
        crun = await child.execute(
            inp,
            checkpointer=run.checkpointer,
            thread_id=run.thread_id,
            ns=child_ns,
            context=run.context,
            sink=run.sink,
            resume=run.resume,
            resume_if_exists=True,
        )
        pending = crun.pending_interrupts()
        if pending:
            raise GraphInterrupt(list(pending))
        out: dict[str, Any] = {}
        for k in child.schema.channels:
            if k not in self.schema.channel_set or k not in crun.values:
                continue
            v = crun.values[k]
            if k in self.schema.log_channels and isinstance(v, list):
                base = inp.get(k)
                out[k] = v[len(base) :] if isinstance(base, list) else v
            else:
                out[k] = v
        return out

    async def _execute(self, run: Run, tasks: list[Task]) -> list[Result]:
        done = run.done
        if len(tasks) == 1 and not done:
            t = tasks[0]
            try:
                return [await self._run_task(run, t, False)]
            except GraphInterrupt as gi:
                await self._record_interrupts(run, [(t, gi)])
                raise
        results: list[Result | None] = [None] * len(tasks)
        todo: list[tuple[int, Task]] = []
        for i, t in enumerate(tasks):
            prev = done.get(t.id)
            if prev is not None:
                results[i] = prev
            else:
                todo.append((i, t))
        if len(todo) == 1 and run.durable:
            i, t = todo[0]
            try:
                results[i] = await self._run_task(run, t, False)
            except GraphInterrupt as gi:
                await self._record_interrupts(run, [(t, gi)])
                raise
        elif todo:
            try:
                outs = await asyncio.gather(
                    *(self._run_task(run, t, run.durable) for _, t in todo), return_exceptions=True
                )
            finally:
                if run.durable:  # also when cancelled: finished siblings must not be lost
                    await run.flush()
            interrupted: list[tuple[Task, GraphInterrupt]] = []
            errors: list[BaseException] = []
            for (i, t), o in zip(todo, outs, strict=True):
                if isinstance(o, GraphInterrupt):
                    interrupted.append((t, o))
                elif isinstance(o, BaseException):
                    errors.append(o)
                else:
                    results[i] = o
            if interrupted:
                await self._record_interrupts(run, interrupted)
            if errors:
                raise _one_or_group(errors, run.step + 1)
            if interrupted:
                raise GraphInterrupt([i for _, gi in interrupted for i in gi.interrupts])
        return results  # type: ignore[return-value]

    async def _record_interrupts(self, run: Run, pairs: list[tuple[Task, GraphInterrupt]]) -> None:
        assert run.checkpointer is not None and run.thread_id is not None and run.checkpoint_id is not None
        records: list[WriteRecord] = []
        for t, gi in pairs:
            for i in gi.interrupts:
                if not isinstance(i, Interrupt):
                    raise UserError("GraphInterrupt must carry Interrupt objects; call interrupt() instead")
                records.append(
                    WriteRecord(
                        run.thread_id,
                        run.ns,
                        run.checkpoint_id,
                        t.id,
                        "interrupt",
                        encode_interrupt(i.id, i.value, i.node, i.ns),
                    )
                )
                run.interrupts.append(i)
        await run.checkpointer.put_writes(records)

    # --- checkpoints -------------------------------------------------------------------------

    @staticmethod
    async def _put(run: Run, record: CheckpointRecord) -> None:
        assert run.checkpointer is not None
        if run.traced:
            from bastion.tracing import spans

            started_ns, t0 = time.time_ns(), time.perf_counter()
            await run.checkpointer.put(record)
            spans.checkpoint_stored(record.thread_id, record.step, started_ns, time.perf_counter() - t0)
        else:
            await run.checkpointer.put(record)

    async def _checkpoint(self, run: Run, nxt: list[tuple[str, Any]], source: str) -> list[Task]:
        step = run.step + 1
        if run.checkpointer is None:
            run.step = step
            run.dirty.clear()
            return [Task(n, a, f"{step}:{i}") for i, (n, a) in enumerate(nxt)]
        assert run.thread_id is not None
        cid = new_checkpoint_id(max(run.checkpoint_id or "", run.id_floor))
        logs_ch = self.schema.log_channels
        # A keyframe rewrites every channel in full (the whole message list too), so it is written
        # only when the deltas since the last one outweigh it: keyframes then cost at most as
        # much storage as the deltas. The hard cap bounds the rows read to rebuild a cold state.
        depth = run.depth + 1
        keyframe = run.checkpoint_id is None or depth >= 10 * self.keyframe_every
        if not keyframe and depth >= self.keyframe_every:
            keyframe = run.delta_bytes >= run.keyframe_bytes
        values: dict[str, Any] = {}
        logs: dict[str, list[Any]] = {}
        if keyframe:
            values.update(run.values)
            values.update(run.joins)
        else:
            for ch in run.dirty:
                if ch.startswith(_JOIN):
                    values[ch] = run.joins.get(ch, [])
                    continue
                v = run.values.get(ch)
                saved = run.log_saved.get(ch, 0)
                if ch in logs_ch and isinstance(v, list) and len(v) >= saved:
                    logs[ch] = v[saved:]
                else:
                    values[ch] = v
        meta: dict[str, Any] = {"step": step}
        if run.traced:
            from bastion.tracing import semconv, spans

            traceparent = spans.run_traceparent()
            if traceparent is not None:  # a run resumed from here continues this trace
                meta[semconv.CHECKPOINT_TRACEPARENT] = traceparent
        payload = encode_checkpoint(values, logs, nxt, source, meta)
        record = CheckpointRecord(
            run.thread_id,
            run.ns,
            cid,
            run.checkpoint_id,
            cid if keyframe else run.keyframe_id,
            step,
            time.time(),
            payload,
        )
        if getattr(run.checkpointer, "write_behind", False):
            run.write_behind(self._put(run, record))
        else:
            await self._put(run, record)
        cached = dict(run.values)
        cached.update({k: list(v) for k, v in run.joins.items()})
        self._remember(
            (id(run.checkpointer), run.thread_id, run.ns),
            Decoded(
                cached,
                list(nxt),
                source,
                meta,
                0 if keyframe else depth,
                record,
                0 if keyframe else run.delta_bytes + len(payload),
                len(payload) if keyframe else run.keyframe_bytes,
            ),
        )
        run.checkpoint_id = cid
        known = KNOWN_LATEST.get()
        if known is not None and known.thread_id == run.thread_id and not run.ns:
            # This run holds the thread: what it just wrote (and cached) is the latest from here on.
            known.checkpoint_id = cid
        run.depth = 0 if keyframe else depth
        if keyframe:
            run.delta_bytes, run.keyframe_bytes = 0, len(payload)
        else:
            run.delta_bytes += len(payload)
        if keyframe:
            run.keyframe_id = cid
        run.step = step
        for ch in logs_ch:
            v = run.values.get(ch)
            if isinstance(v, list):
                run.log_saved[ch] = len(v)
        run.dirty.clear()
        run.done = {}
        run.interrupts = []
        run.static_pause = ""
        if run.sink is not None:
            run.sink(GraphEvent("checkpoint", None, cid, step, run.ns))
        return [Task(n, a, f"{cid}:{i}", fresh=True) for i, (n, a) in enumerate(nxt)]

    async def _static_interrupt(self, run: Run, nodes: list[str], when: str) -> None:
        if run.checkpointer is None or run.thread_id is None or run.checkpoint_id is None:
            raise UserError(f"interrupt_{when} needs durable state: compile with a checkpointer and pass thread_id=")
        iid = interrupt_id(run.ns, f"{run.checkpoint_id}:{_STATIC_TASK}:{when}", 0)
        intr = Interrupt(iid, {"when": when, "nodes": nodes}, nodes[0], run.ns)
        await run.checkpointer.put_writes(
            [
                WriteRecord(
                    run.thread_id,
                    run.ns,
                    run.checkpoint_id,
                    _STATIC_TASK,
                    "interrupt",
                    encode_interrupt(intr.id, intr.value, intr.node, intr.ns),
                )
            ]
        )
        run.interrupts.append(intr)
        run.static_ids.add(iid)
        run.static_pause = when
        self._emit(run, "interrupt", intr.node, [intr])

    # --- reading and editing threads (CompiledGraph's get_state / update_state) --------------

    async def snapshot(self, checkpointer: Checkpointer, thread_id: str, d: Decoded, ns: str = "") -> StateSnapshot:
        run = Run(checkpointer, thread_id, ns, RunContext(), None, {})
        tasks = self._load(run, d)
        await self._absorb_writes(run)
        rec = d.record
        return StateSnapshot(
            values=self.schema.output(run.values),
            next=tuple(t.node for t in tasks if t.id not in run.done),
            interrupts=tuple(run.pending_interrupts()),
            checkpoint_id=rec.checkpoint_id,
            parent_id=rec.parent_id,
            thread_id=thread_id,
            step=rec.step,
            created_at=rec.created_at,
            source=d.source,
            metadata=dict(d.meta),
        )

    async def update_state(
        self,
        checkpointer: Checkpointer,
        thread_id: str,
        values: Any,
        as_node: str | None,
        checkpoint_id: str | None,
    ) -> str:
        """Apply `values` through the reducers as a new checkpoint (see `aupdate_state`)."""
        if as_node is not None and as_node not in self.nodes:
            raise UserError(f"as_node={as_node!r} is not a node of this graph; nodes: {sorted(self.nodes)}")
        run = Run(checkpointer, thread_id, "", RunContext(), None, {})
        decoded = await self.decoded(checkpointer, thread_id, "", checkpoint_id)
        if checkpoint_id is not None:
            if decoded is None:
                raise UserError(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}")
            latest = await checkpointer.get(thread_id, "")
            run.id_floor = latest.checkpoint_id if latest is not None else ""
        kept: list[tuple[str, Any]] = []
        if decoded is not None:
            tasks = self._load(run, decoded)
            kept = [(t.node, t.arg) for t in tasks]
        updates, gotos = self._normalise(as_node or "update_state", values)
        self._apply(run, updates)
        nxt = await self._route(run, [as_node], gotos) if as_node is not None else kept
        await self._checkpoint(run, nxt, "update")
        await run.settle()
        assert run.checkpoint_id is not None
        return run.checkpoint_id

    # --- the loop ----------------------------------------------------------------------------

    async def execute(
        self,
        input: Any,
        *,
        checkpointer: Checkpointer | None,
        thread_id: str | None,
        ns: str = "",
        context: RunContext | None = None,
        sink: Sink | None = None,
        resume: dict[str, Any] | None = None,
        checkpoint_id: str | None = None,
        resume_if_exists: bool = False,
        step_limit: int | None = None,
    ) -> Run:
        """Run (or resume) the graph; returns the finished or paused `Run`."""
        run = Run(checkpointer, thread_id, ns, context or RunContext(), sink, resume if resume is not None else {})
        run.traced = _tracing_on()
        try:
            try:
                await self._execute_run(run, input, checkpoint_id, resume_if_exists, step_limit)
            except BaseException:
                try:  # what the failed run did is stored (a resume starts at the failed step)
                    await run.settle()
                except Exception:
                    log.warning("a checkpoint of a failed run could not be stored", exc_info=True)
                raise
            await run.settle()
            return run
        except BaseException:
            # A failed step may have half-applied updates (a reducer that mutates in place):
            # the next attempt must rebuild from storage, not from this process's memory.
            if run.checkpointer is not None and thread_id is not None:
                with self._cache_lock:
                    self._cache.pop((id(run.checkpointer), thread_id, ns), None)
            raise

    async def _execute_run(
        self, run: Run, input: Any, checkpoint_id: str | None, resume_if_exists: bool, step_limit: int | None
    ) -> Run:
        thread_id = run.thread_id
        ns = run.ns
        decoded: Decoded | None = None
        if run.checkpointer is not None and thread_id is not None:
            decoded = await self.decoded(run.checkpointer, thread_id, ns, checkpoint_id)
            if checkpoint_id is not None:
                if decoded is None:
                    raise UserError(
                        f"thread {thread_id!r} has no checkpoint {checkpoint_id!r}; list them with aget_state_history"
                    )
                latest = await run.checkpointer.get(thread_id, ns)
                run.id_floor = latest.checkpoint_id if latest is not None else ""
        elif checkpoint_id is not None:
            raise UserError("checkpoint_id= needs a checkpointer and thread_id=")
        if resume_if_exists and decoded is not None:
            input = None
        skip_before = False
        if isinstance(input, Command) or input is None:
            if decoded is None:
                if input is None:
                    raise UserError(
                        f"nothing to resume: thread {thread_id!r} has no checkpoint"
                        if thread_id is not None
                        else "ainvoke(None) resumes a thread: pass thread_id= and compile with a checkpointer"
                    )
                raise UserError(f"Command(resume=...) needs a paused thread; thread {thread_id!r} has no checkpoint")
            tasks = self._load(run, decoded)
            await self._absorb_writes(run)
            cmd: Command[Any] | None = input
            if cmd is not None:
                if cmd.update is not None or cmd.goto:
                    raise UserError(
                        "Command(update=/goto=) is for node return values; to change a paused thread's "
                        "state use aupdate_state(), then resume with Command(resume=...) or None"
                    )
                await self._apply_resume(run, cmd.resume)
            static = [i.id for i in run.pending_interrupts() if i.id in run.static_ids]
            if static:  # continuing past a breakpoint answers it
                await self._record_resume(run, dict.fromkeys(static))
            # Resuming the step that paused or failed: its interrupt_before check already ran,
            # unless the pause came after the previous step (interrupt_after).
            skip_before = run.static_pause != "after"
        else:
            if decoded is not None:
                self._load(run, decoded)
            update = self.schema.input_dict(input)
            if not update.keys() <= self.schema.channel_set:
                self._bad_keys(START, update)
            self._apply(run, list(update.items()))
            nxt = await self._route(run, [START], [])
            tasks = await self._checkpoint(run, nxt, "input")
        await self._loop(run, tasks, skip_before, step_limit or self.step_limit)
        return run

    async def _apply_resume(self, run: Run, value: Any) -> None:
        assert run.checkpointer is not None and run.thread_id is not None and run.checkpoint_id is not None
        pending = run.pending_interrupts()
        known = {i.id for i in run.interrupts}
        if isinstance(value, dict) and value and all(k in known for k in value):  # type: ignore[union-attr]
            answers: dict[str, Any] = dict(value)  # type: ignore[arg-type]
        elif len(pending) == 1:
            answers = {pending[0].id: value}
        elif not pending:
            raise UserError(
                f"thread {run.thread_id!r} has no pending interrupt to resume; "
                "continue it with ainvoke(None, thread_id=...) or send new input"
            )
        else:
            ids = ", ".join(f"{i.id!r} ({i.node})" for i in pending)
            raise UserError(
                f"{len(pending)} interrupts are pending ({ids}); resume with "
                "Command(resume={interrupt_id: value, ...}) naming each one you answer"
            )
        await self._record_resume(run, answers)

    async def _record_resume(self, run: Run, answers: dict[str, Any]) -> None:
        assert run.checkpointer is not None and run.thread_id is not None and run.checkpoint_id is not None
        await run.checkpointer.put_writes(
            [WriteRecord(run.thread_id, run.ns, run.checkpoint_id, _RESUME_TASK, "resume", encode_resume(answers))]
        )
        run.resume.update(answers)

    async def _loop(self, run: Run, tasks: list[Task], skip_before: bool, limit: int) -> None:
        steps = 0
        while tasks:
            if steps >= limit:
                raise GraphRecursionError(
                    f"graph {self.name!r} reached its step limit of {limit} supersteps without finishing "
                    f"(next: {sorted({t.node for t in tasks})}); if the loop is intended, raise it with "
                    "compile(step_limit=...) or ainvoke(..., step_limit=...), otherwise add an exit condition"
                )
            if self.interrupt_before and not skip_before:
                hit = [t.node for t in tasks if t.node in self.interrupt_before]
                if hit:
                    await self._static_interrupt(run, list(dict.fromkeys(hit)), "before")
                    return
            skip_before = False
            try:
                results = await self._execute(run, tasks)
            except GraphInterrupt as gi:
                self._emit(run, "interrupt", None, list(gi.interrupts))
                return
            gotos: Gotos = []
            for updates, g in results:
                if updates:
                    self._apply(run, updates)
                if g:
                    gotos.extend(g)
            if run.sink is not None:
                for t, (updates, _) in zip(tasks, results, strict=True):
                    self._emit(run, "update", t.node, dict(updates), t.id)
            nxt = await self._route(run, [t.node for t in tasks], gotos)
            ran = tasks
            tasks = await self._checkpoint(run, nxt, "loop")
            steps += 1
            if self.interrupt_after and tasks:
                hit = [t.node for t in ran if t.node in self.interrupt_after]
                if hit:
                    await self._static_interrupt(run, list(dict.fromkeys(hit)), "after")
                    return


FAILED_AT = "bastion_failed_at"
"""Attribute set on an exception that failed a node: {"node", "task_id", "step", "ns"}."""


def _one_or_group(errors: list[BaseException], step: int) -> BaseException:
    """The single failure as is; several parallel failures together, none of them lost."""
    plain = [e for e in errors if isinstance(e, Exception)]
    if len(errors) == 1 or len(plain) != len(errors):
        # A cancellation or exit is not a task failure to group: it ends the step as it is.
        return next((e for e in errors if not isinstance(e, Exception)), errors[0])
    where = [getattr(e, FAILED_AT, None) or {} for e in plain]
    nodes = ", ".join(sorted({str(w.get("node", "?")) for w in where}))
    group = ExceptionGroup(f"{len(plain)} parallel tasks failed in step {step} (nodes: {nodes})", plain)
    # Each member was streamed with its node and task already; the group adds no event.
    setattr(group, FAILED_AT, {"node": None, "task_id": None, "step": step, "tasks": [w.get("task_id") for w in where]})
    return group


__all__ = ["FAILED_AT", "Engine", "Run", "Task", "new_checkpoint_id"]
