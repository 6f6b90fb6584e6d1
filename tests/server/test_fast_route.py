"""The direct route for `POST /v1/runs` answers exactly as the FastAPI route does.

Two apps share one runtime and key store: the real one (direct route first in the router) and
the same app with the direct route removed (only FastAPI's). Every request below goes to both,
over real HTTP, and must get the same status and body; the direct route must have served the
well-formed ones itself and handed the others to FastAPI.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from bastion.runtime import RunOutcome, Runtime, SqlRunStore
from bastion.runtime._types import EventSink
from bastion.server import SQLiteApiKeyStore, create_app
from bastion.server._fast import FastCreateRun
from bastion.server._limits import EdgeLimits
from bastion.testing import serve_app
from bastion.types import RunContext

LIMITS = EdgeLimits(max_body_bytes=4096, max_json_depth=8)
RUN_FIELDS = (
    "id", "thread_id", "agent", "status", "input", "output", "error", "interrupts", "attempts", "usage",
    "cost_usd", "trace_id", "metadata", "created_at", "updated_at",
)  # fmt: skip


class Echo:
    async def invoke(
        self, input: Any, *, thread_id: str, context: RunContext, resume: Any = None, recover: bool = False,
        emit: EventSink | None = None, **_: Any,
    ) -> RunOutcome:  # fmt: skip
        if input == "refund" and resume is None:  # pauses: the thread stays active
            return RunOutcome("interrupted", interrupts=[{"id": "int_1", "payload": {"amount": 40}}])
        return RunOutcome("completed", output={"echo": input}, usage={"input_tokens": 3})


class CountingRoute(BaseRoute):
    """Stands in for the FastAPI route behind the direct one and counts what it is handed."""

    def __init__(self, inner: BaseRoute) -> None:
        self.inner = inner
        self.handled = 0

    def matches(self, scope: Scope) -> Any:
        return self.inner.matches(scope)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.handled += 1
        await self.inner.handle(scope, receive, send)


@dataclass
class Apps:
    fast: str
    plain: str
    session: aiohttp.ClientSession
    fallback: CountingRoute

    async def post(self, base: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.session.post(base + "/v1/runs", data=body, headers=headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if r.content_type == "application/json" else text

    async def both(self, body: Any, *, key: str | None = "key-op", content_type: str = "application/json",
                   raw: bytes | None = None) -> tuple[tuple[int, Any], tuple[int, Any]]:  # fmt: skip
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else json.dumps(body).encode()
        return await self.post(self.fast, data, headers), await self.post(self.plain, data, headers)


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[Apps]:
    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    keys.add("key-op", "acme", "operator")
    keys.add("key-viewer", "acme", "viewer")
    runtime = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {"echo": Echo()}, lease_seconds=5)
    fast = create_app(runtime, keys, manage_runtime=False, limits=LIMITS)
    plain = create_app(runtime, keys, manage_runtime=False, limits=LIMITS)
    plain.router.routes[:] = [r for r in plain.router.routes if not isinstance(r, FastCreateRun)]
    direct = next(r for r in fast.router.routes if isinstance(r, FastCreateRun))
    counting = CountingRoute(direct.fallback)
    direct.fallback = counting
    async with runtime, serve_app(fast) as a, serve_app(plain) as b, aiohttp.ClientSession() as session:
        yield Apps(a, b, session, counting)
    keys.close()


def _shape(run: dict[str, Any]) -> dict[str, Any]:
    """A run body without what differs between two runs (ids, times)."""
    return {k: v for k, v in run.items() if k not in ("id", "thread_id", "created_at", "updated_at", "trace_id")}


async def test_a_well_formed_request_is_served_directly_with_the_fastapi_body(apps: Apps) -> None:
    body = {"agent": "echo", "input": {"q": "hi"}, "wait": True, "metadata": {"source": "test"}}
    (s1, fast), (s2, plain) = await apps.both(body)
    assert (s1, s2) == (201, 201), (fast, plain)
    assert tuple(fast) == tuple(plain) == RUN_FIELDS  # same fields, same order
    assert _shape(fast) == _shape(plain)
    assert fast["status"] == "completed" and fast["output"] == {"echo": {"q": "hi"}}
    assert fast["usage"] == {"input_tokens": 3} and fast["metadata"] == {"source": "test"}
    async with apps.session.get(f"{apps.fast}/v1/runs/{fast['id']}", headers={"Authorization": "Bearer key-op"}) as r:
        assert await r.json() == fast  # what the run store holds, as GET answers it
    (s1, queued), _ = await apps.both({"agent": "echo", "input": "later"})  # no wait: the run as created
    assert s1 == 201 and queued["status"] == "queued" and queued["attempts"] == 0
    assert apps.fallback.handled == 0


# (name, request, expected status, handed to FastAPI): declined by the direct route, or accepted
# and failed in the shared handler (an unknown agent), the answer is FastAPI's.
CASES: list[tuple[str, dict[str, Any], int, bool]] = [
    ("no key", {"body": {"agent": "echo", "input": "x"}, "key": None}, 401, True),
    ("unknown key", {"body": {"agent": "echo", "input": "x"}, "key": "nope"}, 401, True),
    ("viewer key", {"body": {"agent": "echo", "input": "x"}, "key": "key-viewer"}, 403, True),
    ("extra field", {"body": {"agent": "echo", "input": "x", "priority": 1}}, 422, True),
    ("no input", {"body": {"agent": "echo"}}, 422, True),
    ("timeout out of range", {"body": {"agent": "echo", "input": "x", "wait": True, "timeout": 601}}, 422, True),
    ("wait as a string", {"body": {"agent": "echo", "input": "x", "wait": "maybe"}}, 422, True),
    ("bad strategy", {"body": {"agent": "echo", "input": "x", "multitask_strategy": "queue"}}, 422, True),
    ("not an object", {"body": ["echo"]}, 422, True),
    ("not JSON", {"body": None, "raw": b'{"agent": "echo", "input": '}, 422, True),
    ("empty body", {"body": None, "raw": b""}, 422, True),
    ("text/plain", {"body": {"agent": "echo", "input": "x"}, "content_type": "text/plain"}, 422, True),
    ("too deep", {"body": {"agent": "echo", "input": [[[[[[[[["deep"]]]]]]]]]}}, 400, True),
    ("too large", {"body": {"agent": "echo", "input": "x" * 5000}}, 413, False),  # refused before any route
    ("unknown agent", {"body": {"agent": "nobody", "input": "x"}}, 400, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_other_requests_get_the_fastapi_answer(apps: Apps, case: tuple[str, dict[str, Any], int, bool]) -> None:
    _, request, status, declined = case
    (s1, fast), (s2, plain) = await apps.both(**request)
    assert s1 == s2 == status, (fast, plain)
    assert fast == plain
    assert apps.fallback.handled == (1 if declined else 0)


async def test_an_error_after_acceptance_is_answered_by_the_app_handlers(apps: Apps) -> None:
    headers = {"Authorization": "Bearer key-op", "Content-Type": "application/json"}
    pause = json.dumps({"agent": "echo", "input": "refund", "wait": True, "thread_id": "t1"}).encode()
    status, paused = await apps.post(apps.fast, pause, headers)
    assert status == 201 and paused["status"] == "interrupted"
    # The thread has a pending approval: another run on it is refused, by both apps alike.
    (s1, fast), (s2, plain) = await apps.both({"agent": "echo", "input": "x", "thread_id": "t1"})
    assert s1 == s2 == 409
    assert fast == plain and fast["error"]["type"] == "conflict" and paused["id"] in fast["error"]["message"]
    assert apps.fallback.handled == 0  # accepted directly; the handler's error went through the app's handlers


async def test_a_stream_ends_at_the_latest_final_event_not_an_earlier_pause(apps: Apps) -> None:
    """Streams stop on the run's final event without reading the run again; a pause that was
    answered is not the end: the stream of a resumed run follows it to its completion."""
    headers = {"Authorization": "Bearer key-op", "Content-Type": "application/json"}
    status, paused = await apps.post(apps.fast, json.dumps({"agent": "echo", "input": "refund", "wait": True}).encode(),
                                     headers)  # fmt: skip
    assert status == 201 and paused["status"] == "interrupted"
    async with apps.session.post(f"{apps.fast}/v1/runs/{paused['id']}/resume", json={"decision": "approve"},
                                 headers=headers) as r:  # fmt: skip
        assert r.status == 200, await r.text()
    async with apps.session.get(f"{apps.fast}/v1/runs/{paused['id']}/stream", headers=headers) as r:
        body = await r.text()
    kinds = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
    assert kinds.index("run_interrupted") < kinds.index("run_resumed") < kinds.index("run_completed")
    assert kinds[-2:] == ["run_completed", "end"]
