"""Scale-out (issue 13): one PostgreSQL, two API servers (`bastion serve --database URL
--workers 0`) and three workers (`bastion worker`), real processes, each with its own home
directory.

- A run created on server 1 is executed by a worker; its trace, cost and audit rows are visible
  from server 2 (`/v1/runs/{id}/trace`, `/v1/costs`, `/v1/runs/{id}/audit`; `bastion audit
  export|verify` and `bastion trace list|show` with `--database` or BASTION_DATABASE_URL).
- A key created on server 1 (`bastion keys create` from its home) works on server 2, and once
  revoked on server 1 every server refuses it: key lookups are not cached, so the next request
  sees the revocation. The same holds for a proxy virtual key on `/openai/v1`.
- A tenant sees nothing of another tenant through either server.
- `kill -9` of two workers while they hold runs changes none of this (slow): the third finishes
  their runs once the leases lapse.
The queue's autoscaling gauges are on /metrics."""

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

APP = f"{Path(__file__).with_name('scaleout_app.py')}:build"
COST = 0.005  # scaleout_app.COST_USD: two priced model calls a run
DEADLINE_S = 60.0
REVOKE_DEADLINE_S = 5.0  # "within seconds"; with no lookup cache the next request already sees it
AUDIT_KEY = "scale-out-audit-key-shared-by-every-process"


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

    def chat(self, key: str) -> tuple[int, Any]:
        """One call through the server's OpenAI-compatible proxy."""
        body = {"model": "test:priced", "messages": [{"role": "user", "content": "hello"}]}
        return self.call("POST", "/openai/v1/chat/completions", key, body)

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
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        env = {k: v for k, v in os.environ.items() if k not in ("BASTION_HOME", "BASTION_DATABASE_URL")}
        # The audit log in PostgreSQL is chained under one key every process shares.
        self.env = {**env, "BASTION_CACHE_ENABLED": "false", "BASTION_SECRET_AUDIT_KEY": AUDIT_KEY}

    def home(self, name: str) -> Path:
        home = self.root / name
        home.mkdir(exist_ok=True)
        return home

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "bastion.cli", "--home", str(self.home(name)), *args]
        argv += ["--app", APP, "--database", self.pg_url]
        with (self.root / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root)
        self.procs[name] = proc
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

    def cli(self, home: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`bastion --home <root>/<home> ...`: an operator's command on that process's machine."""
        argv = [sys.executable, "-m", "bastion.cli", "--home", str(self.home(home)), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={**self.env, **(env or {})}, cwd=self.root,
            check=False,
        )  # fmt: skip

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
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


def _mint(cluster: Cluster, home: str, tenant: str, role: str = "operator") -> tuple[str, str]:
    """`bastion keys create` from `home` against the shared database: (key, key id)."""
    made = cluster.cli(home, "keys", "create", "--tenant", tenant, "--role", role, "--database", cluster.pg_url)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip(), made.stderr.split("key id ")[1].split()[0]


def _mint_proxy_key(cluster: Cluster, home: str, tenant: str) -> tuple[str, str]:
    """A virtual key minted as the proxy docs say, with BASTION_DATABASE_URL pointing at the shared database."""
    argv = [sys.executable, "-m", "bastion.gateway.proxy", "mint", "--tenant", tenant]
    env = {**cluster.env, "BASTION_HOME": str(cluster.home(home)), "BASTION_DATABASE_URL": cluster.pg_url}
    made = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=cluster.root, check=False)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip(), made.stderr.split("key id ")[1].split()[0]


def _revoke_everywhere(cluster: Cluster, home: str, key_id: str, refused: list[Callable[[], int]]) -> tuple[float, int]:
    """Revoke `key_id` with `bastion keys revoke` from `home`, then poll every probe until each
    answers 401. Returns the seconds from the command's exit to the last refusal, and the
    number of polling rounds that took (1: the first request after the revocation was refused)."""
    accepted = [probe() for probe in refused]
    assert 401 not in accepted, accepted  # each probe is accepted before the revocation
    revoked = cluster.cli(home, "keys", "revoke", key_id, "--database", cluster.pg_url)
    assert revoked.returncode == 0 and f"key {key_id}" in revoked.stdout, revoked.stdout + revoked.stderr
    start, rounds = time.monotonic(), 1
    pending = list(refused)
    while pending := [probe for probe in pending if probe() != 401]:
        assert time.monotonic() - start < REVOKE_DEADLINE_S, f"{len(pending)} probe(s) still accept {key_id}"
        time.sleep(0.05)  # polling other processes through the HTTP API, bounded by the deadline
        rounds += 1
    return time.monotonic() - start, rounds


def _api_key_probes(apis: list[Api], key: str) -> list[Callable[[], int]]:
    """Requests that answer 401 once `key` is revoked: a read, and a run creation (the server's
    fast path for it) naming an agent that does not exist, so an accepted key creates nothing."""
    nothing = {"agent": "no-such-agent", "input": "probe"}
    return [
        probe
        for api in apis
        for probe in (
            lambda api=api: api.call("GET", "/v1/runs", key)[0],
            lambda api=api: api.call("POST", "/v1/runs", key, nothing)[0],
        )
    ]


def _audit_rows(cluster: Cluster, home: str) -> dict[str, list[dict[str, Any]]]:
    """The audit log as `bastion audit export --database` prints it from `home`, by run id;
    also checks that `bastion audit verify` accepts the chain every worker appended to."""
    exported = cluster.cli(home, "audit", "export", "--database", cluster.pg_url)
    assert exported.returncode == 0, exported.stderr
    header, *lines = exported.stdout.splitlines()
    bodies = [json.loads(line)["body"] for line in lines]
    assert json.loads(header)["entries"] == len(bodies) > 0
    verified = cluster.cli(home, "audit", "verify", env={"BASTION_DATABASE_URL": cluster.pg_url})
    assert verified.returncode == 0 and f"{len(bodies)} entries, chain intact" in verified.stdout, verified.stdout
    by_run: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        by_run.setdefault(body["run_id"], []).append(body)
    return by_run


def _check_isolation(apis: list[Api], runs: dict[str, list[str]], keys: dict[str, str], outsider: str) -> None:
    """Through every server: each tenant lists exactly its runs, traces and costs, and gets a
    404 for every id of another tenant's; `outsider` (a tenant with no runs) sees nothing."""
    for api in apis:
        for tenant, key in keys.items():
            mine = set(runs[tenant])
            assert {r["id"] for r in api.get("/v1/runs?limit=1000", key)} == mine
            assert {t["run_id"] for t in api.get("/v1/traces?limit=1000", key)} == mine
            assert set(_cost_by_run(api, key)) == mine
            for other, theirs in runs.items():
                if other == tenant:
                    continue
                for run_id in theirs:
                    for sub in ("", "/trace", "/events", "/audit"):
                        path = f"/v1/runs/{run_id}{sub}"
                        assert api.call("GET", path, key)[0] == 404, (api.url, tenant, path)
                    assert api.call("POST", f"/v1/runs/{run_id}/cancel", key)[0] == 404
        for path in ("/v1/runs", "/v1/traces", "/v1/costs?by=run"):
            assert api.get(path, outsider) == [], (api.url, path)


def _check_shared(cluster: Cluster, s1: Api, s2: Api, runs: dict[str, list[str]], wiped: str) -> None:
    """Every run's trace, cost and audit rows are visible from both servers (and the CLI)."""
    keys = {"a": "key-a", "b": "key-b"}
    for tenant, run_ids in runs.items():
        costs = _cost_by_run(s2, keys[tenant])
        # A run interrupted by a kill may have paid for a model call twice; none paid nothing.
        assert set(costs) == set(run_ids) and all(c >= COST * 0.999 for c in costs.values()), costs
        assert _cost_by_run(s1, keys[tenant]) == costs  # both servers read the same store
        for run_id in run_ids:
            trace = _wait_trace(s2, keys[tenant], run_id)
            names = [s["name"] for s in trace["spans"]]
            assert any(n.startswith("invoke_agent") for n in names), names
            assert any(n.startswith("chat") for n in names) and any(n.startswith("execute_tool") for n in names)
            assert {s["attributes"].get("bastion.tenant.id") for s in trace["spans"]} <= {tenant, None}
            for tid in trace["trace_ids"]:
                assert s1.call("GET", f"/v1/traces/{tid}", keys[tenant])[0] == 200
                assert s1.call("GET", f"/v1/traces/{tid}", keys["b" if tenant == "a" else "a"])[0] == 404

    # The tool decisions, appended by whichever worker ran each run, in one verified chain.
    audit = _audit_rows(cluster, "api2")
    for tenant, run_ids in runs.items():
        for run_id in run_ids:
            rows = audit.get(run_id, [])
            assert {r["tenant"] for r in rows} == {tenant} and {r["agent"] for r in rows} == {"clerk"}, rows
            expected = ("deny", "wipe") if run_id == wiped else ("allow", "lookup")
            assert expected in {(r["event"], r["tool"]) for r in rows}, rows
            if run_id == wiped:
                assert "allow" not in {r["event"] for r in rows}
            for api in (s2, s1):  # the same rows through either server's API
                served = api.get(f"/v1/runs/{run_id}/audit", keys[tenant])
                assert [(r["seq"], r["event"], r["tool"]) for r in served] == [
                    (r["seq"], r["event"], r["tool"]) for r in rows
                ]
    assert set(audit) <= {r for run_ids in runs.values() for r in run_ids}


@pytest.mark.postgres
def test_two_servers_and_three_workers_share_runs_traces_costs_audit_and_keys_and_isolate_tenants(
    cluster: Cluster,
) -> None:
    s1, s2 = cluster.server("api1"), cluster.server("api2")
    workers = [cluster.worker(f"w{i}") for i in range(3)]
    _wait_gauge(s2, "bastion_workers_live", 3)  # the API servers' own connections are not counted

    # Keys created on server 1 (from its home, into the shared database) work on server 2.
    minted_a, minted_a_id = _mint(cluster, "api1", "a")
    outsider, _ = _mint(cluster, "api1", "c", role="viewer")  # a tenant with no runs at all
    proxy_key, proxy_key_id = _mint_proxy_key(cluster, "api1", "d")

    a_runs = [_create(s1, "key-a", f"a job {i}") for i in range(4)]
    a_runs += [_create(s2, minted_a, f"a job {i}") for i in range(4, 6)]
    wiped = _create(s1, "key-a", "a: wipe 7")
    a_runs.append(wiped)
    b_runs = [_create(s2, "key-b", f"b job {i}") for i in range(3)]
    done = {**_wait_done(s2, minted_a, a_runs), **_wait_done(s1, "key-b", b_runs)}
    assert {r["status"] for r in done.values()} == {"completed"}, [(k, r["error"]) for k, r in done.items()]
    assert [r["cost_usd"] for r in done.values()] == pytest.approx([COST] * len(done))

    runs = {"a": a_runs, "b": b_runs}
    _check_shared(cluster, s1, s2, runs, wiped)
    _check_isolation([s1, s2], runs, {"a": "key-a", "b": "key-b"}, outsider)

    # Every process kept its own home: no trace store or audit file is shared (or even written) there.
    assert not list(cluster.root.glob("*/traces.db")) and not list(cluster.root.glob("*/audit.db"))
    # `bastion trace` reads the shared store from a fresh home, with --database or the environment.
    listed = cluster.cli("cli", "trace", "list", "--database", cluster.pg_url)
    assert listed.returncode == 0, listed.stderr
    assert all(run_id in listed.stdout for run_id in a_runs + b_runs), listed.stdout
    shown = cluster.cli("cli", "trace", "show", a_runs[0], env={"BASTION_DATABASE_URL": cluster.pg_url})
    assert shown.returncode == 0 and "invoke_agent" in shown.stdout and "execute_tool" in shown.stdout, shown.stderr

    # Revoked on server 1: refused by both servers, the virtual key by both proxies.
    assert s2.chat(proxy_key)[0] == 200 and s1.chat(proxy_key)[0] == 200
    api_probes = _api_key_probes([s1, s2], minted_a)
    api_s, api_rounds = _revoke_everywhere(cluster, "api1", minted_a_id, api_probes)
    proxy_s, proxy_rounds = _revoke_everywhere(
        cluster, "api1", proxy_key_id, [lambda api=api: api.chat(proxy_key)[0] for api in (s2, s1)]
    )
    # No timing assertion (bounded by REVOKE_DEADLINE_S above); shown with `pytest -s`.
    print(
        f"revocation refused by both servers {api_s * 1e3:.1f} ms / {api_rounds} round(s) later (API key), "
        f"{proxy_s * 1e3:.1f} ms / {proxy_rounds} round(s) (virtual key)"
    )
    assert s2.call("GET", "/v1/runs", "key-a")[0] == 200  # the configured key is untouched

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


def _holders(pg_url: str) -> set[int]:
    """Pids of the workers holding a running run (a worker's id is `host:pid:suffix`)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:
        rows = db.execute("SELECT DISTINCT worker FROM bastion_runs WHERE status = 'running'").fetchall()
    return {int(str(w).split(":")[1]) for (w,) in rows if w}


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_of_two_workers_during_runs_loses_no_trace_cost_audit_key_or_isolation(cluster: Cluster) -> None:
    s1, s2 = cluster.server("api1"), cluster.server("api2")
    workers = {cluster.worker(f"w{i}").pid: f"w{i}" for i in range(3)}
    _wait_gauge(s2, "bastion_workers_live", 3)
    minted_a, minted_a_id = _mint(cluster, "api1", "a")
    outsider, _ = _mint(cluster, "api1", "c", role="viewer")
    assert s2.call("GET", "/v1/runs", minted_a)[0] == 200

    a_runs = [_create(s1, "key-a", f"slow a {i}") for i in range(10)]
    wiped = _create(s2, minted_a, "slow a: wipe 3")
    a_runs.append(wiped)
    b_runs = [_create(s1, "key-b", f"slow b {i}") for i in range(6)]

    # Kill -9 two workers, each while it holds runs, one after the other.
    killed: list[str] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(killed) < 2:
        assert time.monotonic() < deadline, f"no live worker held a run: {[cluster.log(n) for n in workers.values()]}"
        victims = [pid for pid in _holders(cluster.pg_url) if pid in workers and workers[pid] not in killed]
        if not victims:
            time.sleep(0.02)  # polling the run table for a claimed run, bounded by the deadline
            continue
        name = workers[victims[0]]
        cluster.procs[name].send_signal(signal.SIGKILL)
        cluster.procs[name].wait(10)
        killed.append(name)
    _wait_gauge(s2, "bastion_workers_live", 1)  # their connections died with them
    # Their leases lapse (--lease 2): the gauge an alert on dead workers would watch.
    deadline = time.monotonic() + 15
    while sum(v for (name, _), v in s1.metrics().items() if name == "bastion_runs_lease_expired") == 0:
        assert time.monotonic() < deadline, "no lease expiry reported after the workers were killed"
        time.sleep(0.1)  # polling /metrics of another process, bounded by the deadline

    done = {**_wait_done(s2, "key-a", a_runs), **_wait_done(s1, "key-b", b_runs)}
    outcomes = [(k, r["status"], r["attempts"], r.get("error")) for k, r in done.items()]
    assert {r["status"] for r in done.values()} == {"completed"}, outcomes
    assert any(r["attempts"] > 1 for r in done.values()), outcomes  # the kills did interrupt runs
    survivor = next(n for n in workers.values() if n not in killed)
    assert cluster.procs[survivor].poll() is None, cluster.log(survivor)

    runs = {"a": a_runs, "b": b_runs}
    _check_shared(cluster, s1, s2, runs, wiped)
    _check_isolation([s1, s2], runs, {"a": "key-a", "b": "key-b"}, outsider)
    assert s2.call("GET", "/v1/runs", minted_a)[0] == 200
    _revoke_everywhere(cluster, "api1", minted_a_id, _api_key_probes([s2, s1], minted_a))


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
