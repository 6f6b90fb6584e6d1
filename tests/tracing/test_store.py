from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bastion.errors import UserError
from bastion.tracing import SpanRecord, TraceStore, configure_tracing, spans
from bastion.tracing import semconv as sc
from bastion.types import RunContext

T0 = 1_700_000_000.0  # epoch seconds


def rec(
    trace: str,
    span: str,
    parent: str | None = None,
    *,
    at: float = T0,
    status: str = "UNSET",
    **attrs: object,
) -> SpanRecord:
    return SpanRecord(
        trace_id=trace,
        span_id=span,
        parent_id=parent,
        name=str(attrs.pop("name", f"span {span}")),
        start_ns=int(at * 1e9),
        end_ns=int((at + 0.5) * 1e9),
        status=status,
        attributes=dict(attrs),
    )


def _seed(store: TraceStore) -> None:
    store.add(
        [
            rec("t1", "a", name="invoke_agent sup", at=T0, **{sc.BASTION_RUN_ID: "r1", sc.BASTION_TENANT_ID: "acme"}),
            rec(
                "t1",
                "b",
                "a",
                at=T0 + 1,
                **{sc.BASTION_RUN_ID: "r1", sc.BASTION_TENANT_ID: "acme", sc.GEN_AI_TOOL_NAME: "search"},
            ),
            rec(
                "t2",
                "c",
                name="invoke_agent sup",
                at=T0 + 100,
                status="ERROR",
                **{sc.BASTION_RUN_ID: "r2", sc.BASTION_TENANT_ID: "acme", sc.GEN_AI_CONVERSATION_ID: "s1"},
            ),
            rec(
                "t3",
                "d",
                name="invoke_agent other",
                at=T0 + 200,
                **{sc.BASTION_RUN_ID: "r3", sc.BASTION_TENANT_ID: "globex", sc.GEN_AI_CONVERSATION_ID: "s1"},
            ),
        ]
    )


def test_queries_by_trace_run_session_tenant_time_and_attribute(store: TraceStore) -> None:
    _seed(store)
    tree = store.get_trace("t1")
    assert tree is not None and [s.span_id for _, s in tree.walk()] == ["a", "b"]
    assert store.get_trace("nope") is None
    assert [t.trace_id for t in store.list_traces(tenant="acme")] == ["t2", "t1"]  # newest first
    assert [t.trace_id for t in store.list_traces(run_id="r1")] == ["t1"]
    assert [t.trace_id for t in store.list_traces(session="s1")] == ["t3", "t2"]
    assert [t.trace_id for t in store.list_traces(since=T0 + 50, until=T0 + 150)] == ["t2"]
    assert [t.trace_id for t in store.list_traces(errors_only=True)] == ["t2"]
    summary = store.list_traces(run_id="r1")[0]
    assert (summary.name, summary.span_count, summary.tenant, summary.status) == (
        "invoke_agent sup",
        2,
        "acme",
        "UNSET",
    )
    assert store.list_traces(run_id="r2")[0].status == "ERROR"
    assert [s.span_id for s in store.spans(attributes={sc.GEN_AI_TOOL_NAME: "search"})] == ["b"]
    assert [s.span_id for s in store.spans(tenant="globex")] == ["d"]
    assert store.count() == 4


def test_dropped_spans_are_counted_when_the_queue_is_full(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tiny.db"
    store = TraceStore(path, queue_size=5, batch_size=5)
    handle = configure_tracing(otlp_endpoint="", store=store)
    # Hold the database write lock so the writer cannot drain: the burst must overflow.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for i in range(200):
            with spans.tool(f"t{i}"):
                pass
        stats = store.stats()
        assert stats.received == 200
        assert stats.dropped >= 200 - 5 - 5  # queue + at most one batch in flight
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.flush(10)
    stats = store.stats()
    assert stats.written + stats.dropped == 200 and stats.queued == 0
    assert store.count() == stats.written
    metrics = {s.name: s.value for fam in text_string_to_metric_families(handle.prometheus_text()) for s in fam.samples}
    assert metrics["bastion_tracing_spans_dropped_total"] == stats.dropped
    assert "queue full, dropped" in caplog.text and "queue_size" in caplog.text
    handle.shutdown()
    store.close()


def test_store_survives_reopen_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with TraceStore(path) as store:
        _seed(store)
    with TraceStore(path) as store:
        assert store.count() == 4
        assert store.query("SELECT DISTINCT v FROM spans") == [(1,)]
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(UserError, match="newer than this Bastion"):
        TraceStore(path)


def test_closed_store_and_bad_arguments_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least 1"):
        TraceStore(tmp_path / "x.db", queue_size=0)
    store = TraceStore(tmp_path / "y.db")
    store.close()
    with pytest.raises(UserError, match="closed"):
        store.list_traces()


def test_spans_from_the_helpers_land_in_the_store_with_lifted_columns(store: TraceStore) -> None:
    handle = configure_tracing(otlp_endpoint="", store=store)
    try:
        with spans.agent("sup", RunContext(tenant="acme", user="bob", run_id="r9", session="s9")) as a:
            with spans.tool("search", "c1"):
                pass
        assert handle.force_flush()
    finally:
        handle.shutdown()
    rows = store.query(
        "SELECT name, run_id, session_id, tenant, user_id, tool FROM spans WHERE trace_id = ? ORDER BY start_ns",
        (a.trace_id,),
    )
    assert rows == [
        ("invoke_agent sup", "r9", "s9", "acme", "bob", None),
        ("execute_tool search", "r9", "s9", "acme", "bob", "search"),
    ]


def test_prune_deletes_whole_old_traces_only(store: TraceStore) -> None:
    _seed(store)  # t1 spans at T0 and T0+1, t2 at T0+100, t3 at T0+200
    assert store.prune(before=T0 + 0.5) == 0  # t1 still has a newer span
    assert store.prune(before=T0 + 150) == 3  # t1 (2 spans) and t2
    assert [t.trace_id for t in store.list_traces()] == ["t3"]


def test_a_file_that_is_not_a_store_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my precious notes, not a database" * 100)
    with pytest.raises(UserError, match="not a usable trace store"):
        TraceStore(path)
    assert path.read_bytes() == b"my precious notes, not a database" * 100
    with TraceStore(tmp_path / "new" / "dir" / "t.db") as store:  # parents are created
        assert store.count() == 0
