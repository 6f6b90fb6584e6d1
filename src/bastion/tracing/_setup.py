"""`configure_tracing()`: where spans go (OTLP over HTTP or gRPC, the embedded store, both)
and whether content is captured. Telemetry goes nowhere until this is called (or a global
OpenTelemetry provider is installed by the application)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from bastion.errors import ConfigError
from bastion.tracing import semconv as sc
from bastion.tracing._state import STATE, CaptureMode

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from bastion.tracing._metrics import Instruments
    from bastion.tracing._store import TraceStore


@dataclass(slots=True)
class TracingHandle:
    """What `configure_tracing()` set up; `shutdown()` flushes and undoes it."""

    provider: TracerProvider
    store: TraceStore | None = None
    meter_provider: MeterProvider | None = None
    metric_reader: InMemoryMetricReader | None = None
    processors: list[SpanProcessor] = field(default_factory=list)
    instruments: Instruments | None = None

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export everything finished so far (OTLP batches and the store queue)."""
        ok = self.provider.force_flush(int(timeout_s * 1000))
        if self.instruments is not None:
            self.instruments.flush()
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(int(timeout_s * 1000)) and ok
        if self.store is not None:
            ok = self.store.flush(timeout_s) and ok
        return ok

    def prometheus_text(self) -> str:
        """Current metrics in the Prometheus text format (empty if metrics are off)."""
        from bastion.tracing._metrics import prometheus_text

        return prometheus_text(self.metric_reader) if self.metric_reader is not None else ""

    def shutdown(self) -> None:
        """Flush and stop exporters; the span helpers go back to no-op."""
        try:
            self.provider.shutdown()
            if self.instruments is not None:
                self.instruments.close()
            if self.meter_provider is not None:
                self.meter_provider.shutdown()
        finally:
            if STATE.tracer is not None and _OWNER.get("handle") is self:
                STATE.tracer = None
                STATE.capture = None
                STATE.instruments = None
                _OWNER.clear()


_OWNER: dict[str, TracingHandle] = {}


def _otlp_exporter(
    endpoint: str, protocol: Literal["http", "grpc"], headers: Mapping[str, str] | None, timeout_s: float
) -> SpanExporter:
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

        url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else endpoint.rstrip("/") + "/v1/traces"
        return HTTPExporter(endpoint=url, headers=dict(headers or {}), timeout=timeout_s)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

        insecure = endpoint.startswith("http://") or "://" not in endpoint
        return GRPCExporter(endpoint=endpoint, headers=dict(headers or {}), timeout=timeout_s, insecure=insecure)
    raise ConfigError(f"unknown OTLP protocol {protocol!r}; use 'http' (port 4318) or 'grpc' (port 4317)")


def _otlp_metric_reader(
    endpoint: str,
    protocol: Literal["http", "grpc"],
    headers: Mapping[str, str] | None,
    timeout_s: float,
    interval_s: float,
) -> MetricReader:
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

    exporter: MetricExporter
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetrics

        base = endpoint.rstrip("/").removesuffix("/v1/traces")
        exporter = HTTPMetrics(endpoint=base + "/v1/metrics", headers=dict(headers or {}), timeout=timeout_s)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GRPCMetrics

        insecure = endpoint.startswith("http://") or "://" not in endpoint
        exporter = GRPCMetrics(endpoint=endpoint, headers=dict(headers or {}), timeout=timeout_s, insecure=insecure)
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_s * 1000)


def configure_tracing(
    *,
    otlp_endpoint: str | None = None,
    protocol: Literal["http", "grpc"] = "http",
    headers: Mapping[str, str] | None = None,
    store: TraceStore | None = None,
    capture_content: CaptureMode | bool | None = None,
    service_name: str = "bastion",
    exporters: list[SpanExporter] | None = None,
    metrics: bool = True,
    metrics_interval_s: float = 60.0,
    set_global: bool = False,
    max_queue_size: int = 65536,
    export_timeout_s: float = 10.0,
) -> TracingHandle:
    """Send Bastion's spans somewhere and turn the span helpers on.

    `otlp_endpoint` (default `BASTION_OTLP_ENDPOINT`): a collector, Jaeger, Langfuse, Phoenix
    ... over `protocol` "http" (`http://host:4318`) or "grpc" (`http://host:4317`).
    `store`: the embedded SQLite `TraceStore`. `capture_content`: "off" (default, or the
    `capture_content` setting) or "span_attributes" (prompts and results on spans, redacted).
    `exporters`: any extra `SpanExporter`s (batched). With `metrics`, Bastion's metrics are
    kept for `prometheus_text()` and, with an OTLP endpoint, pushed every `metrics_interval_s`.
    `set_global` also installs the provider as OpenTelemetry's global one (once per process).
    Calling it again replaces the previous configuration (shut that one down yourself).
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if otlp_endpoint is None:
        from bastion.config import get_settings

        otlp_endpoint = get_settings().otlp_endpoint
    if isinstance(capture_content, bool):
        capture: CaptureMode | None = "span_attributes" if capture_content else "off"
    else:
        capture = capture_content
    if capture not in (None, "off", "span_attributes"):
        raise ConfigError(f"capture_content={capture!r}: use 'off' or 'span_attributes'")

    resource = Resource.create({"service.name": service_name, sc.BASTION_SCHEMA: sc.BASTION_SCHEMA_VERSION})
    provider = TracerProvider(resource=resource)
    handle = TracingHandle(provider=provider, store=store)
    all_exporters = list(exporters or [])
    if otlp_endpoint:
        all_exporters.append(_otlp_exporter(otlp_endpoint, protocol, headers, export_timeout_s))
    for exporter in all_exporters:
        # A big queue absorbs bursts; the SDK counts and logs what it still has to drop.
        processor = BatchSpanProcessor(
            exporter, max_queue_size=max_queue_size, export_timeout_millis=int(export_timeout_s * 1000)
        )
        provider.add_span_processor(processor)
        handle.processors.append(processor)
    if store is not None:
        processor = store.span_processor()
        provider.add_span_processor(processor)
        handle.processors.append(processor)

    if metrics:
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from bastion.tracing._metrics import configure_metrics

        reader = InMemoryMetricReader()
        handle.metric_reader = reader
        readers: list[MetricReader] = [reader]
        if otlp_endpoint:
            readers.append(_otlp_metric_reader(otlp_endpoint, protocol, headers, export_timeout_s, metrics_interval_s))
        # Exemplars would double the cost of each record on the span path; traces already
        # carry the per-call detail, so metrics stay aggregate.
        handle.meter_provider = MeterProvider(
            metric_readers=readers, resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
        )
        handle.instruments = configure_metrics(handle.meter_provider)

    elif STATE.instruments is not None:
        STATE.instruments.close()
        STATE.instruments = None
    if set_global:
        from opentelemetry import trace

        trace.set_tracer_provider(provider)
    STATE.tracer = provider.get_tracer("bastion", schema_url=sc.SCHEMA_URL)
    STATE.capture = capture
    _OWNER["handle"] = handle
    return handle
