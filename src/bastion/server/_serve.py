"""Assemble everything a server process needs from a `Project`: runtime, tracing, API keys,
proxy, triggers, UI — and tear it down again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from bastion.runtime import Runtime, Scheduler
from bastion.server._alerts import alert_routes
from bastion.server._app import Extension, create_app
from bastion.server._audit_routes import audit_routes, open_deployment_audit
from bastion.server._auth import SQLiteApiKeyStore, open_api_key_store
from bastion.server._budgets import budget_routes
from bastion.server._extensions import cost_routes, eval_routes, memory_routes, trace_routes
from bastion.server._limits import EdgeLimits
from bastion.server._project import Project, ProjectEnv, build_runtime


@dataclass(slots=True)
class ServerParts:
    app: FastAPI
    runtime: Runtime
    keys: SQLiteApiKeyStore
    tracing: Any
    scheduler: Scheduler | None


async def build_server(
    project: Project,
    env: ProjectEnv,
    *,
    workers: int = 1,
    lease_seconds: float = 30.0,
    retention_seconds: float | None = None,
    limits: EdgeLimits | None = None,
) -> tuple[ServerParts, AsyncExitStack]:
    """The app plus an exit stack that shuts everything down in order. With `retention_seconds`,
    threads idle for longer are deleted (runs, events, checkpoints) by a background task.
    `limits` default to the settings (`BASTION_MAX_BODY_BYTES`, ...)."""
    limits = limits or EdgeLimits.from_settings()  # before anything starts: a bad setting stops here
    from bastion.tracing import configure_tracing, open_alert_ledger, open_trace_store, start_cost_alerts

    stack = AsyncExitStack()
    env.home.mkdir(parents=True, exist_ok=True)
    # With a database URL every server and worker shares one trace store (traces and costs of
    # runs any worker executed are visible through any server).
    store = open_trace_store(env.home, env.database_url)
    tracing = configure_tracing(store=store)
    stack.callback(store.close)
    stack.callback(tracing.shutdown)

    # One key store per deployment; the configuration decides which config-declared keys live.
    keys = open_api_key_store(env.home, env.database_url)
    stack.push_async_callback(keys.aclose)
    for key_id in keys.sync_config(project.api_keys):
        logging.getLogger("bastion.server").warning("API key %s is no longer configured: revoked", key_id)

    runtime = build_runtime(project, env, workers=workers, lease_seconds=lease_seconds)
    stack.push_async_callback(project.close)

    datasets = env.eval_datasets()  # JSONL under the home, or the database's tables
    stack.push_async_callback(datasets.aclose)
    extensions: list[Extension] = [
        trace_routes(store, runtime), cost_routes(store), eval_routes(store, runtime, env.home, datasets),
        budget_routes(lambda: getattr(project.gateway, "budgets", None)),
    ]  # fmt: skip
    alert_ledger = open_alert_ledger(store)  # the fired cost alerts, in the trace store's database
    stack.callback(alert_ledger.close)
    extensions.append(alert_routes(alert_ledger))
    if (audit := open_deployment_audit(env)) is not None:  # what the project's tool gateways wrote
        stack.callback(audit.close)
        extensions.append(audit_routes(audit, runtime))
    if project.memory is not None:
        extensions.append(memory_routes(project.memory))
    proxy = None
    if project.gateway is not None:
        from bastion.gateway.proxy import create_proxy_app, open_key_store

        proxy_keys = open_key_store(env.home, env.database_url)  # where `python -m bastion.gateway.proxy mint` writes
        stack.callback(proxy_keys.close)
        proxy = create_proxy_app(
            project.gateway,
            keys=proxy_keys,
            budget_store=env.budget_store,  # used when the project's gateway has no Budget of its own
            max_body_bytes=limits.proxy_max_body_bytes,
        )
        stack.callback(proxy.close)  # the Responses store it opened beside the keys

    scheduler: Scheduler | None = None
    if project.schedules:
        scheduler = Scheduler(runtime)
        for s in project.schedules:
            scheduler.add(s)

    async def metrics_text() -> str:
        # The autoscaling gauges are read from the run store at scrape time (queue depth, ...).
        from bastion.tracing import queue_gauges_text

        text = tracing.prometheus_text()
        queue_gauges = getattr(runtime.store, "queue_gauges", None)
        if queue_gauges is not None:
            text += queue_gauges_text(*await queue_gauges())
        return text

    app = create_app(
        runtime, keys, proxy=proxy, webhooks=project.webhooks, extensions=extensions, metrics=metrics_text,
        manage_runtime=False, limits=limits,
    )  # fmt: skip

    await runtime.start()
    stack.push_async_callback(runtime.stop)
    if (stop_alerts := start_cost_alerts(store)) is not None:  # every BASTION_COST_ALERT_INTERVAL_S
        stack.push_async_callback(stop_alerts)
    if scheduler is not None:
        task = asyncio.create_task(scheduler.run())

        async def stop_scheduler() -> None:
            scheduler.stop()
            await asyncio.wait_for(task, 10)

        stack.push_async_callback(stop_scheduler)
    if retention_seconds is not None:
        stop = asyncio.Event()
        interval = min(3600.0, max(1.0, retention_seconds / 10))

        async def prune_forever() -> None:
            while not stop.is_set():
                await runtime.prune(older_than=time.time() - retention_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)

        pruner = asyncio.create_task(prune_forever())

        async def stop_pruner() -> None:
            stop.set()
            await asyncio.wait_for(pruner, 30)

        stack.push_async_callback(stop_pruner)
    return ServerParts(app, runtime, keys, tracing, scheduler), stack
