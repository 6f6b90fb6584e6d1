"""Tenant isolation, attacked over HTTP on a real `bastion serve` (SQLite, and PostgreSQL with
`--database`). Tenant B knows (or guesses) tenant A's thread ids, run ids, checkpoint ids and
pending approvals, and tries every route that takes one. Each attempt must answer 404 (never
403: no existence oracle), reveal nothing of A, and change nothing of A: A's next run sees
exactly its own conversation. The agents are real; the model echoes the user messages it was
shown (`tenancy_app.py`), so the tests read what reached each model context.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Served = Any  # conftest.Served: .url, .home, .proc, .database, .output(), .stop()

A, B = "key-a-op", "key-b-op"  # tenancy_app.KEYS: operators of tenants "a" and "b"
PIN = "my card PIN is 4242"
IBAN_A, IBAN_B = "DE89370400440532013000", "GB33BUKB20201555555555"
APP = f"{Path(__file__).with_name('tenancy_app.py')}:build"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, bastion_server: Callable[..., Served]) -> Served:
    database = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return bastion_server(APP, database=database)


def call(served: Served, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    req = urllib.request.Request(served.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    text = raw.decode()
    if not text:
        return status, None
    return status, json.loads(text) if not text.startswith(("id:", "event:")) else text


def run(served: Served, key: str, text: str, thread: str, agent: str = "echo") -> dict[str, Any]:
    body = {"agent": agent, "input": text, "thread_id": thread, "wait": True, "timeout": 30}
    status, out = call(served, "POST", "/v1/runs", key, body)
    assert status == 201, out
    assert out["status"] in ("completed", "interrupted"), out
    return out


def seen(out: dict[str, Any]) -> list[str]:
    """The user messages the echo model had in its context for this run."""
    assert out["status"] == "completed", out
    return json.loads(out["output"])["seen"]


def test_b_reusing_a_thread_id_gets_its_own_empty_thread(served: Served) -> None:
    assert seen(run(served, A, PIN, "t-1")) == [PIN]
    # B names A's thread: B's model must not see A's conversation...
    assert seen(run(served, B, "what did I tell you?", "t-1")) == ["what did I tell you?"]
    assert seen(run(served, B, "and before that?", "t-1")) == ["what did I tell you?", "and before that?"]
    # ... and A's next run must not see B's messages (as trusted user input, or at all).
    assert seen(run(served, A, "next", "t-1")) == [PIN, "next"]
    # Each tenant's listing shows only its own runs of the thread.
    _, a_runs = call(served, "GET", "/v1/threads/t-1/runs", A)
    _, b_runs = call(served, "GET", "/v1/threads/t-1/runs", B)
    assert [r["input"] for r in a_runs] == ["next", PIN]
    assert [r["input"] for r in b_runs] == ["and before that?", "what did I tell you?"]
    # B deleting "its" t-1 deletes B's thread only.
    assert call(served, "DELETE", "/v1/threads/t-1", B)[0] == 204
    assert seen(run(served, A, "still there?", "t-1")) == [PIN, "next", "still there?"]
    assert seen(run(served, B, "fresh", "t-1")) == ["fresh"]


def test_b_naming_a_ids_gets_404_and_changes_nothing(served: Served) -> None:
    first = run(served, A, PIN, "secret")
    assert first["trace_id"] and call(served, "GET", f"/v1/traces/{first['trace_id']}", A)[0] == 200
    pending = run(served, A, f"pay 10 to {IBAN_A}", "pay", agent="bank")
    assert pending["status"] == "interrupted"
    _, history = call(served, "GET", "/v1/threads/secret/history", A)
    assert history and {h["agent"] for h in history} == {"echo"}
    checkpoint = history[0]["checkpoint_id"]
    _, approvals_before = call(served, "GET", "/v1/approvals", A)
    assert [a["run_id"] for a in approvals_before] == [pending["id"]]

    hijack = {"decision": {"action": "edit", "arguments": {"iban": IBAN_B, "amount": 9999}}}
    attempts: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/runs/{first['id']}", None),
        ("GET", f"/v1/runs/{first['id']}/events", None),
        ("GET", f"/v1/runs/{first['id']}/stream", None),
        ("GET", f"/v1/runs/{first['id']}/trace", None),
        ("GET", f"/v1/traces/{first['trace_id']}", None),
        ("POST", f"/v1/runs/{first['id']}/cancel", None),
        ("GET", f"/v1/runs/{pending['id']}", None),
        ("POST", f"/v1/runs/{pending['id']}/resume", {"decision": "approve"}),
        ("POST", f"/v1/runs/{pending['id']}/cancel", None),
        ("POST", f"/v1/approvals/{pending['id']}", {"decision": "approve"}),
        ("POST", f"/v1/approvals/{pending['id']}", hijack),
        ("GET", "/v1/threads/secret/runs", None),
        ("GET", "/v1/threads/secret/history", None),
        ("POST", "/v1/threads/secret/fork", {}),
        ("POST", "/v1/threads/secret/fork", {"checkpoint_id": checkpoint, "thread_id": "stolen"}),
        ("DELETE", "/v1/threads/secret", None),
        ("GET", "/v1/threads/pay/runs", None),
        ("GET", "/v1/threads/pay/history", None),
        ("DELETE", "/v1/threads/pay", None),
    ]
    for method, path, body in attempts:
        status, out = call(served, method, path, B, body)
        assert status == 404, (method, path, status, out)
        assert "4242" not in json.dumps(out) and IBAN_A not in json.dumps(out)
    # B's own thread cannot be forked from A's checkpoint id either.
    run(served, B, "mine", "b-thread")
    status, _ = call(served, "POST", "/v1/threads/b-thread/fork", B, {"checkpoint_id": checkpoint})
    assert status == 404
    # Listings of B show nothing of A.
    assert call(served, "GET", "/v1/approvals", B)[1] == []
    assert call(served, "GET", "/v1/runs?thread_id=secret", B)[1] == []
    assert {t["thread_id"] for t in call(served, "GET", "/v1/threads", B)[1]} == {"b-thread"}
    # B running on A's paused thread neither sees A's request nor trips over A's interrupt.
    assert seen(run(served, B, "hello?", "pay")) == ["hello?"]

    # Nothing of A changed: same history, same pending approval, same conversation, and the
    # approved transfer is A's own (B's edit never landed).
    assert call(served, "GET", "/v1/threads/secret/history", A)[1] == history
    assert call(served, "GET", "/v1/approvals", A)[1] == approvals_before
    assert seen(run(served, A, "and now?", "secret")) == [PIN, "and now?"]
    status, resumed = call(served, "POST", f"/v1/approvals/{pending['id']}", A, {"decision": "approve"})
    assert status == 200 and resumed["status"] in ("queued", "running", "completed")
    # The run's event stream ends when the run does (the server bounds it).
    status, events = call(served, "GET", f"/v1/runs/{pending['id']}/stream", A)
    assert status == 200 and "event: run_completed" in events
    status, done = call(served, "GET", f"/v1/runs/{pending['id']}", A)
    assert done["status"] == "completed", done
    assert f"sent 10.0 to {IBAN_A}" in done["output"] and IBAN_B not in done["output"]


def test_delete_thread_forgets_the_conversation_and_pending_approvals(served: Served) -> None:
    assert seen(run(served, A, PIN, "t-del")) == [PIN]
    assert call(served, "DELETE", "/v1/threads/t-del", A)[0] == 204
    assert call(served, "GET", "/v1/threads/t-del/runs", A)[0] == 404
    assert call(served, "GET", "/v1/threads/t-del/history", A)[0] == 404
    assert call(served, "DELETE", "/v1/threads/t-del", A)[0] == 404
    # The next run on the same id starts empty: the model sees no earlier message.
    assert seen(run(served, A, "hello again", "t-del")) == ["hello again"]

    pending = run(served, A, f"pay 10 to {IBAN_A}", "t-pay", agent="bank")
    assert pending["status"] == "interrupted"
    assert call(served, "DELETE", "/v1/threads/t-pay", A)[0] == 204
    assert call(served, "GET", "/v1/approvals", A)[1] == []
    assert call(served, "POST", f"/v1/approvals/{pending['id']}", A, {"decision": "approve"})[0] == 404
    # The paused request and its interrupt are gone: a new run there starts clean.
    assert seen(run(served, A, "anything pending?", "t-pay", agent="bank")) == ["anything pending?"]


def test_fork_and_history_stay_within_the_tenant(served: Served) -> None:
    run(served, A, "one", "t-f")
    _, history = call(served, "GET", "/v1/threads/t-f/history", A)
    after_one = history[0]["checkpoint_id"]
    run(served, A, "two", "t-f")
    # Fork the latest state, and time-travel to the state after "one".
    status, fork = call(served, "POST", "/v1/threads/t-f/fork", A, {"thread_id": "t-f2"})
    assert status == 201 and fork["thread_id"] == "t-f2"
    assert seen(run(served, A, "three", "t-f2")) == ["one", "two", "three"]
    status, fork = call(served, "POST", "/v1/threads/t-f/fork", A, {"checkpoint_id": after_one, "thread_id": "t-f3"})
    assert status == 201
    assert seen(run(served, A, "three", "t-f3")) == ["one", "three"]
    assert seen(run(served, A, "four", "t-f")) == ["one", "two", "four"]  # the source is untouched
    assert call(served, "POST", "/v1/threads/t-f/fork", A, {"thread_id": "t-f2"})[0] == 409
    assert call(served, "POST", "/v1/threads/t-f/fork", A, {"checkpoint_id": "nope"})[0] == 404
    # B can neither read A's fork nor fork into A's thread ids; its own "t-f2" is empty.
    assert call(served, "GET", "/v1/threads/t-f2/history", B)[0] == 404
    assert call(served, "POST", "/v1/threads/t-f2/fork", B, {"checkpoint_id": after_one})[0] == 404
    assert seen(run(served, B, "mine", "t-f2")) == ["mine"]
