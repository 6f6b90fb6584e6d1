"""`configure_tracing()`: where spans go (OTLP over HTTP or gRPC, the embedded store, both)
and whether content is captured. Telemetry goes nowhere until this is called (or a global
OpenTelemetry provider is installed by the application).

When the store is the only consumer, Bastion's span helpers skip the OpenTelemetry SDK
(`bastion.tracing._lite`); anything that needs SDK spans (an exporter, the global provider, a
processor or tracer taken from `TracingHandle.provider`) switches every span to the SDK."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bastion.errors import ConfigError
from bastion.tracing import semconv as sc
from bastion.tracing._state import STATE, CaptureMode, TraceFormat, settings_trace_format

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from bastion.tracing._metrics import Instruments
    from bastion.tracing._store import QueuedSpanWriter

logger = logging.getLogger("bastion.tracing")


@dataclass(slots=True)
class TracingHandle:
    """What `configure_tracing()` set up; `shutdown()` flushes and undoes it.

    `lite` is True while spans bypass the OpenTelemetry SDK (the store is their only consumer).
    """

    provider: TracerProvider
    store: QueuedSpanWriter | None = None
    meter_provider: MeterProvider | None = None
    processors: list[SpanProcessor] = field(default_factory=list)
    instruments: Instruments | None = None
    lite: bool = False

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
        return self.instruments.prometheus_text() if self.instruments is not None else ""

    def shutdown(self) -> None:
        """Flush and stop exporters; the span helpers go back to no-op."""
        try:
            if self.lite and self.store is not None:
                self.store.flush(10.0)
            self.provider.shutdown()
            if self.instruments is not None:
                self.instruments.close()
            if self.meter_provider is not None:
                self.meter_provider.shutdown()
        finally:
            if STATE.tracer is not None and _OWNER.get("handle") is self:
                STATE.tracer = None
                STATE.capture = None
                STATE.openinference = False
                if STATE.instruments is self.instruments:
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


def _stop_on_missing_route(exporter: MetricExporter, url: str) -> MetricExporter:
    """Trace-only backends (Phoenix, some Jaeger setups) answer `/v1/metrics` with 404 or 405
    forever: after the first such answer, stop pushing instead of failing every interval."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class StopOnMissingRoute(MetricExporter):
        def __init__(self) -> None:
            super().__init__(
                preferred_temporality=exporter._preferred_temporality,  # pyright: ignore[reportPrivateUsage]
                preferred_aggregation=exporter._preferred_aggregation,  # pyright: ignore[reportPrivateUsage]
            )
            self.stopped = False
            self.last_status: int | None = None
            client: Any = getattr(exporter, "_client", None)
            send = getattr(client, "export", None)
            if send is not None:

                def observed(*args: Any, **kwargs: Any) -> Any:
                    result = send(*args, **kwargs)
                    self.last_status = getattr(result, "status_code", None)
                    return result

                client.export = observed

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
            if self.stopped:
                return MetricExportResult.SUCCESS
            result = exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            if self.last_status in (404, 405):
                self.stopped = True
                logger.warning(
                    "%s answered HTTP %d: this backend takes no OTLP metrics, so Bastion stops pushing "
                    "them (traces still go there; /metrics still serves them). Pass metrics=False to "
                    "configure_tracing, or point BASTION_OTLP_ENDPOINT at a collector that accepts metrics.",
                    url,
                    self.last_status,
                )
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return exporter.force_flush(timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            exporter.shutdown(timeout_millis=timeout_millis, **kwargs)

    return StopOnMissingRoute()


def _otlp_metric_reader(
    endpoint: str,
    protocol: Literal["http", "grpc"],
    headers: Mapping[str, str] | None,
    timeout_s: float,
    interval_s: float,
) -> MetricReader:
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    exporter: MetricExporter
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPMetrics

        url = endpoint.rstrip("/").removesuffix("/v1/traces") + "/v1/metrics"
        exporter = _stop_on_missing_route(
            HTTPMetrics(endpoint=url, headers=dict(headers or {}), timeout=timeout_s), url
        )
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
    store: QueuedSpanWriter | None = None,
    capture_content: CaptureMode | bool | None = None,
    trace_format: TraceFormat | None = None,
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
    `store`: a trace store (`TraceStore` on SQLite, `PostgresTraceStore`). `capture_content`: "off" (default, or the
    `capture_content` setting) or "span_attributes" (prompts and results on spans, redacted).
    `trace_format` (default `BASTION_TRACE_FORMAT`): "gen_ai" (the OpenTelemetry GenAI
    conventions) or "openinference", which adds the OpenInference attributes Phoenix reads
    (span kinds, `input.value`/`output.value`, `llm.*` token counts) to the same spans.
    `exporters`: any extra `SpanExporter`s (batched). With `metrics`, Bastion's metrics are
    aggregated in-process for `prometheus_text()` (about a microsecond per measurement) and,
    with an OTLP endpoint, also pushed every `metrics_interval_s` through the OpenTelemetry
    metrics SDK (stopped if the endpoint answers 404/405 to metrics).
    `set_global` also installs the provider as OpenTelemetry's global one (once per process).
    Calling it again replaces the previous configuration (shut that one down yourself).
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from bastion.tracing._lite import LiteTracer, SwitchingProvider

    if otlp_endpoint is None:
        from bastion.config import get_settings

        otlp_endpoint = get_settings().otlp_endpoint
    if isinstance(capture_content, bool):
        capture: CaptureMode | None = "span_attributes" if capture_content else "off"
    else:
        capture = capture_content
    if capture not in (None, "off", "span_attributes"):
        raise ConfigError(f"capture_content={capture!r}: use 'off' or 'span_attributes'")
    if trace_format is None:
        trace_format = settings_trace_format()
    if trace_format not in ("gen_ai", "openinference"):
        raise ConfigError(
            f"trace_format={trace_format!r}: use 'gen_ai' (OpenTelemetry GenAI conventions) or 'openinference' "
            "(adds the attributes Phoenix reads)"
        )

    resource = Resource.create({"service.name": service_name, sc.BASTION_SCHEMA: sc.BASTION_SCHEMA_VERSION})
    provider = SwitchingProvider(resource=resource)
    handle = TracingHandle(provider=provider, store=store)
    all_exporters = list(exporters or [])
    if otlp_endpoint:
        all_exporters.append(_otlp_exporter(otlp_endpoint, protocol, headers, export_timeout_s))

    def use_sdk() -> None:
        """Route every span through the SDK (the store gets them through its processor)."""
        if store is not None:
            processor = store.span_processor()
            provider.add_span_processor(processor)
            handle.processors.append(processor)
        handle.lite = False
        if _OWNER.get("handle") is handle:
            STATE.tracer = provider.get_tracer("bastion", schema_url=sc.SCHEMA_URL)

    lite = not all_exporters and not set_global
    if lite:
        provider.watch(use_sdk)
    else:
        use_sdk()
    for exporter in all_exporters:
        # A big queue absorbs bursts; the SDK counts and logs what it still has to drop.
        processor = BatchSpanProcessor(
            exporter, max_queue_size=max_queue_size, export_timeout_millis=int(export_timeout_s * 1000)
        )
        provider.add_span_processor(processor)
        handle.processors.append(processor)

    if metrics:
        from bastion.tracing._metrics import configure_metrics

        meter_provider = None
        if otlp_endpoint:
            from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider

            reader = _otlp_metric_reader(otlp_endpoint, protocol, headers, export_timeout_s, metrics_interval_s)
            # Exemplars would double the SDK's cost per measurement; traces carry the detail.
            meter_provider = MeterProvider(
                metric_readers=[reader], resource=resource, exemplar_filter=AlwaysOffExemplarFilter()
            )
        handle.meter_provider = meter_provider
        handle.instruments = configure_metrics(meter_provider)
    elif STATE.instruments is not None:
        STATE.instruments.close()
        STATE.instruments = None
    if set_global:
        from opentelemetry import trace

        trace.set_tracer_provider(provider)
    _OWNER["handle"] = handle
    if lite:
        handle.lite = True
        STATE.tracer = LiteTracer(store.enqueue if store is not None else None)
    else:
        STATE.tracer = provider.get_tracer("bastion", schema_url=sc.SCHEMA_URL)
    STATE.capture = capture
    STATE.openinference = trace_format == "openinference"
    return handle
