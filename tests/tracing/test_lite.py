"""The store-only span path (no OpenTelemetry SDK span when the store is the only consumer):
it stores exactly what the SDK path stores, nests with OpenTelemetry instrumentation both
ways, switches to the SDK when something else wants spans, and metrics need no SDK."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from bastion.errors import GraphInterrupt
from bastion.tracing import SpanRecord, TraceStore, TracingHandle, configure_tracing, spans
from bastion.tracing import semconv as sc
from bastion.tracing._cost import record_tool_cost
from bastion.tracing._lite import LiteSpan
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolResult, Usage

CTX = RunContext(tenant="acme", user="u1", session="s1", run_id="run-1", agent="support", tags={"env": "test"})


def _workload(run_id: str) -> None:
    """Every helper and recording method, an exception, a control-flow signal, content."""
    ctx = RunContext(tenant="acme", user="u1", session="s1", run_id=run_id, agent="support", tags={"env": "t"})
    request = ModelRequest([Message.user("my key is sk-abcdefghijklmnopqrstuvwx")], context=ctx)
    with spans.agent("support", ctx, agent_id="ag-1", input="hello") as a:
        with spans.chat("openai:gpt-4o-mini", request) as c:
            c.record_response(
                ModelResponse(
                    Message.assistant("hi"),
                    Usage(120, 30, cache_read_tokens=5),
                    model="openai:gpt-4o-mini-2024",
                    finish_reason="stop",
                    cost_usd=0.25,
                    response_id="resp-1",
                )
            )
        with spans.chat("anthropic:claude", None) as c:
            c.record_response(ModelResponse(Message.assistant(""), Usage(1, 0), finish_reason="error"))
        with spans.tool("search", "call-1", "read", arguments={"q": "x"}) as t:
            assert record_tool_cost("search", 0.02, 2, "query")  # reads the current span's attributes
            t.record_result(ToolResult("call-1", "search", "boom", is_error=True), cost_usd=0.01)
        with spans.retrieval("kb", "query text", top_k=3) as r:
            r.record_results(2)
        with spans.embeddings("openai:text-embedding-3-small", 2) as e:
            e.record_usage(Usage(7, 0), dimensions=16)
        with spans.checkpoint("thread-1", 4), spans.policy("send_email", "allow") as p:
            p.record_decision("deny", "recipient outside allow-list")
        with pytest.raises(ValueError), spans.span("graph node plan", {"bastion.graph.node": "plan"}):
            raise ValueError("token sk-abcdefghijklmnopqrstuvwx leaked")
        with pytest.raises(GraphInterrupt), spans.span("graph node wait"):
            raise GraphInterrupt(["need approval"])
        a.add_evaluation("helpfulness", score=0.75, label="pass", explanation="ok")
        a.record_output({"answer": 42})


def _shape(records: list[SpanRecord]) -> list[dict[str, Any]]:
    """What a stored trace says, without ids and times (which differ run to run)."""
    names = {r.span_id: r.name for r in records}
    out: list[dict[str, Any]] = []
    for r in records:
        attrs = {k: v for k, v in r.attributes.items() if k != sc.BASTION_RUN_ID}
        events = [
            {
                "name": e["name"],
                "attributes": {
                    k: (v.splitlines()[0] if k == sc.EXCEPTION_STACKTRACE else v) for k, v in e["attributes"].items()
                },
            }
            for e in r.events
        ]
        out.append(
            {
                "name": r.name,
                "parent": names.get(r.parent_id) if r.parent_id else None,
                "kind": r.kind,
                "status": r.status,
                "status_message": r.status_message,
                "attributes": attrs,
                "events": events,
            }
        )
    return sorted(out, key=lambda d: d["name"])


def _stored(store: TraceStore, run_id: str) -> list[SpanRecord]:
    [summary] = store.list_traces(run_id=run_id)
    tree = store.get_trace(summary.trace_id)
    assert tree is not None
    assert {r.trace_id for r in tree.spans} == {summary.trace_id}
    return tree.spans


def test_the_lite_path_stores_exactly_what_the_sdk_path_stores(tmp_path: Path) -> None:
    with TraceStore(tmp_path / "t.db") as store:
        lite = configure_tracing(otlp_endpoint="", store=store, capture_content="span_attributes")
        try:
            assert lite.lite
            _workload("lite")
            assert lite.force_flush()
        finally:
            lite.shutdown()
        memory = InMemorySpanExporter()
        sdk = configure_tracing(otlp_endpoint="", store=store, exporters=[memory], capture_content="span_attributes")
        try:
            assert not sdk.lite
            _workload("sdk")
            assert sdk.force_flush()
        finally:
            sdk.shutdown()
        assert len(memory.get_finished_spans()) == 10  # the SDK path really ran through the SDK
        lite_spans, sdk_spans = _stored(store, "lite"), _stored(store, "sdk")
    assert len(lite_spans) == len(sdk_spans) == 10
    assert _shape(lite_spans) == _shape(sdk_spans)
    shape = {s["name"]: s for s in _shape(lite_spans)}
    # spot checks that the comparison covered the interesting parts
    assert shape["chat gpt-4o-mini"]["parent"] == "invoke_agent support"
    assert shape["chat gpt-4o-mini"]["kind"] == "CLIENT"
    assert shape["chat gpt-4o-mini"]["attributes"][sc.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]
    assert "sk-abcdefghijklmnopqrstuvwx" not in str(shape)  # redaction holds on both paths
    assert shape["graph node plan"]["status"] == "ERROR"
    assert shape["execute_tool search"]["status_message"] == "boom"
    assert shape["graph node wait"]["status"] == "UNSET"
    assert [e["name"] for e in shape["invoke_agent support"]["events"]] == [sc.EVENT_EVALUATION_RESULT]
    assert shape["policy send_email"]["parent"] == "checkpoint put"


def test_lite_spans_are_the_current_otel_span_and_instrumentation_nests_both_ways(tmp_path: Path) -> None:
    app_memory = InMemorySpanExporter()
    app_provider = TracerProvider()  # the application's own instrumentation (not global)
    app_provider.add_span_processor(SimpleSpanProcessor(app_memory))
    app = app_provider.get_tracer("app")
    with TraceStore(tmp_path / "t.db") as store:
        handle = configure_tracing(otlp_endpoint="", store=store, metrics=False)
        try:
            with app.start_as_current_span("HTTP POST /runs") as http:
                with spans.agent("a", CTX) as a:
                    current = trace.get_current_span()
                    assert isinstance(current, LiteSpan)
                    ctx = current.get_span_context()
                    assert (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")) == (a.trace_id, a.span_id)
                    with app.start_as_current_span("httpx GET"):  # e.g. an instrumented HTTP client
                        pass
            assert handle.force_flush()
            assert handle.lite  # a foreign provider's spans do not switch the path
            http_id = format(http.get_span_context().span_id, "016x")
            assert a.trace_id == format(http.get_span_context().trace_id, "032x")
            [stored] = store.spans(trace_id=a.trace_id)
            assert stored.parent_id == http_id
        finally:
            handle.shutdown()
    inner = next(s for s in app_memory.get_finished_spans() if s.name == "httpx GET")
    assert inner.parent is not None and format(inner.parent.span_id, "016x") == a.span_id
    assert inner.context is not None and format(inner.context.trace_id, "032x") == a.trace_id


def test_an_unsampled_parent_is_followed_like_the_sdk_sampler(tmp_path: Path) -> None:
    parent = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0)))
    with TraceStore(tmp_path / "t.db") as store:
        handle = configure_tracing(otlp_endpoint="", store=store, metrics=False)
        try:
            token = otel_context.attach(trace.set_span_in_context(parent))
            try:
                with spans.agent("unsampled", CTX) as a:
                    assert a.otel_span is not None and not a.otel_span.is_recording()
            finally:
                otel_context.detach(token)
            with spans.agent("sampled", CTX):
                pass
            assert handle.force_flush()
            assert [s.name for s in store.spans(run_id=CTX.run_id)] == ["invoke_agent sampled"]
        finally:
            handle.shutdown()


def test_taking_the_provider_switches_every_span_to_the_sdk_and_the_store_keeps_them(tmp_path: Path) -> None:
    memory = InMemorySpanExporter()
    with TraceStore(tmp_path / "t.db") as store:
        handle = configure_tracing(otlp_endpoint="", store=store, metrics=False)
        try:
            with spans.agent("before", CTX):
                pass
            assert handle.lite
            handle.provider.add_span_processor(SimpleSpanProcessor(memory))
            assert not handle.lite
            with spans.agent("after", CTX) as a:
                assert not isinstance(trace.get_current_span(), LiteSpan)
            assert handle.force_flush()
            assert {s.name for s in store.spans(run_id=CTX.run_id)} == {"invoke_agent before", "invoke_agent after"}
            assert [s.name for s in memory.get_finished_spans()] == ["invoke_agent after"]
            assert store.spans(trace_id=a.trace_id)[0].span_id == a.span_id
        finally:
            handle.shutdown()


def test_lite_span_follows_the_sdk_status_rules() -> None:
    from opentelemetry.trace import Status, StatusCode

    from bastion.tracing._lite import LiteTracer

    got: list[SpanRecord] = []
    tracer = LiteTracer(got.append)
    with tracer.start_as_current_span("ok-is-final") as s:
        s.set_status(StatusCode.OK, "ignored for OK")
        s.set_status(Status(StatusCode.ERROR, "too late"))
    with pytest.raises(KeyError), tracer.start_as_current_span("raises"):
        raise KeyError("k")
    with pytest.raises(OSError), tracer.start_span("plain with"):
        raise OSError("disk")
    span = tracer.start_span("ended")
    span.end()
    span.set_attribute("late", 1)
    span.end()  # a second end is ignored
    ok, raised, plain, ended = got
    assert (ok.status, ok.status_message) == ("OK", None)
    assert (raised.status, raised.status_message) == ("ERROR", "KeyError: 'k'")
    assert (plain.status, plain.status_message) == ("ERROR", "OSError: disk")
    assert plain.events[0]["attributes"]["exception.escaped"] == "True"
    assert [e["name"] for e in raised.events] == ["exception"]
    assert raised.events[0]["attributes"]["exception.type"] == "KeyError"
    assert ended.attributes == {} and len(got) == 4


def test_metrics_without_an_otlp_endpoint_never_load_the_otel_metrics_sdk(tmp_path: Path) -> None:
    """Metrics are aggregated in-process: the OpenTelemetry metrics SDK is only for OTLP push."""
    code = f"""
import sys
from bastion.tracing import TraceStore, configure_tracing, spans
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, Usage
store = TraceStore({str(tmp_path / "t.db")!r})
handle = configure_tracing(otlp_endpoint="", store=store)
ctx = RunContext(tenant="acme")
for i in range(3):
    with spans.chat("openai:gpt-4o", ModelRequest([Message.user("x")], context=ctx)) as c:
        c.record_response(ModelResponse(Message.assistant("y"), Usage(100, 20), model="openai:gpt-4o", cost_usd=0.5))
print(handle.prometheus_text())
print("SDK-METRICS-LOADED" if "opentelemetry.sdk.metrics" in sys.modules else "no sdk metrics")
print("SDK-SPANS-USED" if handle.provider._active_span_processor._span_processors else "no sdk spans")
handle.shutdown()
store.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "no sdk metrics" in out and "no sdk spans" in out
    assert 'gen_ai_client_operation_duration_count{gen_ai_operation_name="chat"' in out
    assert 'bastion_cost_usd_total{bastion_tenant_id="acme",gen_ai_request_model="gpt-4o"} 1.5' in out
    assert 'gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat"' in out


def test_histogram_buckets_follow_the_prometheus_le_convention(traced_metrics: TracingHandle) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    inst = traced_metrics.instruments
    assert inst is not None
    for value in (1, 4, 5, 10_000_000):  # on a bound, between bounds, beyond the last
        inst.token_usage.record(value, {"t": "x"})
    inst.token_usage.record(2, {"u": "1", "t": "y"})
    inst.token_usage.record(2, {"t": "y", "u": "1"})  # the same label set in another order
    samples = {
        (s.name, s.labels.get("le"), s.labels["t"]): s.value
        for fam in text_string_to_metric_families(traced_metrics.prometheus_text())
        for s in fam.samples
        if s.name.startswith("gen_ai_client_token_usage")
    }
    assert samples[("gen_ai_client_token_usage_bucket", "1.0", "x")] == 1
    assert samples[("gen_ai_client_token_usage_bucket", "4.0", "x")] == 2
    assert samples[("gen_ai_client_token_usage_bucket", "16.0", "x")] == 3
    assert samples[("gen_ai_client_token_usage_bucket", "+Inf", "x")] == 4
    assert samples[("gen_ai_client_token_usage_sum", None, "x")] == 10_000_010
    assert samples[("gen_ai_client_token_usage_count", None, "y")] == 2  # merged into one series


@pytest.fixture
def traced_metrics(tmp_path: Path) -> Iterator[TracingHandle]:
    with TraceStore(tmp_path / "t.db") as store:
        handle = configure_tracing(otlp_endpoint="", store=store)
        try:
            yield handle
        finally:
            handle.shutdown()


def test_a_backend_without_otlp_metrics_is_not_pushed_to_again(tmp_path: Path) -> None:
    """Phoenix answers /v1/metrics with 405: one attempt, then metrics stay local."""
    hits: dict[str, int] = {"/v1/traces": 0, "/v1/metrics": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                hits[self.path] = hits.get(self.path, 0) + 1
            self.send_response(200 if self.path == "/v1/traces" else 405)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        handle = configure_tracing(otlp_endpoint=url, metrics=True, metrics_interval_s=3600)
        try:
            assert not handle.lite  # an exporter wants SDK spans
            for _ in range(3):
                with spans.chat("openai:gpt-4o") as c:
                    c.record_response(ModelResponse(Message.assistant("y"), Usage(1, 1)))
                handle.force_flush()  # each flush collects and pushes metrics
            assert "gen_ai_client_operation_duration_count" in handle.prometheus_text()
        finally:
            handle.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert hits["/v1/metrics"] == 1
    assert hits["/v1/traces"] >= 1


@pytest.mark.slow
def test_the_default_setup_costs_no_more_per_span_than_plain_otel_with_a_batch_processor(tmp_path: Path) -> None:
    """The bench's headline row in small: median over interleaved rounds of default setup ÷
    plain OTel SDK + BatchSpanProcessor. It measures about 0.5x; 1.0 leaves room for load."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location("bench_tracing", Path(__file__).parents[2] / "bench" / "tracing.py")
    assert spec is not None and spec.loader is not None
    bench: Any = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.path[:] = saved  # the bench puts bench/ first on the path; keep it out of later tests
    bench.N_OVERHEAD = 3_000
    default, reference = bench._bastion_store(tmp_path, True), bench._plain_otel_batch
    ratios: list[float] = []
    for _ in range(5):
        per_span: list[float] = []
        for setup in (default, reference):
            with setup() as (loop, finish):
                loop(300)
                finish()
                per_span.append(bench._time_loop(loop, finish)[0])
        ratios.append(per_span[0] / per_span[1])
    assert statistics.median(ratios) <= 1.0, ratios
