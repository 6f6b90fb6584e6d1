"""Limits at the HTTP edge (body size, JSON depth), tolerant listings, UI paths and credential
redaction, over a real uvicorn server on 127.0.0.1 with a real SQLite run store."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from bastion.config import load_settings, redact_credentials
from bastion.errors import ConfigError
from bastion.runtime import RunOutcome, Runtime, SqlRunStore, Webhook, sign
from bastion.server import EdgeLimits, SQLiteApiKeyStore, create_app
from bastion.server._limits import json_too_deep
from bastion.testing import serve_app

LIMITS = EdgeLimits(max_body_bytes=64 * 1024, max_json_depth=8, proxy_max_body_bytes=128 * 1024)
SECRET = "hook-secret"


class Echo:
    async def invoke(self, input: Any, **_: Any) -> RunOutcome:
        return RunOutcome("completed", output={"echo": input})


def nested(depth: int) -> Any:
    """A JSON value whose objects/arrays nest exactly `depth` levels."""
    value: Any = 1
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    return 0


class Client:
    def __init__(self, base: str, session: aiohttp.ClientSession, db: Path) -> None:
        self.base, self.session, self.db = base, session, db

    async def call(self, method: str, path: str, *, key: str | None = "key-op", **kw: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))
        url = URL(self.base + path, encoded=True)  # exactly as given: no client-side dot-segment folding
        async with self.session.request(method, url, headers=headers, **kw) as r:
            text = await r.text()
            return r.status, (json.loads(text) if r.content_type == "application/json" else text)

    def stored_runs(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT count(*) FROM bastion_runs").fetchone()[0]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    keys.add("key-op", "acme", "operator")
    db = tmp_path / "runs.db"
    runtime = Runtime(SqlRunStore.sqlite(db), {"echo": Echo()}, lease_seconds=5)
    app = create_app(runtime, keys, webhooks=[Webhook("ticket", "echo", secret=SECRET, tenant="acme")], limits=LIMITS)
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        yield Client(base, session, db)
    keys.close()


# -- depth check on raw bytes ----------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 7, 8, 9, 40])
def test_json_depth_matches_the_parsed_depth(depth: int) -> None:
    raw = json.dumps({"a": "[[[{{{", "b": nested(depth)}).encode()  # brackets inside strings do not count
    assert json_too_deep(raw, 8) is (depth + 1 > 8)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
        max_leaves=40,
    ),
    st.integers(min_value=2, max_value=12),
)
def test_json_depth_agrees_with_a_parser(value: Any, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert json_too_deep(raw, limit) is (depth_of(value) > limit)


# -- size and depth at the edge: 4xx, nothing stored ------------------------------------------


async def test_deep_metadata_is_refused_and_nothing_is_stored(client: Client) -> None:
    status, body = await client.call("POST", "/v1/runs", json={"agent": "echo", "input": "hi", "metadata": nested(500)})
    assert status == 400 and "BASTION_MAX_JSON_DEPTH" in body["error"]["message"]
    assert client.stored_runs() == 0
    for path, payload in [
        ("/v1/runs", {"agent": "echo", "input": nested(9)}),
        ("/v1/threads", {"metadata": {"x": nested(20)}}),
        ("/v1/runs/run_x/resume", {"decision": nested(50)}),
        ("/v1/approvals/run_x", {"decision": nested(50)}),
    ]:
        status, body = await client.call("POST", path, json=payload)
        assert status == 400, (path, body)
    assert client.stored_runs() == 0
    status, run = await client.call("POST", "/v1/runs", json={"agent": "echo", "input": nested(6), "wait": True})
    assert status == 201 and run["status"] == "completed"  # within the limit: accepted as before


async def test_oversized_bodies_are_413_with_a_json_error(client: Client) -> None:
    big = {"agent": "echo", "input": "x" * (LIMITS.max_body_bytes + 1)}
    status, body = await client.call("POST", "/v1/runs", json=big)
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert "BASTION_MAX_BODY_BYTES" in body["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"agent": "echo", "input": "'
        for _ in range(200):
            yield b"y" * 4096
        yield b'"}'

    headers = {"content-type": "application/json"}
    status, body = await client.call("POST", "/v1/runs", data=chunks(), headers=headers)
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert client.stored_runs() == 0
    assert (await client.call("GET", "/v1/runs"))[0] == 200


async def test_webhook_signature_is_checked_on_a_bounded_read(client: Client) -> None:
    body = json.dumps({"text": "late parcel"}).encode()
    status, _ = await client.call("POST", "/v1/triggers/ticket", key=None, data=body)
    assert status == 400
    status, _ = await client.call(
        "POST", "/v1/triggers/ticket", key=None, data=body, headers={"X-Bastion-Signature": "sha256=" + "0" * 64}
    )
    assert status == 400
    huge = b"{" + b" " * (LIMITS.max_body_bytes * 2) + b"}"
    status, out = await client.call(
        "POST", "/v1/triggers/ticket", key=None, data=huge, headers={"X-Bastion-Signature": sign(SECRET, huge)}
    )
    assert status == 413 and out["error"]["type"] == "request_too_large"
    deep = json.dumps(nested(30)).encode()
    status, out = await client.call(
        "POST", "/v1/triggers/ticket", key=None, data=deep, headers={"X-Bastion-Signature": sign(SECRET, deep)}
    )
    assert status == 400 and "deeper" in out["error"]["message"]
    assert client.stored_runs() == 0
    status, run = await client.call(
        "POST", "/v1/triggers/ticket", key=None, data=body, headers={"X-Bastion-Signature": sign(SECRET, body)}
    )
    assert status == 202 and run["input"] == {"text": "late parcel"}


async def test_a_missing_signature_is_refused_before_the_body_is_read() -> None:
    hook = Webhook("t", "echo", secret=SECRET)
    read: list[bytes] = []

    async def chunks() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"{}"

    for signature in (None, "", "sha1=abc", "sha256=short"):
        with pytest.raises(Exception, match="X-Bastion-Signature"):
            await hook.read_verified(chunks(), signature)
    assert read == []
    assert await hook.read_verified(chunks(), sign(SECRET, b"{}")) == b"{}"


# -- listings survive one bad row ------------------------------------------------------------


async def test_listings_skip_a_row_they_cannot_decode(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    status, good = await client.call("POST", "/v1/runs", json={"agent": "echo", "input": "ok", "wait": True})
    assert status == 201
    status, _ = await client.call("POST", "/v1/threads", json={"thread_id": "t-good", "metadata": {"a": 1}})
    assert status == 201
    # Rows written before the edge checked depth (or damaged on disk): 500 deep, and not JSON.
    deep = json.dumps(nested(500))
    with sqlite3.connect(client.db) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(bastion_runs)")]
        row = dict(zip(columns, conn.execute("SELECT * FROM bastion_runs").fetchone(), strict=True))
        for run_id, metadata in (("run_deep", deep), ("run_broken", "{not json")):
            interrupts = json.dumps([{"id": "int_1", "payload": nested(500)}]) if run_id == "run_deep" else "[]"
            values = {**row, "id": run_id, "metadata": metadata, "status": "interrupted", "interrupts": interrupts}
            marks = ", ".join("?" * len(columns))
            conn.execute(f"INSERT INTO bastion_runs ({', '.join(columns)}) VALUES ({marks})", list(values.values()))
        conn.execute("INSERT INTO bastion_threads VALUES ('acme', 't-deep', ?, 1.0)", (deep,))
        conn.execute("INSERT INTO bastion_threads VALUES ('acme', 't-broken', '{nope', 1.0)")
    with caplog.at_level(logging.WARNING):
        status, runs = await client.call("GET", "/v1/runs")
        assert status == 200 and [r["id"] for r in runs] == [good["id"]]
        status, threads = await client.call("GET", "/v1/threads")
        assert status == 200 and "t-good" in {t["thread_id"] for t in threads}
        assert not {"t-deep", "t-broken"} & {t["thread_id"] for t in threads}
        status, approvals = await client.call("GET", "/v1/approvals")
        assert status == 200 and approvals == []
        status, in_thread = await client.call("GET", f"/v1/threads/{good['thread_id']}/runs")  # same thread
        assert status == 200 and [r["id"] for r in in_thread] == [good["id"]]
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "run_deep" in skipped and "run_broken" in skipped and "t-broken" in skipped


# -- UI paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/ui/%00", "/ui/app.js%00.png", "/ui/%2e%2e", "/ui/..%2f..%2fetc%2fpasswd", "/ui/.", "/ui/%2e%2e%2f_app.py"],
)
async def test_ui_paths_that_are_not_assets_are_404(client: Client, path: str) -> None:
    status, body = await client.call("GET", path, key=None)
    assert status == 404, body
    assert "root:" not in str(body)
    assert (await client.call("GET", "/ui/app.js", key=None))[0] == 200


# -- settings and redaction ------------------------------------------------------------------


def test_size_settings_take_units_and_capture_content_takes_its_documented_modes() -> None:
    s = load_settings(max_body_bytes="2MiB", proxy_max_body_bytes=512, max_json_depth=16)
    assert (s.max_body_bytes, s.proxy_max_body_bytes, s.max_json_depth) == (2 * 1024 * 1024, 512, 16)
    assert load_settings(capture_content="span_attributes").capture_content is True
    assert load_settings(capture_content="off").capture_content is False
    with pytest.raises(ConfigError, match="max_json_depth"):
        load_settings(max_json_depth=1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:secretpw@127.0.0.1:1/x", "postgresql://user:***@127.0.0.1:1/x"),
        (
            "PostgreSQL (postgres://u:p@ss@db:5432/b?sslmode=require)",
            "PostgreSQL (postgres://u:***@db:5432/b?sslmode=require)",
        ),
        ('"postgresql://bastion:secretpw@/db?host=/tmp/x"', '"postgresql://bastion:***@/db?host=/tmp/x"'),
        (
            "postgresql://h/db?user=u&password=secretpw&connect_timeout=5",
            "postgresql://h/db?user=u&password=***&connect_timeout=5",
        ),
        ("host=db password=secretpw user=x", "host=db password=*** user=x"),
        ("password='secret pw' dbname=x", "password=*** dbname=x"),
        (
            "postgresql://user@host/db and http://example.com/?q=1",
            "postgresql://user@host/db and http://example.com/?q=1",
        ),
        ("key sk-proj-abcdefghijklmnop", "key [REDACTED]"),
    ],
)
def test_redact_credentials(text: str, expected: str) -> None:
    assert redact_credentials(text) == expected
    assert "secret" not in redact_credentials(text).replace("secret pw", "")


async def test_readiness_and_errors_do_not_echo_a_database_password(tmp_path: Path) -> None:
    class Down(SqlRunStore):
        async def list(self, tenant: str, **kw: Any) -> Any:
            raise RuntimeError('could not connect to "postgresql://bastion:secretpw@db/x"')

    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    store = Down("sqlite", lambda: sqlite3.connect(tmp_path / "r.db", check_same_thread=False, isolation_level=None))
    app = create_app(Runtime(store, {}), keys, manage_runtime=False)
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        async with session.get(base + "/ready") as r:
            text = await r.text()
    keys.close()
    assert r.status == 503 and "secretpw" not in text and "bastion:***@db" in text


async def test_an_unexpected_error_is_a_json_500_without_internals(tmp_path: Path) -> None:
    from fastapi import FastAPI

    def broken(app: FastAPI) -> None:
        @app.get("/v1/broken")
        async def fail() -> None:
            raise RuntimeError("connection to postgresql://bastion:secretpw@db/x lost")

    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    runtime = Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {})
    app = create_app(runtime, keys, extensions=[broken])
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        async with session.get(base + "/v1/broken") as r:
            body = await r.json()
        async with session.get(base + "/health") as health:
            assert health.status == 200
    keys.close()
    assert r.status == 500 and body["error"]["type"] == "internal_error"
    assert "secretpw" not in json.dumps(body)


async def test_the_mounted_proxy_refuses_an_oversized_chunked_body_in_openai_format(tmp_path: Path) -> None:
    from bastion.gateway import Gateway
    from bastion.gateway.proxy import InMemoryKeyStore, create_proxy_app, mint_key
    from bastion.testing import FunctionModel

    proxy_keys = InMemoryKeyStore()
    key, _ = await mint_key(proxy_keys, tenant="acme")
    gateway = Gateway(models={"m": FunctionModel(lambda request: "ok", name="m")})
    proxy = create_proxy_app(gateway, keys=proxy_keys, max_body_bytes=LIMITS.proxy_max_body_bytes)
    keys = SQLiteApiKeyStore(tmp_path / "keys.db")
    app = create_app(Runtime(SqlRunStore.sqlite(tmp_path / "runs.db"), {}), keys, proxy=proxy, limits=LIMITS)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"z" * 4096
        yield b'"}]}'

    url = "/openai/v1/chat/completions"
    auth = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    async with serve_app(app) as base, aiohttp.ClientSession() as session:
        async with session.post(base + url, data=chunks(), headers=auth) as r:
            status, body = r.status, await r.json()
        assert status == 413 and body["error"]["code"] == "request_too_large", body
        over_api_limit = json.dumps({"model": "m", "messages": [{"role": "user", "content": "y" * 100_000}]})
        async with session.post(base + url, data=over_api_limit, headers=auth) as r:
            assert r.status == 200  # the proxy's own (larger) limit applies under /openai
    keys.close()
