"""Cross-tenant attacks on the read surfaces of a running `bastion serve`: tenant B tries to
reach tenant A's long-term memory, traces, costs and evaluation datasets by asking for them,
by naming A's ids, and through B's own agent. Each attempt must return nothing of A's."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Served = Any  # conftest.Served: .url, .home, .proc, .database, .output(), .stop()

APP = f"{Path(__file__).parent / 'surfaces_app.py'}:build"
A = {"Authorization": "Bearer key-a-op"}
B = {"Authorization": "Bearer key-b-op"}
SECRET = "my card PIN is 4242"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, bastion_server: Callable[..., Served]) -> Served:
    database = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    return bastion_server(APP, database=database)


class Client:
    """Just enough of an HTTP client for these attacks (stdlib only)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, json.loads(raw) if raw else None

    def get(self, path: str, headers: dict[str, str], **params: str) -> tuple[int, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self.call("GET", path + query, headers)


def run(client: Client, headers: dict[str, str], text: str, thread: str) -> dict[str, Any]:
    status, body = client.call(
        "POST", "/v1/runs", headers, {"agent": "notes", "input": text, "thread_id": thread, "wait": True}
    )
    assert status == 201, body
    assert body["status"] == "completed", body
    return body


def test_b_cannot_reach_a_memory_traces_costs_or_datasets(served: Served) -> None:
    client = Client(served.url)
    a_run = run(client, A, f"remember {SECRET}", "a-private")
    assert '"stored": true' in a_run["output"]
    # A sees its own memory, so the attacks below are not vacuous
    status, mine = client.get("/v1/memory/search", A, q="card PIN", agent="notes")
    assert status == 200 and any(SECRET in hit["text"] for hit in mine), mine

    # 1. the memory browser, asked in every namespace B can name
    for params in ({"q": "card PIN"}, {"q": "card PIN", "agent": "notes"}, {"q": "4242", "agent": "notes"}):
        status, hits = client.get("/v1/memory/search", B, **params)
        assert status == 200 and hits == [], hits
    # 2. B's own agent searching memory with A's words
    b_run = run(client, B, "recall card PIN 4242", "b-thread")
    assert "4242" not in b_run["output"]
    # 3. traces: B's listing holds only B's runs; A's trace id and run trace are 404
    _, b_traces = client.get("/v1/traces", B)
    assert a_run["trace_id"] and a_run["trace_id"] not in {t["trace_id"] for t in b_traces}
    assert {t["run_id"] for t in b_traces} <= {b_run["id"]}
    assert client.get(f"/v1/traces/{a_run['trace_id']}", B)[0] == 404
    assert client.get(f"/v1/runs/{a_run['id']}/trace", B)[0] == 404
    # 4. costs: B's rollups never name A's runs
    for by in ("run", "session", "agent", "tool"):
        _, rows = client.get("/v1/costs", B, by=by)
        assert a_run["id"] not in json.dumps(rows) and "a-private" not in json.dumps(rows)
    # 5. eval datasets: B cannot promote A's run, nor read A's dataset by name
    status, promoted = client.call("POST", "/v1/evals/datasets/regress/cases", A, {"run_id": a_run["id"]})
    assert status == 201, promoted
    assert client.call("POST", "/v1/evals/datasets/steal/cases", B, {"run_id": a_run["id"]})[0] == 404
    assert client.get("/v1/evals/datasets/regress", B)[0] == 404
    assert client.get("/v1/evals/datasets", B) == (200, [])
    assert SECRET in json.dumps(client.get("/v1/evals/datasets/regress", A)[1])
