from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.tracing import TraceStore, TracingHandle, configure_tracing, set_redactor


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    s = TraceStore(tmp_path / "traces.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(exporter: InMemorySpanExporter, store: TraceStore) -> Iterator[TracingHandle]:
    """Tracing on: spans go to an in-memory exporter and the embedded store; content off."""
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], store=store, capture_content="off")
    try:
        yield handle
    finally:
        handle.shutdown()
        set_redactor(None)


@pytest.fixture
def traced_content(exporter: InMemorySpanExporter, store: TraceStore) -> Iterator[TracingHandle]:
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], store=store, capture_content="span_attributes")
    try:
        yield handle
    finally:
        handle.shutdown()
        set_redactor(None)


def dump_span(span: ReadableSpan) -> str:
    """Everything an exporter could send for a span, as one string."""
    data: dict[str, Any] = {
        "name": span.name,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "status": span.status.description,
    }
    return json.dumps(data, default=str)
