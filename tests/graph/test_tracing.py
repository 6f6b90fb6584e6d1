"""With tracing configured, nodes and checkpoint writes become spans of the caller's trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.checkpoint import SqliteCheckpointer
from bastion.graph import START, Graph
from bastion.tracing import TracingHandle, configure_tracing, spans
from bastion.tracing import semconv as sc


class State(TypedDict, total=False):
    n: int


@pytest.fixture
def traced() -> Iterator[tuple[TracingHandle, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], metrics=False)
    try:
        yield handle, exporter
    finally:
        handle.shutdown()


def _graph() -> Graph:
    async def a(s: State) -> State:
        return {"n": 1}

    g = Graph(State)
    g.add_node("a", a).add_node("b", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "a").add_edge("a", "b")
    return g


async def test_nodes_and_checkpoints_are_spans_of_the_callers_trace(
    traced: tuple[TracingHandle, InMemorySpanExporter], tmp_path: Path
) -> None:
    handle, exporter = traced
    cp = SqliteCheckpointer(tmp_path / "t.db")
    try:
        with spans.span("request"):
            app = _graph().compile(checkpointer=cp, trace_nodes=True)
            assert (await app.ainvoke({}, thread_id="th-1"))["n"] == 2
            assert (await _graph().compile(checkpointer=cp).ainvoke({}, thread_id="th-2"))["n"] == 2
    finally:
        cp.close()
    assert handle.force_flush()
    finished = exporter.get_finished_spans()
    by_name: dict[str, list[object]] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    [root] = by_name["request"]
    [node_a] = by_name["graph node a"]
    assert node_a.attributes["bastion.graph.node"] == "a" and node_a.attributes["bastion.graph.step"] == 1  # type: ignore[attr-defined]
    assert len(by_name["graph node b"]) == 1, "th-2 was compiled without trace_nodes"
    assert "checkpoint put" not in by_name, "checkpoints are events on the run's span, not spans"
    puts = [e for e in root.events if e.name == "checkpoint put"]  # type: ignore[attr-defined]
    assert len(puts) == 6  # input + two supersteps, for each thread
    assert {p.attributes[sc.BASTION_CHECKPOINT_THREAD_ID] for p in puts} == {"th-1", "th-2"}
    assert [p.attributes[sc.BASTION_CHECKPOINT_STEP] for p in puts] == [0, 1, 2, 0, 1, 2]
    assert all(p.attributes[sc.BASTION_CHECKPOINT_DURATION_MS] >= 0 for p in puts)
    trace_id = root.context.trace_id  # type: ignore[attr-defined]
    assert all(s.context.trace_id == trace_id for s in finished)


def test_untraced_runs_do_not_touch_tracing() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from typing import TypedDict\n"
        "from bastion.graph import Graph, START\n"
        "class S(TypedDict): n: int\n"
        "g = Graph(S); g.add_node('a', lambda s: {'n': 1}); g.add_edge(START, 'a')\n"
        "assert g.compile().invoke({'n': 0})['n'] == 1\n"
        "print('bastion.tracing' in sys.modules, 'opentelemetry' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
