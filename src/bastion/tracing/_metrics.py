"""Metric instruments (OpenTelemetry metrics API) and a Prometheus text exposition helper.

Instruments exist only after `configure_tracing(metrics=True)` (or `configure_metrics()`);
until then every `record_*` call is a cheap no-op, like the span helpers.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.tracing import semconv as sc
from bastion.tracing._state import STATE

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Meter, MeterProvider
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


_Apply = Callable[[float, Mapping[str, AttrValue]], None]


class _Recorder:
    """Applies metric measurements on a background thread.

    The SDK spends tens of microseconds per measurement (attribute hashing, aggregation
    locks); a chat span records four. Callers only append to a deque; the thread (or
    `drain()`, before every collection) feeds the SDK.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self._pending: deque[tuple[_Apply, float, Mapping[str, AttrValue]]] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stop = False
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name="bastion-metrics", daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[[float, Mapping[str, AttrValue]], None], value: float, attrs: Mapping[str, AttrValue]
    ) -> None:
        self._pending.append((fn, value, attrs))

    def drain(self) -> None:
        with self._lock:
            pending = self._pending
            while pending:
                fn, value, attrs = pending.popleft()
                try:
                    fn(value, attrs)
                except Exception:  # one bad measurement must not stop the others
                    logging.getLogger("bastion.tracing").exception("recording a metric failed")

    def _run(self) -> None:
        while not self._stop:
            self._wakeup.wait(self._interval_s)
            self.drain()

    def close(self) -> None:
        self._stop = True
        self._wakeup.set()
        self._thread.join(5)
        self.drain()


class _Deferred:
    """A counter or histogram whose `add`/`record` go through the recorder."""

    __slots__ = ("_fn", "_recorder")

    def __init__(self, fn: Callable[..., None], recorder: _Recorder) -> None:
        self._fn = fn
        self._recorder = recorder

    def add(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        self._recorder.submit(self._fn, value, attributes)

    record = add


@dataclass(slots=True)
class Instruments:
    token_usage: _Deferred
    duration: _Deferred
    cost: _Deferred
    tool_calls: _Deferred
    tool_errors: _Deferred
    spans_dropped: _Deferred
    cost_alerts: _Deferred
    circuit: _GaugeValues
    budget: _GaugeValues
    recorder: _Recorder

    def flush(self) -> None:
        """Apply every pending measurement now (before a collection)."""
        self.recorder.drain()

    def close(self) -> None:
        self.recorder.close()

    @classmethod
    def create(cls, meter: Meter) -> Instruments:
        recorder = _Recorder()
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
        token_usage = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(map(float, sc.TOKEN_USAGE_BUCKETS)),
        )
        duration = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        counters: dict[str, Counter] = {
            "cost": meter.create_counter(sc.METRIC_COST, unit="USD", description="money spent on model calls"),
            "tool_calls": meter.create_counter(sc.METRIC_TOOL_CALLS, description="tool calls executed"),
            "tool_errors": meter.create_counter(sc.METRIC_TOOL_ERRORS, description="tool calls that failed"),
            "spans_dropped": meter.create_counter(
                sc.METRIC_SPANS_DROPPED, description="spans the embedded store dropped (queue full)"
            ),
            "cost_alerts": meter.create_counter(sc.METRIC_COST_ALERTS, description="cost anomaly alerts"),
        }
        deferred = {name: _Deferred(c.add, recorder) for name, c in counters.items()}
        return cls(
            token_usage=_Deferred(token_usage.record, recorder),
            duration=_Deferred(duration.record, recorder),
            circuit=circuit,
            budget=budget,
            recorder=recorder,
            **deferred,
        )


def configure_metrics(meter_provider: MeterProvider | None = None) -> Instruments:
    """Create Bastion's instruments on `meter_provider` (the global one when None)."""
    if meter_provider is None:
        from opentelemetry import metrics

        meter_provider = metrics.get_meter_provider()
    instruments = Instruments.create(meter_provider.get_meter("bastion", schema_url=sc.SCHEMA_URL))
    previous, STATE.instruments = STATE.instruments, instruments
    if previous is not None:
        previous.close()
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
    inst.budget.set(used / limit if limit > 0 else math.inf, {sc.BASTION_BUDGET_SCOPE: scope})


def record_spans_dropped(count: int, store: str) -> None:
    inst = STATE.instruments
    if inst is not None and count:
        inst.spans_dropped.add(count, {sc.BASTION_STORE: store})


def record_cost_alert(kind: str) -> None:
    inst = STATE.instruments
    if inst is not None:
        inst.cost_alerts.add(1, {sc.BASTION_ALERT_KIND: kind})


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

    if STATE.instruments is not None:
        STATE.instruments.flush()
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
