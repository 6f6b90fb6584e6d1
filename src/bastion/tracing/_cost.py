"""Cost attribution over the trace store: money per call, run, session, user, tenant, team,
model, agent and tool, over any time window.

Costs come from `bastion.cost.usd` on chat, embeddings and tool spans (the gateway prices
each call); every span carries its run's attribution, so one GROUP BY answers each question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bastion.errors import UserError
from bastion.tracing._store import TimeLike, sql_filters, sql_where
from bastion.tracing._store_protocol import SpanStore

Dimension = Literal["run", "session", "user", "tenant", "team", "model", "agent", "tool", "operation", "trace"]

_COLUMN: dict[str, str] = {
    "run": "run_id",
    "session": "session_id",
    "user": "user_id",
    "tenant": "tenant",
    "team": "team",
    "model": "model",
    "agent": "agent",
    "tool": "tool",
    "operation": "operation",
    "trace": "trace_id",
}


@dataclass(slots=True)
class CostRow:
    key: str | None
    cost_usd: float
    calls: int
    input_tokens: int
    output_tokens: int


def _column(dimension: str) -> str:
    try:
        return _COLUMN[dimension]
    except KeyError:
        raise UserError(f"unknown cost dimension {dimension!r}; use one of {sorted(_COLUMN)}") from None


def cost_by(
    store: SpanStore,
    dimension: Dimension,
    *,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
    tenant: str | None = None,
    run_id: str | None = None,
    session: str | None = None,
    user: str | None = None,
    agent: str | None = None,
    limit: int = 1000,
) -> list[CostRow]:
    """Spend grouped by `dimension` (most expensive first), optionally filtered and windowed.
    `calls` counts priced spans (model, embedding and paid tool calls)."""
    column = _column(dimension)
    where, params = sql_filters(
        since=since, until=until, tenant=tenant, run_id=run_id, session_id=session, user_id=user, agent=agent
    )
    where.append("cost_usd IS NOT NULL")
    sql = (
        f"SELECT {column}, sum(cost_usd), count(*), coalesce(sum(input_tokens), 0), "
        f"coalesce(sum(output_tokens), 0) FROM {store.table}{sql_where(where)} "
        f"GROUP BY {column} ORDER BY sum(cost_usd) DESC LIMIT ?"
    )
    return [CostRow(r[0], float(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in store.query(sql, [*params, limit])]


def total_cost(store: SpanStore, **filters: str | TimeLike | None) -> float:
    """Total spend matching the filters of `cost_by`."""
    since, until = filters.pop("since", None), filters.pop("until", None)
    columns = {("session_id" if k == "session" else "user_id" if k == "user" else k): v for k, v in filters.items()}
    where, params = sql_filters(since=since, until=until, **columns)  # type: ignore[arg-type]
    row = store.query(f"SELECT coalesce(sum(cost_usd), 0) FROM {store.table}{sql_where(where)}", params)
    return float(row[0][0])


def cost_series(
    store: SpanStore,
    dimension: Dimension,
    *,
    bucket_s: float,
    since: TimeLike,
    until: TimeLike,
    tenant: str | None = None,
) -> dict[str | None, list[float]]:
    """Spend per `dimension` key per time bucket of `bucket_s` seconds in [since, until):
    `{key: [cost of bucket 0, bucket 1, ...]}` (empty buckets are 0.0)."""
    from bastion.tracing._store import to_ns

    if bucket_s <= 0:
        raise UserError("cost_series: bucket_s must be positive")
    column = _column(dimension)
    start, end = to_ns(since), to_ns(until)
    width = int(bucket_s * 1e9)
    n = max(0, -(-(end - start) // width))
    where, params = sql_filters(since=since, until=until, tenant=tenant)
    where.append("cost_usd IS NOT NULL")
    # GROUP BY position: PostgreSQL does not match `(start_ns - $3) / $4` to `(start_ns - $1) / $2`.
    sql = f"SELECT {column}, (start_ns - ?) / ?, sum(cost_usd) FROM {store.table}{sql_where(where)} GROUP BY 1, 2"
    out: dict[str | None, list[float]] = {}
    for key, bucket, cost in store.query(sql, [start, width, *params]):
        series = out.setdefault(key, [0.0] * n)
        if 0 <= bucket < n:
            series[int(bucket)] = float(cost)
    return out


# Span attributes of a priced tool call (besides `bastion.cost.usd`).
TOOL_UNITS = "bastion.tool.units"
TOOL_UNIT = "bastion.tool.unit"


def record_tool_cost(tool: str, cost_usd: float, units: float, unit: str) -> bool:
    """Put a priced tool call's cost on the current `execute_tool` span of `tool` (so `cost_by`
    rolls it up by tool, run, user, ...) and count it in the cost metric. False when no such
    span is current (tracing off, or the tool ran outside one): the cost is then not traced."""
    from bastion.tracing import semconv as sc
    from bastion.tracing._state import STATE, active_tracer

    if STATE.instruments is not None and cost_usd:
        STATE.instruments.cost.add(float(cost_usd), {sc.GEN_AI_TOOL_NAME: tool})
    if active_tracer() is None:
        return False
    from opentelemetry import trace

    span = trace.get_current_span()
    attrs = getattr(span, "attributes", None) or {}
    # Only the tool's own span: putting the cost on an enclosing agent span would count it twice.
    if attrs.get(sc.GEN_AI_OPERATION_NAME) != sc.OP_EXECUTE_TOOL or attrs.get(sc.GEN_AI_TOOL_NAME) != tool:
        return False
    span.set_attribute(sc.BASTION_COST_USD, float(cost_usd))
    if units:
        span.set_attribute(TOOL_UNITS, float(units))
        span.set_attribute(TOOL_UNIT, unit)
    return True
