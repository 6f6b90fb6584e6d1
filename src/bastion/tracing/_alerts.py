"""Cost anomaly alerts: a run or a tenant spending over N times its recent baseline, or a
budget crossing a threshold, delivered to configurable sinks (log, webhook, callback).

The monitor reads the trace store; call `check_recent()` periodically (a schedule) or the
individual checks right after a run. Each alert fires once per (kind, key, threshold).
A failing sink is logged and counted, and never stops the other sinks.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from bastion.errors import UserError
from bastion.tracing._cost import total_cost
from bastion.tracing._metrics import record_budget, record_cost_alert
from bastion.tracing._store_protocol import SpanStore

AlertKind = Literal["run_anomaly", "tenant_anomaly", "budget_threshold"]

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
    """Detect cost anomalies in a `TraceStore` and send `CostAlert`s to `sinks`.

    A run is anomalous when it cost more than `factor` x the mean of the previous
    `baseline_runs` runs of the same agent (at least `min_baseline` of them). A tenant is
    anomalous when its spend over the last `window_s` is more than `factor` x its mean spend
    per window over the `baseline_windows` windows before. Budgets alert at each of
    `thresholds` (fractions of the limit) once.
    """

    def __init__(
        self,
        store: SpanStore,
        sinks: Sequence[AlertSink] = (),
        *,
        factor: float = 3.0,
        baseline_runs: int = 20,
        min_baseline: int = 5,
        window_s: float = 3600.0,
        baseline_windows: int = 24,
        thresholds: Sequence[float] = (0.8, 1.0),
    ) -> None:
        if factor <= 1.0:
            raise UserError(f"CostMonitor factor={factor}: must be above 1 (an alert at N x the baseline)")
        self.store = store
        self.sinks = list(sinks) or [LogSink()]
        self.factor = factor
        self.baseline_runs = baseline_runs
        self.min_baseline = min_baseline
        self.window_s = window_s
        self.baseline_windows = baseline_windows
        self.thresholds = sorted(thresholds)
        self.delivery_failures = 0
        self.sent: list[CostAlert] = []
        self._fired: set[tuple[str, str, float]] = set()
        self._last_check_ns = 0

    async def _emit(self, alert: CostAlert, threshold: float = 0.0) -> CostAlert | None:
        marker = (alert.kind, alert.key, threshold)
        if marker in self._fired:
            return None
        self._fired.add(marker)
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
        rows = self.store.query(
            f"SELECT coalesce(sum(cost_usd), 0), min(start_ns), max(agent), max(tenant) FROM {self.store.table} "
            "WHERE run_id = ?",
            (run_id,),
        )
        cost, start, agent, tenant = rows[0]
        if start is None:
            return None
        base = self.store.query(
            f"""SELECT avg(c), count(*) FROM (
                 SELECT sum(coalesce(cost_usd, 0)) AS c FROM {self.store.table}
                 WHERE run_id IS NOT NULL AND run_id != ? AND agent IS NOT DISTINCT FROM ? GROUP BY run_id
                 HAVING min(start_ns) < ? ORDER BY min(start_ns) DESC LIMIT ?) AS recent""",
            (run_id, agent, start, self.baseline_runs),
        )
        baseline, n = base[0]
        if n < self.min_baseline or not baseline or cost <= self.factor * baseline:
            return None
        ratio = cost / baseline
        return await self._emit(
            CostAlert(
                "run_anomaly",
                run_id,
                float(cost),
                float(baseline),
                ratio,
                f"run {run_id} (agent {agent}) cost ${cost:.4f}, {ratio:.1f}x the mean of its last {n} runs "
                f"(${baseline:.4f})",
                tenant=tenant,
            )
        )

    async def check_tenant(self, tenant: str, *, now: float | None = None) -> CostAlert | None:
        now = time.time() if now is None else now
        current = total_cost(self.store, tenant=tenant, since=now - self.window_s, until=now)
        history_start = now - self.window_s * (self.baseline_windows + 1)
        past = total_cost(self.store, tenant=tenant, since=history_start, until=now - self.window_s)
        baseline = past / self.baseline_windows
        if baseline <= 0 or current <= self.factor * baseline:
            return None
        ratio = current / baseline
        window_index = int(now // self.window_s)
        alert = CostAlert(
            "tenant_anomaly",
            tenant,
            current,
            baseline,
            ratio,
            f"tenant {tenant} spent ${current:.4f} in the last {self.window_s:.0f}s, {ratio:.1f}x its "
            f"baseline of ${baseline:.4f} per window",
            tenant=tenant,
        )
        return await self._emit(alert, threshold=float(window_index))

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
                    threshold=threshold,
                )
                if alert is not None:
                    out.append(alert)
        return out

    async def check_recent(self, *, now: float | None = None) -> list[CostAlert]:
        """Check every run and tenant with spans since the previous call."""
        since_ns = self._last_check_ns
        self._last_check_ns = time.time_ns() if now is None else int(now * 1e9)
        runs = self.store.query(
            f"SELECT DISTINCT run_id FROM {self.store.table} WHERE run_id IS NOT NULL AND start_ns >= ?", (since_ns,)
        )
        tenants = self.store.query(
            f"SELECT DISTINCT tenant FROM {self.store.table} WHERE tenant IS NOT NULL AND start_ns >= ?", (since_ns,)
        )
        alerts: list[CostAlert] = []
        for (run_id,) in runs:
            if (a := await self.check_run(run_id)) is not None:
                alerts.append(a)
        for (tenant,) in tenants:
            if (a := await self.check_tenant(tenant, now=now)) is not None:
                alerts.append(a)
        return alerts
