"""The store-only span path: spans that become `SpanRecord`s without the OpenTelemetry SDK.

When the embedded store is the only consumer (no OTLP endpoint, no extra exporters, not the
global provider), the SDK's span machinery (attribute validation, locks, processors, the
`ReadableSpan` copy) is most of a span's cost and none of its value. `LiteTracer` makes spans
that implement the OpenTelemetry API `Span` interface (so `trace.set_span_in_context`, and
instrumentation that nests spans under ours through the context, keep working) and hands a
`SpanRecord` to the store when they end. Trace ids, parent links, events and status follow
the SDK's rules; `configure_tracing` switches to the SDK path as soon as anything else wants
the spans (see `SwitchingProvider`).
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from bastion.tracing._store import SpanRecord

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import Link
    from opentelemetry.util.types import Attributes, AttributeValue

_bits = random.getrandbits
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_time_ns = time.time_ns

Sink = Callable[[SpanRecord], object]


def _new_id(bits: int) -> int:
    while True:
        value = _bits(bits)
        if value:  # zero is the invalid id
            return value


class LiteSpan(trace.Span):
    """A recording span kept as plain Python values until it ends."""

    __slots__ = (
        "_attrs",
        "_context",
        "_end_ns",
        "_events",
        "_kind",
        "_name",
        "_parent_hex",
        "_sink",
        "_span_id",
        "_start_ns",
        "_status",
        "_status_message",
        "span_hex",
        "trace_hex",
        "trace_id_int",
    )

    def __init__(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        trace_id: int,
        trace_hex: str,
        parent_hex: str | None,
        sink: Sink | None,
        start_ns: int,
    ) -> None:
        self._name = name
        self._kind = kind
        self._attrs = attributes
        self.trace_id_int = trace_id
        self.trace_hex = trace_hex
        self._span_id = _new_id(64)
        self.span_hex = format(self._span_id, "016x")
        self._parent_hex = parent_hex
        self._sink = sink
        self._start_ns = start_ns
        self._end_ns: int | None = None
        self._events: list[dict[str, Any]] | None = None
        self._status = "UNSET"
        self._status_message: str | None = None
        self._context: SpanContext | None = None

    # --- read access, as on the SDK's spans (code reads the current span's attributes) ---
    @property
    def name(self) -> str:
        return self._name

    @property
    def attributes(self) -> Mapping[str, Any]:
        return MappingProxyType(self._attrs)

    # --- the OpenTelemetry API ---
    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(self.trace_id_int, self._span_id, is_remote=False, trace_flags=_SAMPLED)
        return self._context

    def is_recording(self) -> bool:
        return self._end_ns is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        # The SDK drops None values; keep the stored attributes the same.
        if self._end_ns is None and value is not None:
            self._attrs[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_ns is None:
            for key, value in attributes.items():
                if value is not None:
                    self._attrs[key] = value

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_ns is not None:
            return
        event = {"name": name, "time_ns": timestamp or _time_ns(), "attributes": dict(attributes or {})}
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        """Links are not kept by the store (it has no column for them)."""

    def update_name(self, name: str) -> None:
        if self._end_ns is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET is ignored, a description belongs to ERROR only.
        if self._end_ns is not None or self._status == "OK":
            return
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
            description = description if code is StatusCode.ERROR else None
        if code is StatusCode.UNSET:
            return
        self._status = code.name
        self._status_message = description

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        attrs: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_ns is not None:
            return
        self._end_ns = end = end_time or _time_ns()
        sink = self._sink
        if sink is not None:
            sink(
                SpanRecord(
                    self.trace_hex,
                    self.span_hex,
                    self._parent_hex,
                    self._name,
                    self._start_ns,
                    end,
                    self._status,
                    self._status_message,
                    self._kind.name,
                    self._attrs,
                    self._events or [],
                )
            )

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # As the SDK's spans do when used as `with tracer.start_span(...)`.
        if exc is not None and self._end_ns is None:
            self.record_exception(exc, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.end()

    def __repr__(self) -> str:
        return f"LiteSpan({self._name!r}, trace_id={self.trace_hex}, span_id={self.span_hex})"


class LiteTracer(trace.Tracer):
    """Starts `LiteSpan`s that go to `sink` (the store's `enqueue`; None: nowhere)."""

    def __init__(self, sink: Sink | None) -> None:
        self.sink = sink

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context)
        if type(parent) is LiteSpan:
            trace_id, trace_hex, parent_hex = parent.trace_id_int, parent.trace_hex, parent.span_hex
        else:
            pctx = parent.get_span_context()
            if pctx.trace_id != INVALID_TRACE_ID and pctx.span_id != INVALID_SPAN_ID:
                if not pctx.trace_flags.sampled:
                    # The SDK's default sampler follows an unsampled parent: nothing is recorded.
                    return NonRecordingSpan(
                        SpanContext(pctx.trace_id, _new_id(64), False, TraceFlags(0), pctx.trace_state)
                    )
                trace_id, parent_hex = pctx.trace_id, format(pctx.span_id, "016x")
            else:
                trace_id, parent_hex = _new_id(128), None
            trace_hex = format(trace_id, "032x")
        attrs = dict(attributes) if attributes else {}
        return LiteSpan(name, kind, attrs, trace_id, trace_hex, parent_hex, self.sink, start_time or _time_ns())

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Generator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class SwitchingProvider(TracerProvider):
    """The `TracerProvider` `configure_tracing` hands out. While only the store wants spans,
    Bastion's helpers bypass it (`LiteTracer`); the first span processor added to it, or the
    first tracer taken from it, calls `on_use` once so every span goes through the SDK from
    then on (the store's processor is attached then, so nothing misses the store)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_use: Callable[[], None] | None = None

    def watch(self, on_use: Callable[[], None]) -> None:
        self._on_use = on_use

    def _used(self) -> None:
        on_use, self._on_use = self._on_use, None
        if on_use is not None:
            on_use()

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self._used()
        super().add_span_processor(span_processor)

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        self._used()
        return super().get_tracer(*args, **kwargs)
