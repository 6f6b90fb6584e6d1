"""Autoscaling gauges in the Prometheus text format, computed from the run store at scrape
time: every process reading the same database reports the same numbers, so an autoscaler
(Kubernetes HPA via a Prometheus adapter, KEDA's Prometheus scaler) may scrape any API server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("bastion_runs_queued", "queued", "runs waiting for a worker"),
    ("bastion_runs_queued_oldest_age_seconds", "oldest_queued_age_s", "age of the oldest queued run"),
    ("bastion_runs_in_flight", "in_flight", "runs executing under a live lease"),
    ("bastion_runs_lease_expired", "lease_expired", "running runs whose lease lapsed (a worker died)"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def queue_gauges_text(gauges: Sequence[Any], busy_workers: int, live_workers: int | None = None) -> str:
    """The run queue per agent and tenant (`QueueGauge` rows) as Prometheus gauges,
    `bastion_workers_busy` (workers holding at least one live lease) and, when known,
    `bastion_workers_live` (`bastion worker` processes connected to the database)."""
    lines: list[str] = []
    for name, attr, help_text in _GAUGES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for g in gauges:
            lines.append(f'{name}{{agent="{_label(g.agent)}",tenant="{_label(g.tenant)}"}} {float(getattr(g, attr))!r}')
    lines += ["# HELP bastion_workers_busy workers holding a live lease", "# TYPE bastion_workers_busy gauge"]
    lines.append(f"bastion_workers_busy {busy_workers}")
    if live_workers is not None:
        lines += ["# HELP bastion_workers_live bastion worker processes connected", "# TYPE bastion_workers_live gauge"]
        lines.append(f"bastion_workers_live {live_workers}")
    return "\n".join(lines) + "\n"
