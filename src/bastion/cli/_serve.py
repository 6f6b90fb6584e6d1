"""`bastion serve` and `bastion worker`."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from rich.console import Console
from rich.markup import escape

from bastion.config import redact_credentials
from bastion.errors import UserError
from bastion.runtime import WORKER_APPLICATION_NAME, PostgresWakeup, SqlRunStore, Worker
from bastion.server import ProjectEnv, load_project

console = Console(stderr=True)


class RedactingFormatter(logging.Formatter):
    """Formats a record (with its traceback) and removes credentials from the result: a
    database error may quote the connection URL, password included."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_credentials(super().format(record))


def configure_logging(level: int = logging.WARNING) -> None:
    """Every log line of the process (uvicorn's too: it is started with `log_config=None`) goes
    through one stderr handler that redacts credentials."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, RedactingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)  # warnings too (a driver's may quote its connection string)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)


async def serve(
    spec: str,
    env: ProjectEnv,
    *,
    host: str,
    port: int,
    workers: int,
    retention: float | None = None,
    lease: float = 30.0,
) -> int:
    import uvicorn

    from bastion.server import build_server

    configure_logging()
    project = await load_project(spec, env)
    parts, stack = await build_server(project, env, workers=workers, lease_seconds=lease, retention_seconds=retention)
    async with stack:
        db = redact_credentials(env.database_url) if env.database_url else None
        mode = f"PostgreSQL ({db})" if db else f"embedded SQLite ({env.home})"
        agents = escape(str(sorted(project.agents)))
        console.print(f"[bold]Bastion[/] serving {agents} on http://{host}:{port}  [dim]{escape(mode)}[/]")
        config = uvicorn.Config(parts.app, host=host, port=port, log_level="warning", lifespan="on", log_config=None)
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the
        # previous handler; a no-op one lets us finish the clean-up below and exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        await server.serve()
    return 0


def _ignore(signum: int, frame: object) -> None:
    pass


def _with_application_name(url: str, name: str) -> str:
    """`url` (a URI or a libpq conninfo string) with `application_name` set, unless it has one."""
    if "application_name" in url:
        return url
    if "://" in url:
        return f"{url}{'&' if '?' in url else '?'}application_name={name}"
    return f"{url} application_name={name}"


async def worker(spec: str, env: ProjectEnv, *, concurrency: int, lease: float) -> int:
    if not env.database_url:
        raise UserError("`bastion worker` needs a shared database: pass --database postgresql://... ")
    from bastion.tracing import configure_tracing, open_trace_store

    configure_logging()
    env.home.mkdir(parents=True, exist_ok=True)
    store = open_trace_store(env.home, env.database_url)  # the servers read what this worker writes
    tracing = configure_tracing(store=store)
    project = await load_project(spec, env)
    runs = SqlRunStore.postgres(env.database_url)
    # Tagged so `/metrics` can count live workers (`bastion_workers_live`) from pg_stat_activity.
    wakeup = PostgresWakeup(_with_application_name(env.database_url, WORKER_APPLICATION_NAME))
    w = Worker(runs, project.runnables(), concurrency=concurrency, lease_seconds=lease, wakeup=wakeup)
    w.memory = project.memory  # its search indexes warm up at start (`store.warm()`), off the event loop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, w.stop)  # drain: finish in-flight runs, claim no more
    console.print(f"[bold]Bastion worker[/] {w.id} for {sorted(project.agents)} (concurrency {concurrency})")
    from bastion.tracing import start_cost_alerts

    # Workers check costs too: the shared ledger makes each alert fire once across processes.
    stop_alerts = start_cost_alerts(store)
    try:
        await w.run()
    finally:
        if stop_alerts is not None:
            await stop_alerts()
        await wakeup.close()
        await runs.close()
        await project.close()
        tracing.shutdown()
        store.close()
    console.print(f"worker {w.id} drained after {w.completed} runs")
    return 0
