"""API fuzzing: schemathesis generates valid and invalid requests for every operation of the
server's OpenAPI document; none may answer 5xx.

The server is real: `create_app(...)` (runtime over SQLite, API keys, trace/cost/memory
extensions, a webhook) under uvicorn on 127.0.0.1, in its own thread and event loop, because
schemathesis/hypothesis drive it from synchronous code. Requests carry a valid operator key, so
the fuzzing reaches the handlers instead of stopping at authentication.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.runtime import RunOutcome, Runtime, Webhook
from bastion.runtime._types import EventSink
from bastion.types import RunContext

KEY = "key-fuzz-operator"
EXAMPLES_PER_OPERATION = 25  # per generation mode (valid, then invalid input)


class Echo:
    description = "echoes its input"

    async def invoke(
        self, input: Any, *, thread_id: str, context: RunContext, resume: Any = None, recover: bool = False,
        emit: EventSink | None = None, **_: Any,
    ) -> RunOutcome:  # fmt: skip
        if emit:
            await emit("token", {"text": "ok"})
        if input == "approve-me" and resume is None:
            return RunOutcome("interrupted", interrupts=[{"id": "i1", "payload": {"tool": "refund"}}])
        return RunOutcome("completed", output={"echo": input, "decision": resume})


class ThreadedServer:
    """uvicorn on 127.0.0.1 in a background thread (own loop); lifespan starts the runtime."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as e:  # reported by __enter__/__exit__
            self.error = e

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:  # bounded readiness poll
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {self.error!r}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not shut down within 20 s"
        if self.error is not None:
            raise self.error


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    from bastion.memory import HashingEmbedder, SQLiteMemoryStore
    from bastion.server import SQLiteApiKeyStore, create_app
    from bastion.server._extensions import cost_routes, eval_routes, memory_routes, trace_routes
    from bastion.tracing import TraceStore

    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    keys.add(KEY, "acme", "operator")
    traces = TraceStore(tmp_path / "traces.db")
    memory = SQLiteMemoryStore(tmp_path / "memory.db", embedder=HashingEmbedder())
    runtime = Runtime.embedded(tmp_path / "runs.db", {"echo": Echo()}, lease_seconds=5)
    app = create_app(
        runtime, keys,
        webhooks=[
            Webhook("ticket", "echo", secret="s3cret", tenant="acme"),
            Webhook("strict", "echo", secret="s3cret", tenant="acme", input_template=lambda p: f"#{p['ticket']}"),
        ],
        extensions=[
            trace_routes(traces, runtime), cost_routes(traces), memory_routes(memory),
            eval_routes(traces, runtime, tmp_path / "home"),
        ],
    )  # fmt: skip
    try:
        with ThreadedServer(app) as srv:
            yield srv
    finally:
        asyncio.run(memory.close())
        traces.close()
        keys.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_operation_answers_5xx(server: ThreadedServer) -> None:
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable

    with requests.Session() as session:
        document = session.get(f"{server.base_url}/openapi.json", timeout=10).json()
        schema = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20, [op.label for op in operations]
        # Give the fuzzer real ids to aim at, so run/thread lookups also hit existing rows.
        auth = {"Authorization": f"Bearer {KEY}"}
        made = session.post(
            f"{server.base_url}/v1/runs", json={"agent": "echo", "input": "approve-me", "wait": True},
            headers=auth, timeout=10,
        )  # fmt: skip
        assert made.status_code == 201 and made.json()["status"] == "interrupted", made.text
        real = {"run_id": made.json()["id"], "thread_id": made.json()["thread_id"]}

        failures: list[str] = []
        calls = 0
        for op in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )  # fmt: skip
                @given(case=op.as_strategy(mode, headers=auth), aim=st.booleans())
                def check(case: Any, aim: bool) -> None:
                    nonlocal calls
                    calls += 1
                    if aim:  # point half the ids at a real run/thread, so handlers get past the 404
                        for params in (case.path_parameters, case.body):
                            if isinstance(params, dict):
                                params.update({k: v for k, v in real.items() if k in params})
                    response = case.call(base_url=server.base_url, session=session, headers=auth, timeout=30)
                    if response.status_code >= 500:
                        failures.append(
                            f"{case.operation.label} -> {response.status_code} {response.text[:200]}\n"
                            f"  {case.as_curl_command()}"
                        )

                try:
                    check()
                except Unsatisfiable:
                    # No invalid request exists for this operation (no parameters, or only
                    # free-form strings): nothing to fuzz in this mode.
                    assert mode is schemathesis.GenerationMode.NEGATIVE, op.label
                except Exception as e:  # the operation could not be generated at all: report it
                    failures.append(f"{op.label} [{mode.value}]: generation failed: {type(e).__name__}: {e}")

    print(f"\n{calls} generated requests over {len(operations)} operations")
    assert calls >= len(operations) * 2
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("value", ["1e300", "-1", "nan", "inf"])
def test_cost_window_out_of_range_is_a_clear_422(server: ThreadedServer, value: str) -> None:
    """Found by the fuzzer: a huge `until` overflowed SQLite's integers and answered 500."""
    import requests

    with requests.Session() as session:
        auth = {"Authorization": f"Bearer {KEY}"}
        bad = session.get(f"{server.base_url}/v1/costs", params={"until": value}, headers=auth, timeout=10)
        assert bad.status_code == 422, bad.text
        assert "until" in bad.json()["error"]["message"]
        good = session.get(f"{server.base_url}/v1/costs", params={"until": "4102444800"}, headers=auth, timeout=10)
        assert good.status_code == 200 and good.json() == []


def test_webhook_payload_that_does_not_fit_its_template_is_a_400(server: ThreadedServer) -> None:
    """A signed payload the webhook's `input_template` cannot read is the sender's error, not a 500."""
    import json

    import requests

    from bastion.runtime import sign

    with requests.Session() as session:
        auth = {"Authorization": f"Bearer {KEY}"}
        before = session.get(f"{server.base_url}/v1/runs", headers=auth, timeout=10).json()
        for payload in ({"no_ticket": 1}, [1, 2], "text"):
            body = json.dumps(payload).encode()
            bad = session.post(
                f"{server.base_url}/v1/triggers/strict", data=body,
                headers={"X-Bastion-Signature": sign("s3cret", body)}, timeout=10,
            )  # fmt: skip
            assert bad.status_code == 400, bad.text
            assert "strict" in bad.json()["error"]["message"] and "template" in bad.json()["error"]["message"]
        body = json.dumps({"ticket": 7}).encode()
        good = session.post(
            f"{server.base_url}/v1/triggers/strict", data=body,
            headers={"X-Bastion-Signature": sign("s3cret", body)}, timeout=10,
        )  # fmt: skip
        assert good.status_code == 202 and good.json()["input"] == "#7", good.text
        after = session.get(f"{server.base_url}/v1/runs", headers=auth, timeout=10).json()
        assert len(after) == len(before) + 1  # the rejected payloads created no runs


def test_cost_series_with_a_vanishing_window_is_a_clear_422(server: ThreadedServer) -> None:
    """Found by the fuzzer: `hours=5e-324` made zero-width buckets and answered 500."""
    import requests

    with requests.Session() as session:
        auth = {"Authorization": f"Bearer {KEY}"}
        url = f"{server.base_url}/v1/costs/series"
        bad = session.get(url, params={"hours": "5e-324", "buckets": "1"}, headers=auth, timeout=10)
        assert bad.status_code == 422, bad.text
        assert "hours" in bad.json()["error"]["message"]
        good = session.get(url, params={"hours": "0.01", "buckets": "200"}, headers=auth, timeout=10)
        assert good.status_code == 200 and good.json()["buckets"] == 200, good.text


def test_promoting_a_run_with_a_malformed_expected_is_a_clear_422(server: ThreadedServer) -> None:
    """Found by the fuzzer: unknown `expected` fields raised ValueError and answered 500."""
    import requests

    with requests.Session() as session:
        auth = {"Authorization": f"Bearer {KEY}"}
        run = session.post(
            f"{server.base_url}/v1/runs", json={"agent": "echo", "input": "hi", "wait": True}, headers=auth, timeout=10
        ).json()
        url = f"{server.base_url}/v1/evals/datasets/smoke/cases"
        bad = session.post(url, json={"run_id": run["id"], "expected": {"nonsense": 1}}, headers=auth, timeout=10)
        assert bad.status_code == 422, bad.text
        assert "nonsense" in bad.json()["error"]["message"]
        listed = session.get(f"{server.base_url}/v1/evals/datasets", headers=auth, timeout=10).json()
        assert listed == []  # nothing was written
        good = session.post(
            url, json={"run_id": run["id"], "expected": {"output_contains": ["hi"]}}, headers=auth, timeout=10
        )
        assert good.status_code == 201, good.text
        listed = session.get(f"{server.base_url}/v1/evals/datasets", headers=auth, timeout=10).json()
        assert listed == [{"name": "smoke", "cases": 1}]
