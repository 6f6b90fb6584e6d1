"""The gateway reports each decision as a `policy` span, and span content loses every secret
the gateway injected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.policy import StaticSecretProvider
from bastion.tracing import TraceStore, TracingHandle, configure_tracing, redact, semconv
from bastion.types import ToolCall


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[InMemorySpanExporter, TracingHandle]]:
    exporter = InMemorySpanExporter()
    store = TraceStore(tmp_path / "traces.db")
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], store=store, capture_content="off")
    try:
        yield exporter, handle
    finally:
        handle.shutdown()
        store.close()


async def test_decisions_become_policy_spans(
    traced: tuple[InMemorySpanExporter, TracingHandle], tools: dict[str, Any], make_gateway: Any, ctx: Any
) -> None:
    exporter, handle = traced
    gw, _ = make_gateway()
    await gw.execute(ToolCall("fetch", {"url": "https://api.example.com/"}), tools, ctx([]))
    await gw.execute(ToolCall("fetch", {"url": "https://evil.example/"}), tools, ctx([]))
    assert handle.force_flush(5.0)
    spans = [s for s in exporter.get_finished_spans() if s.name == "policy fetch"]
    decisions = [dict(s.attributes or {})[semconv.BASTION_POLICY_DECISION] for s in spans]
    assert decisions == ["allow", "deny"]
    assert "declared-network" in dict(spans[1].attributes or {})[semconv.BASTION_POLICY_REASON]


async def test_injected_secrets_are_redacted_from_span_text(tools: dict[str, Any], make_gateway: Any, ctx: Any) -> None:
    secret = "canary-7f3a9e2b51c4"  # no credential shape: only exact matching can catch it
    assert redact(f"token {secret}") == f"token {secret}"
    gw, _ = make_gateway(secrets=StaticSecretProvider({"api_key": secret}))
    result = await gw.execute(ToolCall("whoami", {}), tools, ctx([]))
    assert secret not in result.content_text()
    assert secret not in redact(f"token {secret}")  # the tracer now knows the value too
