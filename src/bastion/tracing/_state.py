"""Process-wide tracing state: the configured tracer, content capture mode and metric
instruments. Empty until `configure_tracing()`; the span helpers read it on every call."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from bastion.tracing._metrics import Instruments

CaptureMode = Literal["off", "span_attributes"]
TraceFormat = Literal["gen_ai", "openinference"]


@dataclass(slots=True)
class TracingState:
    tracer: Tracer | None = None
    capture: CaptureMode | None = None  # None: follow `get_settings().capture_content`
    settings_capture: CaptureMode | None = None  # cached read of the settings
    instruments: Instruments | None = None
    openinference: bool = False  # also emit OpenInference attributes (trace_format="openinference")
    global_provider: object = None  # the global provider `global_tracer` was taken from
    global_tracer: Tracer | None = None


STATE = TracingState()


def active_tracer() -> Tracer | None:
    """The tracer spans go to, or None when nothing would record them.

    Checks `sys.modules` first: if OpenTelemetry was never imported nobody can have installed
    a global provider, so the no-op path never pays for importing it.
    """
    if STATE.tracer is not None:
        return STATE.tracer
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return None
    provider = otel.get_tracer_provider()
    if provider is STATE.global_provider:
        return STATE.global_tracer
    STATE.global_provider = provider
    if isinstance(provider, otel.ProxyTracerProvider | otel.NoOpTracerProvider):
        STATE.global_tracer = None
    else:
        from bastion.tracing.semconv import SCHEMA_URL

        STATE.global_tracer = provider.get_tracer("bastion", schema_url=SCHEMA_URL)
        STATE.openinference = settings_trace_format() == "openinference"
    return STATE.global_tracer


def settings_trace_format() -> TraceFormat:
    """The `trace_format` setting (`BASTION_TRACE_FORMAT`); "gen_ai" when the settings are bad
    (they surface elsewhere: a span must never fail the call it wraps)."""
    from bastion.config import get_settings
    from bastion.errors import ConfigError

    try:
        return get_settings().trace_format
    except ConfigError:
        return "gen_ai"


def capture_mode() -> CaptureMode:
    if STATE.capture is not None:
        return STATE.capture
    if STATE.settings_capture is None:
        from bastion.config import get_settings
        from bastion.errors import ConfigError

        try:
            on = get_settings().capture_content
        except ConfigError:
            on = False  # bad settings surface elsewhere; a span must never fail the call it wraps
        STATE.settings_capture = "span_attributes" if on else "off"
    return STATE.settings_capture
