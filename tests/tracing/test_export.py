"""OTLP export to real receivers on 127.0.0.1 (HTTP/protobuf and gRPC), and the secret canary."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.errors import ConfigError
from bastion.tracing import TraceStore, configure_tracing, set_redactor, spans
from bastion.tracing import semconv as sc
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolCall, ToolResult, Usage

from .conftest import dump_span


class Received:
    """Spans a receiver decoded, with a condition to wait on (bounded)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.metric_names: set[str] = set()
        self.cond = threading.Condition()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]) -> None:
        with self.cond:
            for rs in request.resource_spans:
                self.resources.append(MessageToDict(rs.resource))
                for ss in rs.scope_spans:
                    self.spans.extend(MessageToDict(s) for s in ss.spans)
            self.headers.append(headers)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.spans) >= n, timeout), f"got {len(self.spans)} spans"
            return list(self.spans)


def _attrs(span: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.get("attributes", []):
        value = kv["value"]
        out[kv["key"]] = next(iter(value.values())) if value else None
    return out


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/metrics":
                metrics_request = metrics_service_pb2.ExportMetricsServiceRequest()
                metrics_request.ParseFromString(body)
                with received.cond:
                    received.metric_names.update(
                        m.name for rm in metrics_request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                    )
                    received.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.add(request, dict(self.headers.items()))
            payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.add(request, {k: v for k, v in context.invocation_metadata()})
            return trace_service_pb2.ExportTraceServiceResponse()

    pool = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(pool)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None).wait(5)
        pool.shutdown(wait=True)


def _nested_run() -> str:
    ctx = RunContext(tenant="acme", run_id="run-otlp")
    with spans.agent("support", ctx) as a:
        with spans.chat("openai:gpt-4o", ModelRequest([Message.user("hi")], context=ctx)) as c:
            c.record_response(ModelResponse(Message.assistant("hello"), Usage(5, 2), model="openai:gpt-4o"))
        with spans.tool("lookup", "call_1") as t:
            t.record_result(ToolResult("call_1", "lookup", "ok"))
    assert a.trace_id
    return a.trace_id


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_otlp_export_reaches_a_real_receiver(
    protocol: str, http_receiver: tuple[str, Received], grpc_receiver: tuple[str, Received]
) -> None:
    endpoint, received = http_receiver if protocol == "http" else grpc_receiver
    handle = configure_tracing(
        otlp_endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]
        headers={"x-tenant-key": "abc"},
        service_name="svc-under-test",
        metrics=protocol == "http",
    )
    try:
        trace_id = _nested_run()
        assert handle.force_flush(10)
    finally:
        handle.shutdown()
    got = received.wait_for(3)
    by_name = {s["name"]: s for s in got}
    assert set(by_name) == {"invoke_agent support", "chat gpt-4o", "execute_tool lookup"}
    # protobuf JSON renders ids as base64 bytes
    import base64

    assert {base64.b64decode(s["traceId"]).hex() for s in got} == {trace_id}
    root_id = by_name["invoke_agent support"]["spanId"]
    assert by_name["chat gpt-4o"]["parentSpanId"] == root_id
    chat = _attrs(by_name["chat gpt-4o"])
    assert chat[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert chat[sc.GEN_AI_USAGE_INPUT_TOKENS] == "5"  # int64 is a string in protobuf JSON
    assert chat[sc.BASTION_RUN_ID] == "run-otlp"
    service = {kv["key"]: kv["value"] for kv in received.resources[0]["attributes"]}
    assert service["service.name"] == {"stringValue": "svc-under-test"}
    assert any(h.get("x-tenant-key") == "abc" for h in received.headers)
    if protocol == "http":  # metrics ride along to /v1/metrics on the same collector
        assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage"} <= received.metric_names


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="use 'http'"):
        configure_tracing(otlp_endpoint="http://127.0.0.1:1", protocol="zmq")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="capture_content"):
        configure_tracing(otlp_endpoint="", capture_content="everything")  # type: ignore[arg-type]


CANARIES = [
    "sk-proj-CANARYabcdefghijklmnop0123456789",
    "sk-ant-api03-CANARYzyxwvutsrqponmlk",
    "sk-CANARY0123456789abcdefghij",
    "Bearer CANARYeyJhbGciOiJIUzI1NiJ9.payload.sig",
]


def test_canary_secrets_never_reach_exported_spans(http_receiver: tuple[str, Received], tmp_path: Any) -> None:
    endpoint, received = http_receiver
    memory = InMemorySpanExporter()
    store = TraceStore(tmp_path / "t.db")
    handle = configure_tracing(
        otlp_endpoint=endpoint, exporters=[memory], store=store, capture_content="span_attributes"
    )
    secret_text = " ".join(CANARIES)
    ctx = RunContext(tenant="acme", run_id="run-canary")
    try:
        with spans.agent("leaky", ctx, input=f"my key is {secret_text}") as a:
            request = ModelRequest([Message.user(f"use {secret_text}")], context=ctx)
            with spans.chat("openai:gpt-4o", request) as c:
                c.record_response(
                    ModelResponse(
                        Message.assistant(f"sure: {CANARIES[0]}", tool_calls=[ToolCall("http", {"auth": CANARIES[3]})]),
                        Usage(1, 1),
                    )
                )
            with spans.tool("http", "c1", "write", arguments={"headers": {"Authorization": CANARIES[3]}}) as t:
                t.record_result(ToolResult("c1", "http", f"echo {CANARIES[1]}", is_error=True))
            with pytest.raises(RuntimeError), spans.tool("crash", "c2"):
                raise RuntimeError(f"failed with key {CANARIES[2]}")
            with spans.retrieval("kb", f"find {CANARIES[0]}"):
                pass
            with spans.policy("http", "deny", f"argument contains {CANARIES[2]}"):
                pass
            a.record_output(f"done {CANARIES[1]}")
            a.add_evaluation("judge", score=0.0, explanation=f"leaked {CANARIES[0]}")
        assert handle.force_flush(10)
    finally:
        handle.shutdown()
    exported = received.wait_for(6)
    blobs = [json.dumps(exported), *(dump_span(s) for s in memory.get_finished_spans())]
    blobs += [json.dumps(s.attributes) + json.dumps(s.events) for s in store.spans(run_id="run-canary")]
    store.close()
    assert len(memory.get_finished_spans()) == 6
    for blob in blobs:
        assert "CANARY" not in blob
    assert "[REDACTED]" in blobs[0]


def test_custom_redactor_seam_removes_registered_secret_values() -> None:
    memory: InMemorySpanExporter = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[memory], capture_content="span_attributes")
    set_redactor(lambda text: text.replace("hunter2-db-password", "[SECRET:db]"))
    try:
        with spans.tool("db", "c1", arguments={"dsn": "postgres://app:hunter2-db-password@db/x"}) as t:
            t.record_result(ToolResult("c1", "db", "ok"))
        handle.force_flush()
    finally:
        handle.shutdown()
        set_redactor(None)
    [span] = memory.get_finished_spans()
    dumped = dump_span(span)
    assert "hunter2" not in dumped and "[SECRET:db]" in dumped


def test_policy_redactor_plugs_into_the_seam() -> None:
    from bastion.policy import Redactor

    policy_redactor = Redactor(use_detect_secrets=False)
    policy_redactor.add("injected-db-secret-value")
    memory = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[memory], capture_content="span_attributes", metrics=False)
    set_redactor(policy_redactor)
    try:
        with spans.tool("db", "c1", arguments={"password": "injected-db-secret-value"}) as t:
            t.record_result(ToolResult("c1", "db", f"token {CANARIES[0]}"))
        handle.force_flush()
    finally:
        handle.shutdown()
        set_redactor(None)
    [span] = memory.get_finished_spans()
    dumped = dump_span(span)
    assert "injected-db-secret-value" not in dumped and "CANARY" not in dumped
