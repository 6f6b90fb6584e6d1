"""Metric instruments (OpenTelemetry metrics API) and a Prometheus text exposition helper.

Instruments exist only after `configure_tracing(metrics=True)` (or `configure_metrics()`);
until then every `record_*` call is a cheap no-op, like the span helpers.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.tracing import semconv as sc
from bastion.tracing._state import STATE

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

AttrValue = str | bool | int | float

CIRCUIT_STATES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(slots=True)
class _GaugeValues:
    """Last value per attribute set, read by an observable gauge callback."""

    values: dict[tuple[tuple[str, AttrValue], ...], float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        with self.lock:
            self.values[tuple(sorted(attributes.items()))] = value

    def observe(self, _options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self.lock:
            return [Observation(v, dict(k)) for k, v in self.values.items()]


@dataclass(slots=True)
class Instruments:
    token_usage: Histogram
    duration: Histogram
    cost: Counter
    tool_calls: Counter
    tool_errors: Counter
    spans_dropped: Counter
    cost_alerts: Counter
    circuit: _GaugeValues
    budget: _GaugeValues

    @classmethod
    def create(cls, meter: Meter) -> Instruments:
        circuit, budget = _GaugeValues(), _GaugeValues()
        meter.create_observable_gauge(
            sc.METRIC_CIRCUIT_STATE,
            callbacks=[circuit.observe],
            description="circuit breaker state per provider+model: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            sc.METRIC_BUDGET_USED,
            callbacks=[budget.observe],
            unit="1",
            description="fraction of a budget consumed",
        )
        return cls(
            token_usage=meter.create_histogram(
                sc.METRIC_TOKEN_USAGE,
                unit="{token}",
                description="Number of input and output tokens used",
                explicit_bucket_boundaries_advisory=list(map(float, sc.TOKEN_USAGE_BUCKETS)),
            ),
            duration=meter.create_histogram(
                sc.METRIC_OPERATION_DURATION,
                unit="s",
                description="GenAI operation duration",
                explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
            ),
            cost=meter.create_counter(sc.METRIC_COST, unit="USD", description="money spent on model calls"),
            tool_calls=meter.create_counter(sc.METRIC_TOOL_CALLS, description="tool calls executed"),
            tool_errors=meter.create_counter(sc.METRIC_TOOL_ERRORS, description="tool calls that failed"),
            spans_dropped=meter.create_counter(
                sc.METRIC_SPANS_DROPPED, description="spans the embedded store dropped (queue full)"
            ),
            cost_alerts=meter.create_counter(sc.METRIC_COST_ALERTS, description="cost anomaly alerts"),
            circuit=circuit,
            budget=budget,
        )


def configure_metrics(meter_provider: MeterProvider | None = None) -> Instruments:
    """Create Bastion's instruments on `meter_provider` (the global one when None)."""
    if meter_provider is None:
        from opentelemetry import metrics

        meter_provider = metrics.get_meter_provider()
    instruments = Instruments.create(meter_provider.get_meter("bastion", schema_url=sc.SCHEMA_URL))
    STATE.instruments = instruments
    return instruments


def record_circuit_state(provider: str, model: str, state: str) -> None:
    """Report a circuit breaker's state (`closed`, `half_open`, `open`)."""
    if state not in CIRCUIT_STATES:
        raise ValueError(f"unknown circuit state {state!r}; expected one of {sorted(CIRCUIT_STATES)}")
    inst = STATE.instruments
    if inst is None:
        return
    inst.circuit.set(CIRCUIT_STATES[state], {sc.GEN_AI_PROVIDER_NAME: provider, sc.GEN_AI_REQUEST_MODEL: model})


def record_budget(scope: str, used: float, limit: float) -> None:
    """Report how much of a budget (`scope`, e.g. `tenant:acme:daily`) is consumed."""
    inst = STATE.instruments
    if inst is None:
        return
    inst.budget.set(used / limit if limit > 0 else math.inf, {"bastion.budget.scope": scope})


def record_spans_dropped(count: int, store: str) -> None:
    inst = STATE.instruments
    if inst is not None and count:
        inst.spans_dropped.add(count, {"bastion.store": store})


def record_cost_alert(kind: str) -> None:
    inst = STATE.instruments
    if inst is not None:
        inst.cost_alerts.add(1, {"bastion.alert.kind": kind})


# --- Prometheus text exposition ---------------------------------------------------------------


def _prom_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _prom_labels(attributes: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> str:
    items = {**{_prom_name(k): v for k, v in attributes.items()}, **(extra or {})}
    if not items:
        return ""

    def esc(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(items.items())) + "}"


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def prometheus_text(reader: InMemoryMetricReader) -> str:
    """Render the metrics `reader` holds in the Prometheus text exposition format (0.0.4),
    for a `/metrics` route. Counters get `_total`, histograms `_bucket`/`_sum`/`_count`."""
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    data = reader.get_metrics_data()
    lines: list[str] = []
    if data is None:
        return ""
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                name = _prom_name(metric.name)
                d = metric.data
                if isinstance(d, Sum) and d.is_monotonic:
                    lines += [f"# HELP {name}_total {metric.description}", f"# TYPE {name}_total counter"]
                    lines += [f"{name}_total{_prom_labels(p.attributes or {})} {_fmt(p.value)}" for p in d.data_points]
                elif isinstance(d, Sum | Gauge):
                    lines += [f"# HELP {name} {metric.description}", f"# TYPE {name} gauge"]
                    lines += [f"{name}{_prom_labels(p.attributes or {})} {_fmt(p.value)}" for p in d.data_points]
                elif isinstance(d, Histogram):
                    lines += [f"# HELP {name} {metric.description}", f"# TYPE {name} histogram"]
                    for p in d.data_points:
                        attrs = p.attributes or {}
                        cumulative = 0
                        for bound, count in zip([*p.explicit_bounds, math.inf], p.bucket_counts, strict=True):
                            cumulative += count
                            lines.append(f"{name}_bucket{_prom_labels(attrs, {'le': _fmt(bound)})} {cumulative}")
                        lines.append(f"{name}_sum{_prom_labels(attrs)} {_fmt(p.sum)}")
                        lines.append(f"{name}_count{_prom_labels(attrs)} {p.count}")
    return "\n".join(lines) + "\n"
