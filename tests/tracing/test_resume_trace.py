"""A run paused for an approval and resumed later is one trace: the resumed run's root span is
a child of the first run's root (the graph engine saves the root's `traceparent` with each
checkpoint; the runnables read it back on resume). Real parts: an `Agent` with the default
policy gateway (an irreversible tool needs a human), SQLite checkpoints and run store, the
`Runtime` with its worker; spans through the store-only path and through the SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.checkpoint import SqliteCheckpointer
from bastion.evals import trajectory_from_trace
from bastion.graph import END, START, Graph, interrupt
from bastion.graph.agent import Agent
from bastion.runtime import AgentRunnable, GraphRunnable, Runtime, SqlRunStore
from bastion.testing import FunctionModel
from bastion.tools import tool
from bastion.tracing import SpanRecord, TraceStore, TracingHandle, configure_tracing
from bastion.tracing import semconv as sc
from bastion.types import ModelRequest, RunContext, ToolCall


@tool(side_effect="irreversible")
def refund(order_id: str) -> str:
    """Refund an order."""
    return f"refunded {order_id}"


def reply(request: ModelRequest) -> str | ToolCall:
    if request.messages[-1].role == "tool":
        return "Refund done."
    return ToolCall("refund", {"order_id": "A-17"})


class Flow(TypedDict, total=False):
    answer: str


@dataclass
class Traced:
    handle: TracingHandle
    store: TraceStore


@pytest.fixture(params=["store_only", "sdk"])
def traced_runs(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store = TraceStore(tmp_path / "traces.db")
    if request.param == "sdk":
        handle = configure_tracing(
            otlp_endpoint="", store=store, exporters=[InMemorySpanExporter()], capture_content="span_attributes"
        )
        assert not handle.lite
    else:
        handle = configure_tracing(otlp_endpoint="", store=store, capture_content="span_attributes")
        assert handle.lite
    try:
        yield Traced(handle, store)
    finally:
        handle.shutdown()
        store.close()


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    checkpointer = SqliteCheckpointer(tmp_path / "cp.db")
    agent = Agent(FunctionModel(reply), tools=[refund], name="support", checkpointer=checkpointer)

    def approve(state: Flow) -> dict[str, Any]:
        return {"answer": interrupt({"question": "ship it?"})}

    graph = Graph(Flow).add_node("approve", approve).add_edge(START, "approve").add_edge("approve", END)
    flow = GraphRunnable(graph.compile(checkpointer=checkpointer, name="flow"), output="answer")
    rt = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {"support": AgentRunnable(agent), "flow": flow})
    async with rt:
        yield rt
    await checkpointer.aclose()


def _roots(spans: list[SpanRecord]) -> list[SpanRecord]:
    return sorted((s for s in spans if s.name.startswith(sc.OP_INVOKE_AGENT)), key=lambda s: s.start_ns)


async def test_agent_resumed_after_approval_continues_the_trace(traced_runs: Traced, runtime: Runtime) -> None:
    paused = await runtime.run(tenant="acme", agent="support", input="refund my last order", timeout=20)
    assert paused.status == "interrupted", paused.error
    await runtime.resume(paused.id, tenant="acme", decision="approve")
    done = await runtime.wait(paused.id, tenant="acme", timeout=20)
    assert done.status == "completed", done.error
    assert done.output == "Refund done."
    traced_runs.handle.force_flush()

    spans = traced_runs.store.spans(run_id=paused.id)
    assert {s.trace_id for s in spans} == {paused.trace_id}  # both attempts, one trace
    assert done.trace_id == paused.trace_id
    first, resumed = _roots(spans)
    assert first.parent_id is None
    assert resumed.parent_id == first.span_id  # the resumed run hangs under the first root
    assert resumed.attributes.get(sc.BASTION_RUN_RESUMED) is True
    assert sc.BASTION_RUN_RESUMED not in first.attributes
    # Both parts are really there: the call paused for approval, then the call that ran.
    tools = sorted(
        (s for s in spans if s.attributes.get(sc.GEN_AI_OPERATION_NAME) == sc.OP_EXECUTE_TOOL), key=lambda s: s.start_ns
    )
    assert len(tools) == 2
    assert tools[0].start_ns < resumed.start_ns < tools[1].start_ns
    assert [e["name"] for e in tools[0].events] == [sc.EVENT_CONTROL_FLOW]  # paused, not failed
    assert not tools[1].events and tools[1].status != "ERROR"
    assert sum(s.attributes.get(sc.GEN_AI_OPERATION_NAME) == sc.OP_POLICY for s in spans) == 2
    tree = traced_runs.store.get_trace(paused.trace_id or "")
    assert [s.span_id for s in tree.roots] == [first.span_id]
    # An eval case built from this trace sees the whole run: both calls, the final output.
    trajectory = trajectory_from_trace(tree)
    assert trajectory.output == "Refund done." and [c.name for c in trajectory.tool_calls] == ["refund", "refund"]


def twice(request: ModelRequest) -> str | ToolCall:
    done = sum(m.role == "tool" for m in request.messages)
    return ToolCall("refund", {"order_id": ["A-17", "B-42"][done]}) if done < 2 else "Both refunded."


async def test_every_resumed_part_hangs_under_the_first_root(traced_runs: Traced, tmp_path: Path) -> None:
    checkpointer = SqliteCheckpointer(tmp_path / "twice.db")
    agent = Agent(FunctionModel(twice), tools=[refund], name="support", checkpointer=checkpointer)
    async with Runtime(SqlRunStore.sqlite(tmp_path / "runs2.db"), {"support": AgentRunnable(agent)}) as rt:
        run = await rt.run(tenant="acme", agent="support", input="refund my orders", timeout=20)
        for _ in range(2):
            assert run.status == "interrupted", run.error
            await rt.resume(run.id, tenant="acme", decision="approve")
            run = await rt.wait(run.id, tenant="acme", timeout=20)
        assert (run.status, run.output) == ("completed", "Both refunded."), run.error
    await checkpointer.aclose()
    traced_runs.handle.force_flush()
    spans = traced_runs.store.spans(run_id=run.id)
    assert {s.trace_id for s in spans} == {run.trace_id}
    first, *resumed = _roots(spans)
    assert len(resumed) == 2 and {s.parent_id for s in resumed} == {first.span_id}


async def test_graph_resumed_after_interrupt_continues_the_trace(traced_runs: Traced, runtime: Runtime) -> None:
    paused = await runtime.run(tenant="acme", agent="flow", input={}, timeout=20)
    assert paused.status == "interrupted", paused.error
    await runtime.resume(paused.id, tenant="acme", decision="yes")
    done = await runtime.wait(paused.id, tenant="acme", timeout=20)
    assert (done.status, done.output) == ("completed", "yes"), done.error
    traced_runs.handle.force_flush()

    spans = traced_runs.store.spans(run_id=paused.id)
    assert {s.trace_id for s in spans} == {paused.trace_id} == {done.trace_id}
    first, resumed = _roots(spans)
    assert resumed.parent_id == first.span_id


async def test_a_new_run_on_the_thread_starts_its_own_trace(traced_runs: Traced, runtime: Runtime) -> None:
    # Only a resume continues a trace; the next run on the same thread is a trace of its own.
    paused = await runtime.run(tenant="acme", agent="support", input="refund my last order", thread_id="t", timeout=20)
    await runtime.resume(paused.id, tenant="acme", decision="approve")
    await runtime.wait(paused.id, tenant="acme", timeout=20)
    later = await runtime.run(tenant="acme", agent="support", input="refund my last order", thread_id="t", timeout=20)
    assert later.trace_id and later.trace_id != paused.trace_id


async def test_agent_resume_without_the_runtime_continues_the_trace(traced_runs: Traced, tmp_path: Path) -> None:
    checkpointer = SqliteCheckpointer(tmp_path / "direct.db")
    agent = Agent(FunctionModel(reply), tools=[refund], name="support", checkpointer=checkpointer)
    try:
        paused = await agent.run("refund my last order", thread_id="t", context=RunContext(run_id="r1"))
        assert paused.interrupted
        done = await agent.resume("approve", thread_id="t", context=RunContext(run_id="r1"))
        assert done.output == "Refund done."
    finally:
        await checkpointer.aclose()
    traced_runs.handle.force_flush()
    spans = traced_runs.store.spans(run_id="r1")
    assert len({s.trace_id for s in spans}) == 1
    first, resumed = _roots(spans)
    assert (first.parent_id, resumed.parent_id) == (None, first.span_id)


@pytest.mark.parametrize("parent", ["not-a-traceparent", "00-00000000000000000000000000000000-b7ad6b7169203331-01"])
def test_a_malformed_saved_parent_starts_a_new_trace(traced_runs: Traced, parent: str) -> None:
    from bastion.tracing import spans

    with spans.agent("support", RunContext(tenant="acme", run_id="run_x"), parent=parent) as root:
        traceparent = root.traceparent
    traced_runs.handle.force_flush()
    [span] = traced_runs.store.spans(run_id="run_x")
    assert span.parent_id is None and sc.BASTION_RUN_RESUMED not in span.attributes
    # The root names itself in W3C form, which is what a later resume is handed.
    assert traceparent == f"00-{span.trace_id}-{span.span_id}-01"
