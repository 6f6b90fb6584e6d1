"""Scale-out: one PostgreSQL, two API servers (`bastion serve --database URL --workers 0`) and
workers (`bastion worker`), every process with its own home directory. A run created on
server 1 is executed by a worker, and its trace and cost are visible from server 2; a tenant
sees nothing of another tenant's traces or costs through either server; `kill -9` of a
worker during runs changes none of this. The queue's autoscaling gauges are on /metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

APP = f"{Path(__file__).with_name('scaleout_app.py')}:build"
COST = 0.0025  # scaleout_app.COST_USD
DEADLINE_S = 60.0


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path: str, key: str) -> Any:
        status, body = self.call("GET", path, key)
        assert status == 200, (path, status, body)
        return body

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=20) as r:
            text = r.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, pg_url: str, root: Path) -> None:
        self.pg_url = pg_url
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "BASTION_CACHE_ENABLED": "false"}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        home = self.root / name
        home.mkdir()
        argv = [sys.executable, "-m", "bastion.cli", "--home", str(home), *args]
        argv += ["--app", APP, "--database", self.pg_url]
        with (self.root / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        self.procs.append(proc)
        return proc

    def server(self, name: str) -> Api:
        port = _free_port()
        proc = self._spawn(name, ["serve", "--workers", "0", "--port", str(port)])
        api = Api(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, self.log(name)
            try:
                with urllib.request.urlopen(api.url + "/health", timeout=2):
                    return api
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)  # polling a child process's port, bounded by the deadline
        raise AssertionError(f"{name} did not start:\n{self.log(name)}")

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._spawn(name, ["worker", "--lease", "2", "--concurrency", "4"])

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(pg_url, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _wait_done(api: Api, key: str, run_ids: list[str]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    runs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        runs = {r: api.get(f"/v1/runs/{r}", key) for r in run_ids}
        if all(r["status"] in ("completed", "failed", "cancelled") for r in runs.values()):
            return runs
        time.sleep(0.1)  # polling other processes through the HTTP API, bounded by the deadline
    raise AssertionError(f"runs did not finish: {[(k, v['status']) for k, v in runs.items()]}")


def _wait_trace(api: Api, key: str, run_id: str) -> dict[str, Any]:
    """The run's trace once the worker's writer has committed it (the run's status is written
    by the worker a moment before its last spans reach the shared store)."""
    deadline = time.monotonic() + 10
    while True:
        trace = api.get(f"/v1/runs/{run_id}/trace", key)
        if any(s["name"].startswith("invoke_agent") for s in trace["spans"]) or time.monotonic() > deadline:
            return trace
        time.sleep(0.05)


def _wait_gauge(api: Api, name: str, value: float) -> None:
    deadline = time.monotonic() + 20
    while (current := api.metrics().get((name, ()))) != value:
        assert time.monotonic() < deadline, f"{name} is {current}, expected {value}"
        time.sleep(0.1)  # polling other processes through /metrics, bounded by the deadline


def _create(api: Api, key: str, text: str) -> str:
    status, body = api.call("POST", "/v1/runs", key, {"agent": "clerk", "input": text})
    assert status == 201, body
    return body["id"]


def _cost_by_run(api: Api, key: str) -> dict[str, float]:
    return {row["key"]: row["cost_usd"] for row in api.get("/v1/costs?by=run", key)}


@pytest.mark.postgres
def test_runs_traces_and_costs_are_shared_across_servers_and_isolated_by_tenant(cluster: Cluster) -> None:
    s1, s2 = cluster.server("api1"), cluster.server("api2")
    workers = [cluster.worker(f"w{i}") for i in range(2)]
    _wait_gauge(s2, "bastion_workers_live", 2)  # the API servers' own connections are not counted

    a_runs = [_create(s1, "key-a", f"a job {i}") for i in range(6)]
    b_runs = [_create(s1, "key-b", f"b job {i}") for i in range(3)]
    done = {**_wait_done(s2, "key-a", a_runs), **_wait_done(s2, "key-b", b_runs)}
    assert {r["status"] for r in done.values()} == {"completed"}

    for run_id in a_runs:
        trace = _wait_trace(s2, "key-a", run_id)
        names = [s["name"] for s in trace["spans"]]
        assert any(n.startswith("invoke_agent") for n in names) and any(n.startswith("chat") for n in names), names
        assert {s["attributes"].get("bastion.tenant.id") for s in trace["spans"]} <= {"a", None}
        status, _ = s2.call("GET", f"/v1/runs/{run_id}/trace", "key-b")
        assert status == 404  # the other tenant cannot even learn the run exists
        for tid in trace["trace_ids"]:
            assert s1.call("GET", f"/v1/traces/{tid}", "key-b")[0] == 404
            assert s2.call("GET", f"/v1/traces/{tid}", "key-a")[0] == 200

    a_costs, b_costs = _cost_by_run(s2, "key-a"), _cost_by_run(s1, "key-b")
    assert set(a_costs) == set(a_runs) and set(b_costs) == set(b_runs)
    assert all(c == pytest.approx(COST) for c in [*a_costs.values(), *b_costs.values()])
    assert _cost_by_run(s1, "key-a") == a_costs  # both servers read the same store
    assert {t["run_id"] for t in s1.get("/v1/traces?limit=100", "key-b")} == set(b_runs)
    assert {t["run_id"] for t in s2.get("/v1/traces?limit=100", "key-a")} == set(a_runs)

    # Every process kept its own home: no trace store file is shared (or even written) there.
    assert not list(cluster.root.glob("*/traces.db"))
    # ... and the CLI reads the shared store too, from a fresh home
    (cluster.root / "cli").mkdir()
    cli = [sys.executable, "-m", "bastion.cli", "--home", str(cluster.root / "cli"), "trace"]
    listed = subprocess.run(
        [*cli, "list", "--database", cluster.pg_url], capture_output=True, text=True, timeout=60, env=cluster.env
    )
    assert listed.returncode == 0, listed.stderr
    assert all(run_id in listed.stdout for run_id in a_runs), listed.stdout
    shown = subprocess.run(
        [*cli, "show", a_runs[0], "--database", cluster.pg_url], capture_output=True, text=True, timeout=60,
        env=cluster.env,
    )  # fmt: skip
    assert shown.returncode == 0 and "invoke_agent" in shown.stdout, shown.stderr

    # The autoscaling gauges read the queue: enqueue while no worker runs, then watch it drain.
    for w in workers:
        w.send_signal(signal.SIGTERM)
        w.wait(30)
    _wait_gauge(s1, "bastion_workers_live", 0)
    queued = [_create(s1, "key-a", f"queued {i}") for i in range(3)]
    gauges = s2.metrics()
    labels = (("agent", "clerk"), ("tenant", "a"))
    assert gauges[("bastion_runs_queued", labels)] == 3
    assert gauges[("bastion_runs_queued_oldest_age_seconds", labels)] >= 0
    assert gauges[("bastion_runs_in_flight", labels)] == 0
    assert gauges[("bastion_workers_busy", ())] == 0
    cluster.worker("w-late")
    _wait_done(s1, "key-a", queued)
    assert ("bastion_runs_queued", labels) not in s1.metrics()  # no queued or running run left for (clerk, a)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_of_a_worker_during_runs_loses_no_trace_cost_or_isolation(cluster: Cluster) -> None:
    s1, s2 = cluster.server("api1"), cluster.server("api2")
    victim = cluster.worker("w0")
    a_runs = [_create(s1, "key-a", f"slow a {i}") for i in range(8)]
    b_runs = [_create(s1, "key-b", f"slow b {i}") for i in range(4)]

    # Kill the only worker while it holds runs (the gauges show them in flight), then start two more.
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        gauges = s2.metrics()
        if gauges.get(("bastion_workers_busy", ()), 0) >= 1:
            break
        time.sleep(0.05)  # polling another process through /metrics, bounded by the deadline
    else:
        raise AssertionError(f"the worker never claimed a run:\n{cluster.log('w0')}")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    _wait_gauge(s2, "bastion_workers_live", 0)  # its connection died with it
    # Its leases lapse (--lease 2): the gauge an alert on dead workers would watch.
    deadline = time.monotonic() + 15
    while sum(v for (name, _), v in s1.metrics().items() if name == "bastion_runs_lease_expired") == 0:
        assert time.monotonic() < deadline, "no lease expiry reported after the worker was killed"
        time.sleep(0.1)  # polling /metrics of another process, bounded by the deadline
    cluster.worker("w1")
    cluster.worker("w2")

    done = {**_wait_done(s2, "key-a", a_runs), **_wait_done(s2, "key-b", b_runs)}
    outcomes = [(k, r["status"], r.get("error")) for k, r in done.items()]
    assert {r["status"] for r in done.values()} == {"completed"}, outcomes
    for tenant_key, other_key, runs in (("key-a", "key-b", a_runs), ("key-b", "key-a", b_runs)):
        costs = _cost_by_run(s2, tenant_key)
        # A run interrupted by the kill may have paid for its model call twice; none paid nothing.
        assert set(costs) == set(runs) and all(c >= COST * 0.999 for c in costs.values()), costs
        assert _cost_by_run(s1, tenant_key) == costs
        for run_id in runs:
            trace = _wait_trace(s1, tenant_key, run_id)
            assert any(s["name"].startswith("invoke_agent") for s in trace["spans"])
            assert s2.call("GET", f"/v1/runs/{run_id}/trace", other_key)[0] == 404
        assert not set(_cost_by_run(s1, other_key)) & set(runs)


async def test_queue_gauges_count_queued_in_flight_and_expired_runs_per_agent_and_tenant(tmp_path: Path) -> None:
    from bastion.runtime import SqlRunStore, new_run
    from bastion.tracing._queue_gauges import queue_gauges_text

    store = SqlRunStore.sqlite(tmp_path / "runs.db")
    try:
        for tenant, agent, n in (("a", "clerk", 3), ("b", "clerk", 1), ("a", "other", 2)):
            for _ in range(n):
                await store.create(new_run(tenant=tenant, thread_id=None, agent=agent, input="x"))
        # Claims take the oldest first: w1 holds two of a/clerk's runs, w2 the third, with a
        # lease that has already lapsed (as if w2 had died).
        claimed = [await store.claim("w1", 30), await store.claim("w1", 30), await store.claim("w2", -1)]
        assert [(r.agent, r.tenant) for r in claimed if r is not None] == [("clerk", "a")] * 3
        gauges, busy, live = await store.queue_gauges(now=time.time() + 5)
    finally:
        await store.close()
    rows = {(g.agent, g.tenant): (g.queued, g.in_flight, g.lease_expired) for g in gauges}
    assert rows == {("clerk", "a"): (0, 2, 1), ("clerk", "b"): (1, 0, 0), ("other", "a"): (2, 0, 0)}
    ages = {(g.agent, g.tenant): g.oldest_queued_age_s for g in gauges}
    assert ages["clerk", "a"] == 0 and 5 <= ages["other", "a"] < 60
    assert busy == 1  # w2's lease lapsed: only w1 counts
    assert live is None  # embedded: no separate worker processes to count
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(queue_gauges_text(gauges, busy, live))
        for s in family.samples
    }
    assert samples[("bastion_runs_in_flight", (("agent", "clerk"), ("tenant", "a")))] == 2
    assert samples[("bastion_workers_busy", ())] == 1
    assert ("bastion_workers_live", ()) not in samples
