"""Tracing benchmark: what a span costs, and how fast the embedded store makes spans queryable.

1. Per-span overhead of one `chat` span with its response recorded (usage, cost, finish
   reason), measured for: Bastion's helpers with tracing off (no-op); the plain
   OpenTelemetry SDK setting the same attributes by hand, through a SimpleSpanProcessor and
   through a BatchSpanProcessor (the reference) into an in-memory exporter; Bastion's helpers
   through the SDK into the same exporters; Bastion's helpers into the embedded SQLite store
   without metrics, and in the default setup of `bastion serve` (`configure_tracing(store=...)`:
   the store plus metrics). "Request path" is the time the loop of spans takes; "total" adds
   the background work it caused (batch export, the store's writer) until flushed.
2. Store ingest: a burst of N spans created as fast as one thread can, then the time until
   all N are queryable in SQLite (the target: >= 10,000 spans/s queryable within 1 s).

Run: `.venv/bin/python bench/tracing.py` (about 30 s). Prints a Markdown table and writes
bench/results/tracing.json.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt, machine_note, table, write_results
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.tracing import PostgresTraceStore, SpanRecord, TraceStore, configure_tracing, spans
from bastion.tracing import semconv as sc
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, Usage

N_OVERHEAD = 20_000
REPEATS = 5  # interleaved rounds
CTX = RunContext(tenant="acme", user="u1", session="s1", run_id="run-1", agent="bench")
REQUEST = ModelRequest([Message.user("hello")], context=CTX)
RESPONSE = ModelResponse(
    Message.assistant("hi"), Usage(120, 30), model="openai:gpt-4o-mini", finish_reason="stop", cost_usd=0.0001
)


def _bastion_loop(n: int) -> None:
    for _ in range(n):
        with spans.chat("openai:gpt-4o-mini", REQUEST) as s:
            s.record_response(RESPONSE)


def _plain_otel_loop(tracer: Any) -> Callable[[int], None]:
    from opentelemetry.trace import SpanKind

    def loop(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span(
                "chat gpt-4o-mini",
                kind=SpanKind.CLIENT,
                attributes={
                    sc.BASTION_TENANT_ID: CTX.tenant,
                    sc.BASTION_RUN_ID: "run-1",
                    sc.GEN_AI_CONVERSATION_ID: "s1",
                    sc.BASTION_USER_ID: "u1",
                    sc.GEN_AI_AGENT_NAME: "bench",
                    sc.GEN_AI_OPERATION_NAME: "chat",
                    sc.GEN_AI_PROVIDER_NAME: "openai",
                    sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
                },
            ) as span:
                span.set_attributes(
                    {
                        sc.GEN_AI_RESPONSE_FINISH_REASONS: ["stop"],
                        sc.GEN_AI_USAGE_INPUT_TOKENS: 120,
                        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
                        sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini",
                        sc.BASTION_COST_USD: 0.0001,
                    }
                )

    return loop


Setup = Callable[[], contextlib.AbstractContextManager[tuple[Callable[[int], None], Callable[[], None]]]]


def _time_loop(loop: Callable[[int], None], finish: Callable[[], None]) -> tuple[float, float]:
    """(request-path µs/span, total µs/span including the background work it caused)."""
    gc.collect()
    t0 = time.perf_counter()
    loop(N_OVERHEAD)
    t1 = time.perf_counter()
    finish()
    t2 = time.perf_counter()
    return (t1 - t0) / N_OVERHEAD * 1e6, (t2 - t0) / N_OVERHEAD * 1e6


def _nothing() -> None:
    pass


@contextlib.contextmanager
def _noop() -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
    yield _bastion_loop, _nothing


@contextlib.contextmanager
def _plain_otel() -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield _plain_otel_loop(provider.get_tracer("bench")), memory.clear
    provider.shutdown()


@contextlib.contextmanager
def _plain_otel_batch() -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(memory, max_queue_size=65536))

    def finish() -> None:
        assert provider.force_flush(60_000)
        memory.clear()

    yield _plain_otel_loop(provider.get_tracer("bench")), finish
    provider.shutdown()


@contextlib.contextmanager
def _bastion_exporter() -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
    memory = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[memory], metrics=False)

    def finish() -> None:
        assert handle.force_flush(60)
        memory.clear()

    yield _bastion_loop, finish
    handle.shutdown()


@contextlib.contextmanager
def _bastion_memory() -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
    memory = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", metrics=False)
    handle.provider.add_span_processor(SimpleSpanProcessor(memory))
    yield _bastion_loop, memory.clear
    handle.shutdown()


def _bastion_store(tmp: Path, metrics: bool) -> Setup:
    @contextlib.contextmanager
    def setup() -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
        store = TraceStore(tmp / f"overhead-{time.perf_counter_ns()}.db")
        handle = configure_tracing(otlp_endpoint="", store=store, metrics=metrics)

        def finish() -> None:
            # the writer's and the metric recorder's work count in the total
            assert handle.force_flush(60)

        yield _bastion_loop, finish
        DROPS.append(store.stats().dropped)
        handle.shutdown()
        store.close()

    return setup


DROPS: list[int] = []


REFERENCE = "plain OpenTelemetry SDK, BatchSpanProcessor -> in-memory exporter"
DEFAULT = "Bastion helpers, default of `bastion serve`: SQLite store + metrics"


def overhead(tmp: Path) -> list[dict[str, Any]]:
    """Every setup runs once per round, rounds interleaved, so load on the shared machine
    hits them alike; the best round counts. `ratio` is the best round over the reference's
    best round; `round_ratio` the median over rounds of the same ratio within one round."""
    setups: list[tuple[str, Setup]] = [
        ("Bastion helpers, tracing off (no-op)", _noop),
        ("plain OpenTelemetry SDK, SimpleSpanProcessor -> in-memory exporter", _plain_otel),
        (REFERENCE, _plain_otel_batch),
        ("Bastion helpers, SDK path, SimpleSpanProcessor -> in-memory exporter", _bastion_memory),
        ("Bastion helpers, SDK path, exporters=[in-memory] (BatchSpanProcessor)", _bastion_exporter),
        ("Bastion helpers -> SQLite store, metrics off", _bastion_store(tmp, False)),
        (DEFAULT, _bastion_store(tmp, True)),
    ]
    path: dict[str, list[float]] = {name: [] for name, _ in setups}
    total: dict[str, list[float]] = {name: [] for name, _ in setups}
    for _ in range(REPEATS):
        for name, setup in setups:
            with setup() as (loop, finish):
                loop(1_000)  # warm up
                finish()
                p, t = _time_loop(loop, finish)
                path[name].append(p)
                total[name].append(t)
    ref = min(path[REFERENCE])
    rows: list[dict[str, Any]] = [
        {
            "setup": name,
            "us_per_span": min(path[name]),
            "total_us_per_span": min(total[name]),
            "ratio": min(path[name]) / ref,
            "round_ratio": statistics.median(a / b for a, b in zip(path[name], path[REFERENCE], strict=True)),
        }
        for name, _ in setups
    ]
    rows[-1]["dropped"] = sum(DROPS)
    return rows


StoreFactory = Callable[[str], Any]  # name -> a trace store (SQLite file or PostgreSQL)


def sqlite_stores(tmp: Path) -> StoreFactory:
    return lambda name: TraceStore(tmp / f"{name}.db")


def postgres_stores(server_url: str) -> StoreFactory:
    """A fresh database per store, as SQLite gets a fresh file: no run sees another's spans."""
    import psycopg

    def make(name: str) -> PostgresTraceStore:
        db = "bench_" + "".join(c if c.isalnum() else "_" for c in name)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        return PostgresTraceStore(server_url.replace("/postgres?", f"/{db}?"))

    return make


def ingest(make: StoreFactory, n: int) -> dict[str, Any]:
    store = make(f"ingest-{n}")
    handle = configure_tracing(otlp_endpoint="", store=store, metrics=False)
    try:
        gc.collect()
        t0 = time.perf_counter()
        with spans.agent("burst", RunContext(run_id=f"burst-{n}")):
            for i in range(n - 1):
                with spans.tool("t", f"c{i}"):
                    pass
        t_created = time.perf_counter()
        assert store.flush(60), "store did not drain within 60 s"
        count = store.query(f"SELECT count(*) FROM {store.table} WHERE run_id = ?", (f"burst-{n}",))[0][0]
        t_queryable = time.perf_counter()
        stats = store.stats()
    finally:
        handle.shutdown()
        store.close()
    return {
        "burst_spans": n,
        "stored": count,
        "dropped": stats.dropped,
        "create_s": t_created - t0,
        "burst_to_queryable_s": t_queryable - t0,
        "after_last_span_s": t_queryable - t_created,
        "spans_per_s": n / (t_queryable - t0),
    }


def ingest_store_only(make: StoreFactory, n: int) -> dict[str, Any]:
    """The store alone: N finished SDK spans (made beforehand) handed to it in one burst."""
    from opentelemetry.sdk.trace import ReadableSpan

    finished: list[ReadableSpan] = []

    class Collect:
        def on_start(self, span: Any, parent_context: Any = None) -> None: ...
        def _on_ending(self, span: Any) -> None: ...
        def on_end(self, span: ReadableSpan) -> None:
            finished.append(span)

        def shutdown(self) -> None: ...
        def force_flush(self, timeout_millis: int = 0) -> bool:
            return True

    handle = configure_tracing(otlp_endpoint="", metrics=False)
    handle.provider.add_span_processor(Collect())  # type: ignore[arg-type]
    with spans.agent("burst", RunContext(run_id=f"store-only-{n}")):
        for _ in range(n - 1):
            with spans.chat("openai:gpt-4o-mini", REQUEST) as s:
                s.record_response(RESPONSE)
    handle.shutdown()
    store = make(f"store-only-{n}")
    try:
        before = store.count()  # PostgreSQL: one database for every row of the table
        gc.collect()
        t0 = time.perf_counter()
        for span in finished:
            store.enqueue(span)
        t_enqueued = time.perf_counter()
        assert store.flush(60), "store did not drain within 60 s"
        count = store.count() - before
        t_queryable = time.perf_counter()
        stats = store.stats()
    finally:
        store.close()
    return {
        "burst_spans": n,
        "stored": count,
        "dropped": stats.dropped,
        "enqueue_s": t_enqueued - t0,
        "burst_to_queryable_s": t_queryable - t0,
        "spans_per_s": n / (t_queryable - t0),
    }


N_SCALE = 1_000_000
SCALE_TENANTS = 20
SPANS_PER_TRACE = 10


def _scale_rows(n: int) -> Iterator[list[SpanRecord]]:
    """`n` synthetic spans: traces of 10 spans over 20 tenants across the last 7 days, in batches."""
    now = time.time()
    batch: list[SpanRecord] = []
    for i in range(n // SPANS_PER_TRACE):
        tenant = f"tenant-{i % SCALE_TENANTS}"
        start = now - 7 * 86_400 * (1 - i / (n // SPANS_PER_TRACE))
        attrs_common = {sc.BASTION_TENANT_ID: tenant, sc.BASTION_RUN_ID: f"run-{i}", sc.GEN_AI_AGENT_NAME: "bench"}
        for j in range(SPANS_PER_TRACE):
            attrs = dict(attrs_common)
            if j:
                attrs.update({sc.GEN_AI_OPERATION_NAME: "chat", sc.GEN_AI_REQUEST_MODEL: f"m{j % 3}",
                              sc.BASTION_COST_USD: 0.0001 * j, sc.GEN_AI_USAGE_INPUT_TOKENS: 100})  # fmt: skip
            t = int((start + j * 0.01) * 1e9)
            name = "invoke_agent bench" if j == 0 else "chat m"
            parent = None if j == 0 else f"{0:016x}"
            batch.append(SpanRecord(f"{i:032x}", f"{j:016x}", parent, name, t, t + 5_000_000, attributes=attrs))
        if len(batch) >= 50_000:
            yield batch
            batch = []
    if batch:
        yield batch


def _best_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def at_scale(make: StoreFactory, n: int) -> dict[str, Any]:
    """The queries behind the UI and the API, timed with `n` spans stored (best of 5, ms)."""
    from bastion.tracing import cost_by, cost_series

    store = make(f"scale-{n}")
    try:
        t0 = time.perf_counter()
        for batch in _scale_rows(n):
            store.add(batch)
        load_s = time.perf_counter() - t0
        now = time.time()
        last_trace = f"{n // SPANS_PER_TRACE - 1:032x}"
        run = f"run-{n // SPANS_PER_TRACE - 1}"
        queries: dict[str, Callable[[], Any]] = {
            "list_traces(tenant, 100)": lambda: store.list_traces(tenant="tenant-3", limit=100),
            "list_traces(all, 100)": lambda: store.list_traces(limit=100),
            "get_trace": lambda: store.get_trace(last_trace),
            "spans(run_id)": lambda: store.spans(
                run_id=run, tenant=f"tenant-{(n // SPANS_PER_TRACE - 1) % SCALE_TENANTS}"
            ),
            "cost_by(model, tenant, 24 h)": lambda: cost_by(store, "model", tenant="tenant-3", since=now - 86_400),
            "cost_series(model, tenant, 24 h)": lambda: cost_series(
                store, "model", bucket_s=3600, since=now - 86_400, until=now, tenant="tenant-3"
            ),
        }
        timings = {name: _best_ms(q) for name, q in queries.items()}
        stats = store.stats()
    finally:
        store.close()
    return {"spans": n, "load_s": load_s, "load_spans_per_s": n / load_s, "dropped": stats.dropped, "ms": timings}


def main() -> None:
    from bastion.testing import postgres_server

    scale = "--scale" in sys.argv  # the 1M-span query timings take a few minutes per backend
    with tempfile.TemporaryDirectory() as d, postgres_server() as pg_url:
        tmp = Path(d)
        pg = postgres_stores(pg_url)
        rows = overhead(tmp)
        backends: list[tuple[str, StoreFactory]] = [("SQLite", sqlite_stores(tmp)), ("PostgreSQL", pg)]
        store_only = [{"backend": b, **ingest_store_only(make, n)} for b, make in backends for n in (10_000, 50_000)]
        bursts = [{"backend": b, **ingest(make, n)} for b, make in backends for n in (10_000, 50_000)]
        scaled = [{"backend": b, **at_scale(make, N_SCALE)} for b, make in backends] if scale else []
    print(f"## Per-span overhead (chat span + recorded response; {N_OVERHEAD:,} spans, best of {REPEATS})\n")
    print(
        table(
            [
                "setup",
                "request path µs/span",
                "vs plain OTel + BatchSpanProcessor (best / median round)",
                "total incl. background µs/span",
            ],
            [
                [
                    r["setup"],
                    fmt(r["us_per_span"], 2),
                    f"{fmt(r['ratio'], 2, 'x')} / {fmt(r['round_ratio'], 2, 'x')}",
                    fmt(r["total_us_per_span"], 2),
                ]
                for r in rows
            ],
        )
    )
    default = next(r for r in rows if r["setup"] == DEFAULT)
    verdict = "ok" if default["ratio"] <= 1.0 else "OVER"
    print(
        f"\ntracing cost per span in the default setup as a ratio to plain OTel + BatchSpanProcessor "
        f"(must be <= 1.0): {default['ratio']:.2f} (median round {default['round_ratio']:.2f}) {verdict}"
    )
    print("\n## Trace store alone: a burst of finished spans -> queryable\n")
    print(
        table(
            ["backend", "burst", "stored", "dropped", "enqueue (s)", "burst → queryable (s)", "spans/s"],
            [
                [
                    b["backend"],
                    f"{b['burst_spans']:,}",
                    f"{b['stored']:,}",
                    str(b["dropped"]),
                    fmt(b["enqueue_s"], 3),
                    fmt(b["burst_to_queryable_s"], 3),
                    fmt(b["spans_per_s"], 0),
                ]
                for b in store_only
            ],
        )
    )
    print("\n## End to end: spans created by the helpers into the store -> queryable\n")
    print(
        table(
            [
                "backend",
                "burst",
                "stored",
                "dropped",
                "create (s)",
                "burst → queryable (s)",
                "after last span (s)",
                "spans/s",
            ],
            [
                [
                    b["backend"],
                    f"{b['burst_spans']:,}",
                    f"{b['stored']:,}",
                    str(b["dropped"]),
                    fmt(b["create_s"], 3),
                    fmt(b["burst_to_queryable_s"], 3),
                    fmt(b["after_last_span_s"], 3),
                    fmt(b["spans_per_s"], 0),
                ]
                for b in bursts
            ],
        )
    )
    if scaled:
        names = list(scaled[0]["ms"])
        print(
            f"\n## Queries at {N_SCALE:,} spans ({N_SCALE // SPANS_PER_TRACE:,} traces, "
            f"{SCALE_TENANTS} tenants, 7 days), best of 5, ms\n"
        )
        print(
            table(
                ["backend", "load spans/s", *names],
                [[r["backend"], fmt(r["load_spans_per_s"], 0), *(fmt(r["ms"][q], 1) for q in names)] for r in scaled],
            )
        )
    print(f"\n{machine_note()}")
    results: dict[str, Any] = {
        "machine": machine_note(),
        "overhead": rows,
        "ingest_end_to_end": bursts,
        "ingest_store_only": store_only,
        "n_overhead": N_OVERHEAD,
        "default_vs_plain_otel_batch": next(r["ratio"] for r in rows if r["setup"] == DEFAULT),
    }
    if scaled:
        results["queries_at_scale"] = scaled
    path = write_results("tracing", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
