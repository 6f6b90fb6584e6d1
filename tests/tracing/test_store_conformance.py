"""One conformance suite for every trace store backend (`SpanStore`): SQLite and PostgreSQL.

What the server routes and the cost rollups rely on: ingest through the queue and through
`add`, the queries by trace/run/session/tenant/time/attribute, the trace listing, cost
rollups, and retention by age and by size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.errors import UserError
from bastion.tracing import (
    PostgresTraceStore,
    SpanRecord,
    SpanStore,
    TraceStore,
    configure_tracing,
    cost_by,
    cost_series,
    spans,
)
from bastion.tracing import semconv as sc
from bastion.tracing._cost import total_cost
from bastion.tracing._store import QueuedSpanWriter
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, Usage

T0 = 1_700_000_000.0  # epoch seconds
DAY = 86_400.0

AnyStore = TraceStore | PostgresTraceStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type[AnyStore]]:
    opened: list[QueuedSpanWriter] = []
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None

    def make(**kwargs: object) -> AnyStore:
        store: AnyStore = PostgresTraceStore(url, **kwargs) if url else TraceStore(tmp_path / "t.db", **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make  # type: ignore[misc]
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store: type[AnyStore]) -> AnyStore:
    return make_store()


def rec(
    trace: str, span: str, parent: str | None = None, *, at: float = T0, status: str = "UNSET", **attrs: object
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


def priced(
    tenant: str, run: str, *, model: str, cost: float, tokens: tuple[int, int] = (10, 5), agent: str = "bot"
) -> dict[str, object]:
    return {
        sc.BASTION_TENANT_ID: tenant,
        sc.BASTION_RUN_ID: run,
        sc.GEN_AI_AGENT_NAME: agent,
        sc.GEN_AI_REQUEST_MODEL: model,
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.BASTION_COST_USD: cost,
        sc.GEN_AI_USAGE_INPUT_TOKENS: tokens[0],
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: tokens[1],
    }


def seed(store: AnyStore) -> None:
    acme = {sc.BASTION_TENANT_ID: "acme"}
    store.add(
        [
            rec("t1", "a", name="invoke_agent sup", at=T0,
                **acme, **{sc.BASTION_RUN_ID: "r1", sc.GEN_AI_AGENT_NAME: "sup"}),
            rec("t1", "b", "a", at=T0 + 1, **acme, **{sc.BASTION_RUN_ID: "r1", sc.GEN_AI_TOOL_NAME: "search"}),
            rec("t1", "b2", "a", at=T0 + 2, name="chat m", **priced("acme", "r1", model="m1", cost=0.25)),
            rec("t2", "c", name="invoke_agent sup", at=T0 + 100, status="ERROR",
                **acme, **{sc.BASTION_RUN_ID: "r2", sc.GEN_AI_CONVERSATION_ID: "s1"}),
            rec("t2", "c2", "c", at=T0 + 101, name="chat m",
                **priced("acme", "r2", model="m2", cost=1.0, tokens=(100, 50))),
            rec("t3", "d", name="invoke_agent other", at=T0 + 200,
                **{sc.BASTION_RUN_ID: "r3", sc.BASTION_TENANT_ID: "globex", sc.GEN_AI_CONVERSATION_ID: "s1"}),
            rec("t3", "d2", "d", at=T0 + 201, name="chat m", **priced("globex", "r3", model="m1", cost=7.0)),
        ]
    )  # fmt: skip


def test_both_backends_satisfy_the_protocol(store: AnyStore) -> None:
    assert isinstance(store, SpanStore)


def test_queries_by_trace_run_session_tenant_time_and_attribute(store: AnyStore) -> None:
    seed(store)
    tree = store.get_trace("t1")
    assert tree is not None and [s.span_id for _, s in tree.walk()] == ["a", "b", "b2"]
    assert store.get_trace("nope") is None
    assert [s.span_id for s in store.spans(trace_id="t2")] == ["c", "c2"]
    assert [s.span_id for s in store.spans(run_id="r1", operation="chat")] == ["b2"]
    assert [s.span_id for s in store.spans(session="s1", tenant="globex")] == ["d"]
    assert [s.span_id for s in store.spans(attributes={sc.GEN_AI_TOOL_NAME: "search"})] == ["b"]
    assert [s.span_id for s in store.spans(attributes={sc.BASTION_COST_USD: 1.0})] == ["c2"]
    assert [s.span_id for s in store.spans(name="chat m", since=T0 + 50, until=T0 + 150)] == ["c2"]
    assert len(store.spans(limit=2)) == 2
    assert store.count() == 7
    span = store.spans(trace_id="t2", name="chat m")[0]
    assert span.attributes[sc.BASTION_COST_USD] == 1.0 and span.attributes[sc.GEN_AI_USAGE_INPUT_TOKENS] == 100


def test_list_traces_filters_labels_and_tenant_scope(store: AnyStore) -> None:
    seed(store)
    assert [t.trace_id for t in store.list_traces(tenant="acme")] == ["t2", "t1"]  # newest first
    assert [t.trace_id for t in store.list_traces(tenant="globex")] == ["t3"]
    assert store.list_traces(tenant="nobody") == []
    assert [t.trace_id for t in store.list_traces(run_id="r1")] == ["t1"]
    assert [t.trace_id for t in store.list_traces(session="s1")] == ["t3", "t2"]
    assert [t.trace_id for t in store.list_traces(since=T0 + 50, until=T0 + 150)] == ["t2"]
    assert [t.trace_id for t in store.list_traces(errors_only=True)] == ["t2"]
    assert [t.trace_id for t in store.list_traces(limit=2)] == ["t3", "t2"]
    t1 = store.list_traces(run_id="r1")[0]
    assert (t1.name, t1.span_count, t1.tenant, t1.status, t1.agent) == ("invoke_agent sup", 3, "acme", "UNSET", "sup")
    assert (t1.cost_usd, t1.input_tokens, t1.output_tokens) == (0.25, 10, 5)
    t2 = store.list_traces(run_id="r2")[0]
    assert (t2.status, t2.error_count, t2.session_id) == ("ERROR", 1, "s1")


def test_list_traces_reads_past_one_scan_chunk(store: AnyStore) -> None:
    store._scan_chunk = 7  # many spans per trace: the newest-first scan has to page
    store.add(
        [
            rec(f"t{i}", f"s{j}", at=T0 + i * 10 + j * 0.01, **{sc.BASTION_TENANT_ID: "acme"})
            for i in range(12)
            for j in range(5)
        ]
    )
    listed = store.list_traces(tenant="acme", limit=10)
    assert [t.trace_id for t in listed] == [f"t{i}" for i in range(11, 1, -1)]
    assert all(t.span_count == 5 for t in listed)


def test_cost_rollups_by_dimension_tenant_and_time(store: AnyStore) -> None:
    seed(store)
    by_model = {r.key: (r.cost_usd, r.calls, r.input_tokens, r.output_tokens) for r in cost_by(store, "model")}
    assert by_model == {"m1": (7.25, 2, 20, 10), "m2": (1.0, 1, 100, 50)}
    acme = cost_by(store, "run", tenant="acme")
    assert [(r.key, r.cost_usd) for r in acme] == [("r2", 1.0), ("r1", 0.25)]  # most expensive first
    assert cost_by(store, "tenant", since=T0 + 150) == [cost_by(store, "tenant")[0]]
    assert total_cost(store, tenant="acme") == 1.25
    series = cost_series(store, "model", bucket_s=100, since=T0, until=T0 + 300, tenant="acme")
    assert series == {"m1": [0.25, 0.0, 0.0], "m2": [0.0, 1.0, 0.0]}
    with pytest.raises(UserError, match="unknown cost dimension"):
        cost_by(store, "colour")  # type: ignore[arg-type]


def test_queued_spans_from_the_helpers_are_queryable_after_flush(store: AnyStore) -> None:
    handle = configure_tracing(otlp_endpoint="", store=store, metrics=False)
    ctx = RunContext(tenant="acme", user="u1", session="s9", run_id="run-9", agent="bot")
    request = ModelRequest([Message.user("hi")], context=ctx)
    try:
        with spans.agent("bot", ctx):
            for _ in range(3):
                with spans.chat("openai:gpt-4o-mini", request) as s:
                    s.record_response(
                        ModelResponse(Message.assistant("x"), Usage(7, 3), model="openai:gpt-4o-mini", cost_usd=0.5)
                    )
        assert store.flush(10)
    finally:
        handle.shutdown()
    stats = store.stats()
    assert (stats.received, stats.written, stats.dropped, stats.failed_batches) == (4, 4, 0, 0)
    [trace] = store.list_traces(run_id="run-9")
    assert (trace.span_count, trace.cost_usd, trace.input_tokens, trace.session_id) == (4, 1.5, 21, "s9")
    assert [(r.key, r.calls) for r in cost_by(store, "user", tenant="acme")] == [("u1", 3)]


def test_add_replaces_spans_with_the_same_ids(store: AnyStore) -> None:
    store.add([rec("t1", "a", name="first")])
    store.add([rec("t1", "a", name="second")])
    assert [s.name for s in store.spans(trace_id="t1")] == ["second"]


def test_odd_text_survives_a_round_trip(store: AnyStore) -> None:
    weird = "nul\x00 quote' back\\slash tab\t newline\n emoji 🦜 % ?"
    store.enqueue(rec("t1", "a", name=weird, **{"k": weird, sc.BASTION_TENANT_ID: "acme"}))
    assert store.flush(10) and store.stats().failed_batches == 0
    [span] = store.spans(trace_id="t1")
    assert span.attributes["k"] == weird  # inside JSON the NUL is an escape, kept exactly
    assert span.name.replace("\ufffd", "\x00") == weird  # a bare NUL becomes U+FFFD where the column cannot hold it


def test_age_retention_deletes_old_traces_and_keeps_recent_ones(make_store: type[AnyStore]) -> None:
    store = make_store(max_age_s=3 * DAY)
    now = time.time()
    store.add(
        [rec("old", "a", at=now - 10 * DAY), rec("old", "b", "a", at=now - 10 * DAY + 1), rec("new", "c", at=now)]
    )
    assert store.apply_retention() >= 1
    assert store.get_trace("old") is None
    assert store.get_trace("new") is not None


def test_size_retention_drops_the_oldest_data_first(make_store: type[AnyStore]) -> None:
    store = make_store()
    now = time.time()
    payload = {"blob": "x" * 2000, sc.BASTION_TENANT_ID: "acme"}
    for day in (6, 4, 2, 0):
        store.add([rec(f"d{day}-{i}", "s", at=now - day * DAY + i, **payload) for i in range(300)])
    full = store.live_bytes()
    store.max_bytes = full // 2
    store.apply_retention()  # (the writer may apply it first: it checks the limits between batches)
    assert store.live_bytes() <= full * 0.75
    remaining = {t.trace_id.split("-")[0] for t in store.list_traces(limit=1000)}
    assert "d0" in remaining and "d6" not in remaining  # the oldest go first, today stays


def test_retention_runs_by_itself_in_the_writer(make_store: type[AnyStore]) -> None:
    store = make_store(max_age_s=DAY, retention_interval_s=0.05)
    store.add([rec("old", "a", at=time.time() - 5 * DAY)])
    store.enqueue(rec("new", "b", at=time.time()))
    deadline = time.monotonic() + 10
    while store.get_trace("old") is not None and time.monotonic() < deadline:
        store.flush(1)  # wakes the writer, which applies retention between batches
    assert store.get_trace("old") is None and store.get_trace("new") is not None


def test_bad_settings_are_caller_errors(make_store: type[AnyStore]) -> None:
    with pytest.raises(UserError, match="queue_size"):
        make_store(queue_size=0)
    with pytest.raises(UserError, match="max_age_s"):
        make_store(max_age_s=-1)


def test_a_closed_store_says_so(make_store: type[AnyStore]) -> None:
    store = make_store()
    store.close()
    with pytest.raises(UserError, match="closed"):
        store.list_traces()


@pytest.mark.postgres
def test_postgres_migrates_once_under_concurrent_starts_and_refuses_a_newer_schema(pg_url: str) -> None:
    import psycopg

    from bastion.tracing._store_pg import SCHEMA_VERSION, schema_version

    stores: list[PostgresTraceStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresTraceStore(pg_url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len(stores) == 4
        # Two processes writing to the same new day create its partition once.
        for i, s in enumerate(stores):
            s.enqueue(rec(f"t{i}", "a", at=time.time()))
        assert all(s.flush(10) for s in stores)
        assert all(s.stats().failed_batches == 0 for s in stores)
        assert stores[0].count() == 4
    finally:
        for s in stores:
            s.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        conn.execute("UPDATE bastion_trace_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(UserError, match="newer than this Bastion"):
        PostgresTraceStore(pg_url)
