"""Observability (layer 4): OpenTelemetry spans with the GenAI semantic conventions, an
trace store (embedded SQLite, or PostgreSQL when scaled out), metrics, and cost attribution with anomaly alerts.

Every other layer calls the span helpers (`from bastion.tracing import spans`); they cost
almost nothing until `configure_tracing()` sends spans somewhere. Attribute names live in one
versioned module, `bastion.tracing.semconv`. This package does not evaluate agents (see
`bastion.evals`) and does not enforce budgets (the gateway does; it reports them here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr
from bastion.tracing import semconv, spans
from bastion.tracing._redact import redact, set_redactor

_LAZY: dict[str, str] = {
    "configure_tracing": "bastion.tracing._setup",
    "TracingHandle": "bastion.tracing._setup",
    "TraceStore": "bastion.tracing._store",
    "PostgresTraceStore": "bastion.tracing._store_pg",
    "SpanStore": "bastion.tracing._store_protocol",
    "open_trace_store": "bastion.tracing._store_protocol",
    "SpanRecord": "bastion.tracing._store",
    "TraceTree": "bastion.tracing._store",
    "TraceSummary": "bastion.tracing._store",
    "StoreStats": "bastion.tracing._store",
    "configure_metrics": "bastion.tracing._metrics",
    "record_budget": "bastion.tracing._metrics",
    "record_circuit_state": "bastion.tracing._metrics",
    "prometheus_text": "bastion.tracing._metrics",
    "CostRow": "bastion.tracing._cost",
    "cost_by": "bastion.tracing._cost",
    "cost_series": "bastion.tracing._cost",
    "record_tool_cost": "bastion.tracing._cost",
    "active_tracer": "bastion.tracing._state",
    "queue_gauges_text": "bastion.tracing._queue_gauges",
    "CostAlert": "bastion.tracing._alerts",
    "CostMonitor": "bastion.tracing._alerts",
    "AlertSink": "bastion.tracing._alerts",
    "LogSink": "bastion.tracing._alerts",
    "WebhookSink": "bastion.tracing._alerts",
    "CallbackSink": "bastion.tracing._alerts",
    "start_cost_alerts": "bastion.tracing._alerts",
    "AlertLedger": "bastion.tracing._alert_ledger",
    "open_alert_ledger": "bastion.tracing._alert_ledger",
}

if TYPE_CHECKING:
    from bastion.tracing._alert_ledger import AlertLedger, open_alert_ledger
    from bastion.tracing._alerts import (
        AlertSink,
        CallbackSink,
        CostAlert,
        CostMonitor,
        LogSink,
        WebhookSink,
        start_cost_alerts,
    )
    from bastion.tracing._cost import CostRow, cost_by, cost_series, record_tool_cost
    from bastion.tracing._metrics import (
        configure_metrics,
        prometheus_text,
        record_budget,
        record_circuit_state,
    )
    from bastion.tracing._queue_gauges import queue_gauges_text
    from bastion.tracing._setup import TracingHandle, configure_tracing
    from bastion.tracing._state import active_tracer
    from bastion.tracing._store import SpanRecord, StoreStats, TraceStore, TraceSummary, TraceTree
    from bastion.tracing._store_pg import PostgresTraceStore
    from bastion.tracing._store_protocol import SpanStore, open_trace_store

__all__ = [
    "AlertLedger",
    "AlertSink",
    "CallbackSink",
    "CostAlert",
    "CostMonitor",
    "CostRow",
    "LogSink",
    "PostgresTraceStore",
    "SpanRecord",
    "SpanStore",
    "StoreStats",
    "TraceStore",
    "TraceSummary",
    "TraceTree",
    "TracingHandle",
    "WebhookSink",
    "active_tracer",
    "configure_metrics",
    "configure_tracing",
    "cost_by",
    "cost_series",
    "open_alert_ledger",
    "open_trace_store",
    "prometheus_text",
    "queue_gauges_text",
    "record_budget",
    "record_circuit_state",
    "record_tool_cost",
    "redact",
    "semconv",
    "set_redactor",
    "spans",
    "start_cost_alerts",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
