"""Cost anomaly alerts: a run or a tenant spending over N times its recent baseline, or a
budget crossing a threshold, delivered to configurable sinks (log, webhook, callback).

The monitor reads the trace store. `bastion serve` and `bastion worker` run it in the
background (`CostMonitor.run_forever`, every `BASTION_COST_ALERT_INTERVAL_S`); call
`check_recent()` or the individual checks yourself otherwise. Each alert fires once per
(kind, key, slot), remembered in the store's database across restarts. A failing sink is
logged and counted, and never stops the other sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from bastion.errors import UserError
from bastion.tracing._alert_ledger import AlertLedger, open_alert_ledger
from bastion.tracing._cost import cost_series, total_cost
from bastion.tracing._metrics import record_budget, record_cost_alert
from bastion.tracing._store_protocol import SpanStore

AlertKind = Literal["run_anomaly", "run_threshold", "tenant_anomaly", "tenant_threshold", "budget_threshold"]

logger = logging.getLogger("bastion.cost")


@dataclass(slots=True)
class CostAlert:
    kind: AlertKind
    key: str  # the run id, tenant or budget scope
    observed_usd: float
    baseline_usd: float  # the baseline (anomalies) or the limit (budgets)
    ratio: float  # observed / baseline
    message: str
    at: float = field(default_factory=time.time)
    tenant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertSink(Protocol):
    async def send(self, alert: CostAlert) -> None: ...


class LogSink:
    """Log each alert (WARNING on the `bastion.cost` logger by default)."""

    def __init__(self, logger_: logging.Logger | None = None, level: int = logging.WARNING) -> None:
        self._logger = logger_ or logger
        self._level = level

    async def send(self, alert: CostAlert) -> None:
        self._logger.log(self._level, "cost alert [%s] %s", alert.kind, alert.message)


class CallbackSink:
    """Call `fn(alert)` (sync or async)."""

    def __init__(self, fn: Callable[[CostAlert], Awaitable[None] | None]) -> None:
        self._fn = fn

    async def send(self, alert: CostAlert) -> None:
        result = self._fn(alert)
        if inspect.isawaitable(result):
            await result


class WebhookSink:
    """POST each alert as JSON to `url`; a non-2xx answer raises (and the monitor counts it)."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserError(f"WebhookSink url {url!r} must start with http:// or https://")
        self.url = url
        self._headers = dict(headers or {})
        self._timeout_s = timeout_s

    async def send(self, alert: CostAlert) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, json={"alert": alert.to_dict()}, headers=self._headers) as resp,
        ):
            if resp.status >= 300:
                body = await resp.text()
                raise RuntimeError(f"webhook {self.url} answered HTTP {resp.status}: {body[:200]}")


class CostMonitor:
    """Detect cost anomalies in a trace store and send `CostAlert`s to `sinks`.

    **Runs.** A run's cost is everything its trace spent (the root run: a supervisor's members,
    tools and sub-agents included), labelled by the root agent (the first agent span to start).
    Its baseline is the last `baseline_runs` root runs of the same root agent and tenant
    (median and MAD, so one earlier spike does not move it). With at least `min_baseline` of them
    a run alerts (`run_anomaly`) when

        cost > max(min_alert_usd, median + mad_k * 1.4826 * MAD, factor * median)

    Independently, any run costing more than `run_limit_usd` alerts (`run_threshold`): this
    needs no history, so a brand-new tenant or agent can alert.

    **Tenants.** A tenant alerts (`tenant_anomaly`) when its spend over the last `window_s` is
    above `factor` x the median of its spend per window over the `baseline_windows` windows
    before (and above `min_alert_usd`), and (`tenant_threshold`) when that spend is above
    `tenant_limit_usd` (or its entry in `tenant_limits`), history or not.

    **Budgets** alert at each of `thresholds` (fractions of the limit) once.

    `check_recent()` scans root runs that finished since its previous call and started at most
    `max_run_s` before it (longer runs: call `check_trace` for them).

    Each alert fires once per (kind, key, slot): the `ledger` remembers it (by default a
    `cost_alerts` table in the store's own database), so a restart does not fire it again.
    `run_forever()` is the background loop `bastion serve` and `bastion worker` start.
    """

    def __init__(
        self,
        store: SpanStore,
        sinks: Sequence[AlertSink] = (),
        *,
        factor: float = 3.0,
        mad_k: float = 5.0,
        min_alert_usd: float = 0.01,
        baseline_runs: int = 20,
        min_baseline: int = 5,
        run_limit_usd: float | None = None,
        tenant_limit_usd: float | None = None,
        tenant_limits: Mapping[str, float] | None = None,
        window_s: float = 3600.0,
        baseline_windows: int = 24,
        baseline_lookback_s: float = 30 * 86_400.0,
        max_run_s: float = 3600.0,
        thresholds: Sequence[float] = (0.8, 1.0),
        ledger: AlertLedger | None = None,
    ) -> None:
        if factor <= 1.0:
            raise UserError(f"CostMonitor factor={factor}: must be above 1 (an alert at N x the baseline)")
        for name, value in (("run_limit_usd", run_limit_usd), ("tenant_limit_usd", tenant_limit_usd)):
            if value is not None and value <= 0:
                raise UserError(f"CostMonitor {name}={value}: must be a positive amount in USD, or None for no limit")
        if min_alert_usd <= 0:
            raise UserError(f"CostMonitor min_alert_usd={min_alert_usd}: must be positive (the smallest alerting cost)")
        self.store = store
        self.sinks = list(sinks) or [LogSink()]
        self.factor = factor
        self.mad_k = mad_k
        self.min_alert_usd = min_alert_usd
        self.baseline_runs = baseline_runs
        self.min_baseline = min_baseline
        self.run_limit_usd = run_limit_usd
        self.tenant_limit_usd = tenant_limit_usd
        self.tenant_limits = dict(tenant_limits or {})
        self.window_s = window_s
        self.baseline_windows = baseline_windows
        self.baseline_lookback_s = baseline_lookback_s
        self.max_run_s = max_run_s
        self.thresholds = sorted(thresholds)
        self.ledger: AlertLedger = ledger if ledger is not None else open_alert_ledger(store)
        self.delivery_failures = 0
        self.check_failures = 0
        self.sent: list[CostAlert] = []
        self._last_check_ns: int | None = None

    @classmethod
    def from_settings(cls, store: SpanStore) -> CostMonitor:
        """The monitor a server or worker runs: thresholds and webhook from the settings
        (`BASTION_COST_ALERT_*`), alerts logged on `bastion.cost` (and posted to the webhook)."""
        from bastion.config import get_settings

        s = get_settings()
        sinks: list[AlertSink] = [LogSink()]
        if s.cost_alert_webhook:
            sinks.append(WebhookSink(s.cost_alert_webhook))
        return cls(store, sinks, run_limit_usd=s.cost_alert_run_usd, tenant_limit_usd=s.cost_alert_tenant_usd)

    def close(self) -> None:
        self.ledger.close()

    async def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # Store queries block (sqlite3 / psycopg): off the event loop, the server keeps serving.
        return await asyncio.to_thread(self.store.query, sql, params)

    async def _emit(self, alert: CostAlert, slot: str = "") -> CostAlert | None:
        claimed = await asyncio.to_thread(
            self.ledger.claim, alert.kind, alert.key, slot, alert.tenant, alert.at, alert.to_dict()
        )
        if not claimed:
            return None
        record_cost_alert(alert.kind)
        self.sent.append(alert)
        for sink in self.sinks:
            try:
                await sink.send(alert)
            except Exception:
                self.delivery_failures += 1
                logger.exception("cost alert sink %s failed", type(sink).__name__)
        return alert

    async def check_run(self, run_id: str) -> CostAlert | None:
        """Check the root run `run_id` belongs to (its first trace); the first alert that fired
        (`check_trace` returns them all; every one goes to the sinks)."""
        rows = await self._query(
            f"SELECT trace_id FROM {self.store.table} WHERE run_id = ? ORDER BY start_ns LIMIT 1", (run_id,)
        )
        alerts = await self.check_trace(rows[0][0]) if rows else []
        return alerts[0] if alerts else None

    async def check_trace(self, trace_id: str) -> list[CostAlert]:
        """Check the root run of a trace against its baseline and `run_limit_usd`."""
        t = self.store.table
        rows = await self._query(
            f"""SELECT coalesce(sum(cost_usd), 0), min(start_ns), max(tenant),
                   (SELECT a.agent FROM {t} a WHERE a.trace_id = ? AND a.agent IS NOT NULL
                     ORDER BY a.start_ns, a.end_ns DESC LIMIT 1),
                   (SELECT r.run_id FROM {t} r WHERE r.trace_id = ? AND r.run_id IS NOT NULL
                     ORDER BY r.start_ns, r.end_ns DESC LIMIT 1)
                FROM {t} WHERE trace_id = ?""",
            (trace_id, trace_id, trace_id),
        )
        cost_raw, start, tenant, agent, run_id = rows[0]
        if start is None:
            return []
        cost, key = float(cost_raw), run_id or trace_id
        alerts: list[CostAlert] = []
        if self.run_limit_usd is not None and cost > self.run_limit_usd:
            alert = CostAlert(
                "run_threshold", key, cost, self.run_limit_usd, cost / self.run_limit_usd,
                f"run {key} (agent {agent}, tenant {tenant}) cost ${cost:.4f}, over the per-run limit "
                f"of ${self.run_limit_usd:.4f}",
                tenant=tenant,
            )  # fmt: skip
            if (a := await self._emit(alert)) is not None:
                alerts.append(a)
        costs = await self._baseline_costs(trace_id, int(start), tenant, agent)
        if len(costs) < self.min_baseline:
            return alerts
        median, mad = _median(costs), _mad(costs)
        limit = max(self.min_alert_usd, median + self.mad_k * 1.4826 * mad, self.factor * median)
        if cost <= limit:
            return alerts
        ratio = cost / max(median, self.min_alert_usd)
        alert = CostAlert(
            "run_anomaly", key, cost, median, ratio,
            f"run {key} (agent {agent}, tenant {tenant}) cost ${cost:.4f}, {ratio:.1f}x the median of its "
            f"last {len(costs)} runs (${median:.4f}, MAD ${mad:.4f}; alert limit ${limit:.4f})",
            tenant=tenant,
        )  # fmt: skip
        if (a := await self._emit(alert)) is not None:
            alerts.append(a)
        return alerts

    async def _baseline_costs(self, trace_id: str, start: int, tenant: str | None, agent: str | None) -> list[float]:
        """Costs of the last `baseline_runs` root runs of `agent` in `tenant` before `start`."""
        t = self.store.table
        lookback = start - int(self.baseline_lookback_s * 1e9)
        # Candidates: recent traces where the agent appears at all (bounded); then keep those it roots.
        candidates = await self._query(
            f"""SELECT trace_id FROM {t} WHERE tenant IS NOT DISTINCT FROM ? AND agent IS NOT DISTINCT FROM ?
                AND start_ns < ? AND start_ns >= ? AND trace_id != ?
                GROUP BY trace_id ORDER BY min(start_ns) DESC LIMIT ?""",
            (tenant, agent, start, lookback, trace_id, self.baseline_runs * 4),
        )
        ids = [c[0] for c in candidates]
        if not ids:
            return []
        rows = await self._query(
            f"""SELECT s.trace_id, coalesce(sum(s.cost_usd), 0), min(s.start_ns),
                   (SELECT a.agent FROM {t} a WHERE a.trace_id = s.trace_id AND a.agent IS NOT NULL
                     ORDER BY a.start_ns, a.end_ns DESC LIMIT 1)
                FROM {t} s WHERE s.trace_id IN ({", ".join("?" for _ in ids)})
                GROUP BY s.trace_id ORDER BY min(s.start_ns) DESC""",
            ids,
        )
        costs = [float(cost) for _, cost, first, root in rows if root == agent and first is not None and first < start]
        return costs[: self.baseline_runs]

    async def check_tenant(self, tenant: str, *, now: float | None = None) -> CostAlert | None:
        """Check the tenant's spend in the last `window_s`; the first alert that fired."""
        alerts = await self.check_tenant_all(tenant, now=now)
        return alerts[0] if alerts else None

    async def check_tenant_all(self, tenant: str, *, now: float | None = None) -> list[CostAlert]:
        """Check the tenant's spend in the last `window_s` (absolute limit, then anomaly)."""
        now = time.time() if now is None else now
        current = await asyncio.to_thread(total_cost, self.store, tenant=tenant, since=now - self.window_s, until=now)
        window_index = str(int(now // self.window_s))
        alerts: list[CostAlert] = []
        limit_usd = self.tenant_limits.get(tenant, self.tenant_limit_usd)
        if limit_usd is not None and current > limit_usd:
            alert = CostAlert(
                "tenant_threshold", tenant, current, limit_usd, current / limit_usd,
                f"tenant {tenant} spent ${current:.4f} in the last {self.window_s:.0f}s, over its limit of "
                f"${limit_usd:.4f} per window",
                tenant=tenant,
            )  # fmt: skip
            if (a := await self._emit(alert, window_index)) is not None:
                alerts.append(a)
        history = await asyncio.to_thread(
            cost_series, self.store, "tenant", bucket_s=self.window_s,
            since=now - self.window_s * (self.baseline_windows + 1), until=now - self.window_s, tenant=tenant,
        )  # fmt: skip
        per_window = history.get(tenant, [])
        baseline = _median(per_window) if per_window else 0.0
        if baseline <= 0 or current <= max(self.min_alert_usd, self.factor * baseline):
            return alerts
        ratio = current / baseline
        alert = CostAlert(
            "tenant_anomaly", tenant, current, baseline, ratio,
            f"tenant {tenant} spent ${current:.4f} in the last {self.window_s:.0f}s, {ratio:.1f}x its "
            f"median of ${baseline:.4f} per window",
            tenant=tenant,
        )  # fmt: skip
        if (a := await self._emit(alert, window_index)) is not None:
            alerts.append(a)
        return alerts

    async def check_budget(self, scope: str, used_usd: float, limit_usd: float) -> list[CostAlert]:
        """Alert once for each threshold `used/limit` has crossed (gateway budgets call this)."""
        if limit_usd <= 0:
            raise UserError(f"budget {scope!r}: limit must be positive, got {limit_usd}")
        record_budget(scope, used_usd, limit_usd)
        fraction = used_usd / limit_usd
        out: list[CostAlert] = []
        for threshold in self.thresholds:
            if fraction >= threshold:
                alert = await self._emit(
                    CostAlert(
                        "budget_threshold",
                        scope,
                        used_usd,
                        limit_usd,
                        fraction,
                        f"budget {scope} is at {fraction:.0%} (${used_usd:.4f} of ${limit_usd:.4f}); "
                        f"threshold {threshold:.0%} crossed",
                    ),
                    slot=str(threshold),
                )
                if alert is not None:
                    out.append(alert)
        return out

    async def check_recent(self, *, now: float | None = None, catchup_s: float = 3600.0) -> list[CostAlert]:
        """Check every root run that finished, and every tenant that spent, since the previous
        call (the first call looks back `catchup_s`: the ledger drops what already fired)."""
        now_ns = time.time_ns() if now is None else int(now * 1e9)
        since_ns = self._last_check_ns if self._last_check_ns is not None else now_ns - int(catchup_s * 1e9)
        # Spans reach the store a little after they end (the writer batches): look back a minute.
        since_ns -= 60 * 10**9
        self._last_check_ns = now_ns
        t = self.store.table
        # A root span is written when it ends, so a stored root span means a finished run.
        # Runs longer than `max_run_s` are not scanned: the bound keeps this an index range scan.
        runs = await self._query(
            f"SELECT trace_id FROM {t} WHERE parent_id IS NULL AND end_ns >= ? AND start_ns >= ? ORDER BY end_ns",
            (since_ns, since_ns - int(self.max_run_s * 1e9)),
        )
        tenants = await self._query(
            f"SELECT DISTINCT tenant FROM {t} WHERE tenant IS NOT NULL AND start_ns >= ?", (since_ns,)
        )
        alerts: list[CostAlert] = []
        for trace_id in dict.fromkeys(r[0] for r in runs):
            alerts += await self.check_trace(trace_id)
        for (tenant,) in tenants:
            alerts += await self.check_tenant_all(tenant, now=now)
        return alerts

    async def run_forever(self, interval_s: float, stop: asyncio.Event) -> None:
        """`check_recent()` every `interval_s` until `stop` is set; a failing check is logged and
        counted, and the loop carries on."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.store.flush, 2.0)
                await self.check_recent()
            except Exception:
                self.check_failures += 1
                logger.exception("cost alert check failed; retrying in %.0fs", interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _mad(values: Sequence[float]) -> float:
    """Median absolute deviation: a spread one outlier cannot inflate (unlike the std dev)."""
    m = _median(values)
    return _median([abs(v - m) for v in values])


def start_cost_alerts(store: object, interval_s: float | None = None) -> Callable[[], Awaitable[None]] | None:
    """Start `CostMonitor.from_settings(store).run_forever()` as a task of the running loop;
    returns the coroutine function that stops it (None when `interval_s`, default the setting
    `BASTION_COST_ALERT_INTERVAL_S`, is 0)."""
    if interval_s is None:
        from bastion.config import get_settings

        interval_s = get_settings().cost_alert_interval_s
    if interval_s <= 0:
        return None
    if not isinstance(store, SpanStore):
        raise UserError(f"cost alerts need a queryable trace store (a SpanStore), got {type(store).__name__}")
    monitor = CostMonitor.from_settings(store)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run_forever(interval_s, stop))

    async def stop_monitor() -> None:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            monitor.close()

    return stop_monitor
