"""`bastion serve` and `bastion worker`."""

from __future__ import annotations

import asyncio
import signal

from rich.console import Console

from bastion.errors import UserError
from bastion.runtime import PostgresWakeup, SqlRunStore, Worker
from bastion.server._project import ProjectEnv, load_project

console = Console(stderr=True)


async def serve(
    spec: str, env: ProjectEnv, *, host: str, port: int, workers: int, retention: float | None = None
) -> int:
    import uvicorn

    from bastion.server._serve import build_server

    project = await load_project(spec, env)
    parts, stack = await build_server(project, env, workers=workers, retention_seconds=retention)
    async with stack:
        mode = f"PostgreSQL ({env.database_url})" if env.database_url else f"embedded SQLite ({env.home})"
        console.print(f"[bold]Bastion[/] serving {sorted(project.agents)} on http://{host}:{port}  [dim]{mode}[/]")
        server = uvicorn.Server(uvicorn.Config(parts.app, host=host, port=port, log_level="warning", lifespan="on"))
        # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the
        # previous handler; a no-op one lets us finish the clean-up below and exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        await server.serve()
    return 0


def _ignore(signum: int, frame: object) -> None:
    pass


async def worker(spec: str, env: ProjectEnv, *, concurrency: int, lease: float) -> int:
    if not env.database_url:
        raise UserError("`bastion worker` needs a shared database: pass --database postgresql://... ")
    from bastion.tracing import TraceStore, configure_tracing

    env.home.mkdir(parents=True, exist_ok=True)
    store = TraceStore(env.home / "traces.db")
    tracing = configure_tracing(store=store)
    project = await load_project(spec, env)
    runs = SqlRunStore.postgres(env.database_url)
    wakeup = PostgresWakeup(env.database_url)
    w = Worker(runs, project.runnables(), concurrency=concurrency, lease_seconds=lease, wakeup=wakeup)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, w.stop)  # drain: finish in-flight runs, claim no more
    console.print(f"[bold]Bastion worker[/] {w.id} for {sorted(project.agents)} (concurrency {concurrency})")
    try:
        await w.run()
    finally:
        await wakeup.close()
        await runs.close()
        await project.close()
        tracing.shutdown()
        store.close()
    console.print(f"worker {w.id} drained after {w.completed} runs")
    return 0
