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


def _tracing(exporter: InMemorySpanExporter, store: TraceStore, **options: Any) -> Iterator[TracingHandle]:
    """Spans go to the in-memory exporter and the embedded store; `options` for `configure_tracing`."""
    handle = configure_tracing(otlp_endpoint="", exporters=[exporter], store=store, **options)
    try:
        yield handle
    finally:
        handle.shutdown()
        set_redactor(None)


@pytest.fixture
def traced(exporter: InMemorySpanExporter, store: TraceStore) -> Iterator[TracingHandle]:
    """Tracing on, content off."""
    yield from _tracing(exporter, store, capture_content="off")


@pytest.fixture
def traced_content(exporter: InMemorySpanExporter, store: TraceStore) -> Iterator[TracingHandle]:
    yield from _tracing(exporter, store, capture_content="span_attributes")


@pytest.fixture
def oi_content(exporter: InMemorySpanExporter, store: TraceStore) -> Iterator[TracingHandle]:
    """Content on, with the OpenInference attributes."""
    yield from _tracing(exporter, store, capture_content="span_attributes", trace_format="openinference")


@pytest.fixture
def oi_no_content(exporter: InMemorySpanExporter, store: TraceStore) -> Iterator[TracingHandle]:
    yield from _tracing(exporter, store, capture_content="off", trace_format="openinference")


def dump_span(span: ReadableSpan) -> str:
    """Everything an exporter could send for a span, as one string."""
    data: dict[str, Any] = {
        "name": span.name,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "status": span.status.description,
    }
    return json.dumps(data, default=str)
