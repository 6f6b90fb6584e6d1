"""Bastion's metrics: counters, histograms and gauges aggregated in-process, rendered in the
Prometheus text format, and pushed through the OpenTelemetry metrics SDK only when a meter
provider is attached (an OTLP endpoint).

Instruments exist only after `configure_tracing(metrics=True)` (or `configure_metrics()`);
until then every `record_*` call is a cheap no-op, like the span helpers. A measurement on
the span path is a dict update under a lock (about a microsecond): the SDK, which spends tens
of microseconds per measurement, is fed from a background thread and only when present.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.tracing import semconv as sc
from bastion.tracing._state import STATE

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

AttrValue = str | bool | int | float
# Label sets are keyed by their items in the caller's order (no sorting on the hot path);
# rendering merges keys that differ only in order.
_Key = tuple[tuple[str, AttrValue], ...]

CIRCUIT_STATES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}

_Apply = Callable[[float, Mapping[str, AttrValue]], None]


class _Recorder:
    """Feeds measurements to the OpenTelemetry metrics SDK on a background thread (only when
    one is attached): callers append to a deque; the thread, or `drain()` before an export,
    applies them."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self._pending: deque[tuple[_Apply, float, Mapping[str, AttrValue]]] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stop = False
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name="bastion-metrics", daemon=True)
        self._thread.start()

    def submit(self, fn: _Apply, value: float, attrs: Mapping[str, AttrValue]) -> None:
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


class Counter:
    """A monotonic sum per label set."""

    __slots__ = ("_lock", "description", "name", "sink", "values")

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.values: dict[_Key, float] = {}
        self._lock = threading.Lock()
        self.sink: tuple[_Apply, _Recorder] | None = None

    def add(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        self.add_key(value, tuple(attributes.items()))

    record = add

    def add_key(self, value: float, key: _Key) -> None:
        """`add` with the label set already as `(name, value)` pairs (the span path)."""
        with self._lock:
            self.values[key] = self.values.get(key, 0) + value
        if self.sink is not None:
            self.sink[1].submit(self.sink[0], value, dict(key))

    def snapshot(self) -> dict[_Key, float]:
        out: dict[_Key, float] = {}
        with self._lock:
            items = list(self.values.items())
        for key, value in items:
            k = tuple(sorted(key))
            out[k] = out.get(k, 0) + value
        return out


class Histogram:
    """Explicit-bucket histogram per label set (bucket i counts bounds[i-1] < v <= bounds[i],
    the OpenTelemetry and Prometheus convention)."""

    __slots__ = ("_lock", "bounds", "description", "name", "sink", "values")

    def __init__(self, name: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.description = description
        self.bounds = [float(b) for b in bounds]
        # per label set: [count, sum, bucket counts...]
        self.values: dict[_Key, list[float]] = {}
        self._lock = threading.Lock()
        self.sink: tuple[_Apply, _Recorder] | None = None

    def record(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        self.record_key(value, tuple(attributes.items()))

    add = record

    def record_key(self, value: float, key: _Key) -> None:
        """`record` with the label set already as `(name, value)` pairs (the span path)."""
        i = bisect.bisect_left(self.bounds, value) + 2
        with self._lock:
            row = self.values.get(key)
            if row is None:
                row = self.values[key] = [0.0] * (len(self.bounds) + 3)
            row[0] += 1
            row[1] += value
            row[i] += 1
        if self.sink is not None:
            self.sink[1].submit(self.sink[0], value, dict(key))

    def snapshot(self) -> dict[_Key, list[float]]:
        out: dict[_Key, list[float]] = {}
        with self._lock:
            items = [(k, list(v)) for k, v in self.values.items()]
        for key, row in items:
            k = tuple(sorted(key))
            if k in out:
                out[k] = [a + b for a, b in zip(out[k], row, strict=True)]
            else:
                out[k] = row
        return out


@dataclass(slots=True)
class _GaugeValues:
    """Last value per label set."""

    name: str
    description: str
    values: dict[_Key, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, value: float, attributes: Mapping[str, AttrValue]) -> None:
        with self.lock:
            self.values[tuple(sorted(attributes.items()))] = value

    def snapshot(self) -> dict[_Key, float]:
        with self.lock:
            return dict(self.values)

    def observe(self, _options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(v, dict(k)) for k, v in self.snapshot().items()]


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
    recorder: _Recorder | None = None

    @classmethod
    def create(cls) -> Instruments:
        return cls(
            token_usage=Histogram(
                sc.METRIC_TOKEN_USAGE, "Number of input and output tokens used", sc.TOKEN_USAGE_BUCKETS
            ),
            duration=Histogram(sc.METRIC_OPERATION_DURATION, "GenAI operation duration", sc.DURATION_BUCKETS),
            cost=Counter(sc.METRIC_COST, "money spent on model calls"),
            tool_calls=Counter(sc.METRIC_TOOL_CALLS, "tool calls executed"),
            tool_errors=Counter(sc.METRIC_TOOL_ERRORS, "tool calls that failed"),
            spans_dropped=Counter(sc.METRIC_SPANS_DROPPED, "spans the embedded store dropped (queue full)"),
            cost_alerts=Counter(sc.METRIC_COST_ALERTS, "cost anomaly alerts"),
            circuit=_GaugeValues(
                sc.METRIC_CIRCUIT_STATE, "circuit breaker state per provider+model: 0 closed, 1 half-open, 2 open"
            ),
            budget=_GaugeValues(sc.METRIC_BUDGET_USED, "fraction of a budget consumed"),
        )

    @property
    def counters(self) -> list[Counter]:
        return [self.cost, self.tool_calls, self.tool_errors, self.spans_dropped, self.cost_alerts]

    @property
    def histograms(self) -> list[Histogram]:
        return [self.token_usage, self.duration]

    def attach(self, meter: Meter) -> None:
        """Also feed every measurement to `meter` (an OpenTelemetry SDK meter, for OTLP push)."""
        recorder = self.recorder = _Recorder()
        meter.create_observable_gauge(
            self.circuit.name, callbacks=[self.circuit.observe], description=self.circuit.description
        )
        meter.create_observable_gauge(
            self.budget.name, callbacks=[self.budget.observe], unit="1", description=self.budget.description
        )
        units = {sc.METRIC_TOKEN_USAGE: "{token}", sc.METRIC_OPERATION_DURATION: "s"}
        for h in self.histograms:
            otel_h = meter.create_histogram(
                h.name,
                unit=units.get(h.name, ""),
                description=h.description,
                explicit_bucket_boundaries_advisory=h.bounds,
            )
            h.sink = (otel_h.record, recorder)
        for c in self.counters:
            otel_c = meter.create_counter(
                c.name, unit="USD" if c.name == sc.METRIC_COST else "", description=c.description
            )
            c.sink = (otel_c.add, recorder)

    def flush(self) -> None:
        """Apply every measurement still queued for the SDK (before an export)."""
        if self.recorder is not None:
            self.recorder.drain()

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def prometheus_text(self) -> str:
        """Everything recorded so far in the Prometheus text exposition format (0.0.4)."""
        lines: list[str] = []
        for g in (self.circuit, self.budget):
            values = g.snapshot()
            if values:
                name = _prom_name(g.name)
                lines += [f"# HELP {name} {g.description}", f"# TYPE {name} gauge"]
                lines += [f"{name}{_prom_labels(dict(k))} {_fmt(v)}" for k, v in values.items()]
        for h in self.histograms:
            rows = h.snapshot()
            if not rows:
                continue
            name = _prom_name(h.name)
            lines += [f"# HELP {name} {h.description}", f"# TYPE {name} histogram"]
            for key, row in rows.items():
                attrs = dict(key)
                cumulative = 0
                for bound, count in zip([*h.bounds, math.inf], row[2:], strict=True):
                    cumulative += int(count)
                    lines.append(f"{name}_bucket{_prom_labels(attrs, {'le': _fmt(bound)})} {cumulative}")
                lines.append(f"{name}_sum{_prom_labels(attrs)} {_fmt(row[1])}")
                lines.append(f"{name}_count{_prom_labels(attrs)} {int(row[0])}")
        for c in self.counters:
            values = c.snapshot()
            if not values:
                continue
            name = _prom_name(c.name)
            lines += [f"# HELP {name}_total {c.description}", f"# TYPE {name}_total counter"]
            lines += [f"{name}_total{_prom_labels(dict(k))} {_fmt(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n" if lines else ""


def configure_metrics(meter_provider: MeterProvider | None = None) -> Instruments:
    """Turn Bastion's metrics on (aggregated in-process, for `prometheus_text()`); with
    `meter_provider` (an OpenTelemetry SDK one), also report every measurement to it."""
    instruments = Instruments.create()
    if meter_provider is not None:
        instruments.attach(meter_provider.get_meter("bastion", schema_url=sc.SCHEMA_URL))
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


def prometheus_text(reader: InMemoryMetricReader | None = None) -> str:
    """Bastion's metrics in the Prometheus text exposition format (0.0.4), for a `/metrics`
    route: counters get `_total`, histograms `_bucket`/`_sum`/`_count`. Without `reader`, what
    the configured instruments aggregated (empty when metrics are off); with an OpenTelemetry
    `InMemoryMetricReader`, whatever that reader collects."""
    if reader is None:
        inst = STATE.instruments
        return inst.prometheus_text() if inst is not None else ""
    from opentelemetry.sdk.metrics.export import Gauge, Sum
    from opentelemetry.sdk.metrics.export import Histogram as OtelHistogram

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
                elif isinstance(d, OtelHistogram):
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
