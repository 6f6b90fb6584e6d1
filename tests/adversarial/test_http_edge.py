"""Attacks on the HTTP edge of a real `bastion serve` subprocess: deep JSON, huge and endless
bodies, webhooks that never sign, NUL bytes and traversal in UI paths, and the documented
limit settings. Every case checks the server still serves other requests afterwards.

Requests go through `http.client` or a raw socket so paths, `Content-Length` and chunking are
sent exactly as written (HTTP client libraries normalise `%2e%2e` away)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.runtime import sign

Served = Any  # tests/adversarial/conftest.py's `Served` (conftest modules are not importable)
ServerFactory = Any
WEBHOOK_SECRET = "edge-hook-secret"  # as in edge_app.py
HERE = Path(__file__).parent
EDGE_APP = f"{HERE / 'edge_app.py'}:build"
DOCS = HERE.parent.parent / "docs" / "runtime.md"
MIB = 1024 * 1024


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def request(
    served: Served,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    *,
    key: str | None = "key-a-op",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(served.url.removeprefix("http://"), timeout=60)
    all_headers = {"content-type": "application/json", **(headers or {})}
    if key:
        all_headers["authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=body, headers=all_headers, encode_chunked=isinstance(body, Iterator))
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, json.loads(raw) if is_json else raw.decode(errors="replace")


def headers_only(served: Served, head: str) -> tuple[int, dict[str, Any]]:
    """Send a request head (no body, whatever it declares) and read the answer."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    body = rest.split(b"\r\n\r\n", 1)[1]
    return int(status_line.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    match = re.search(rb"content-length: (\d+)", data, re.IGNORECASE)
    return int(match[1]) if match else 0


def stored_runs(served: Served) -> int:
    with sqlite3.connect(served.home / "runs.db") as conn:
        return conn.execute("SELECT count(*) FROM bastion_runs").fetchone()[0]


def assert_still_serving(served: Served) -> None:
    assert request(served, "GET", "/health", key=None)[0] == 200
    status, runs = request(served, "GET", "/v1/runs")
    assert status == 200 and isinstance(runs, list)
    assert request(served, "GET", "/v1/threads")[0] == 200
    status, run = request(
        served, "POST", "/v1/runs", json.dumps({"agent": "echo", "input": "ping", "wait": True}).encode()
    )
    assert status == 201 and run["status"] == "completed", run
    assert served.proc.poll() is None
    assert "Traceback" not in served.output()


def peak_rss_kib(served: Served) -> int:
    status = Path(f"/proc/{served.proc.pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match
    return int(match[1])


@pytest.fixture
def served(bastion_server: ServerFactory) -> Served:
    return bastion_server(EDGE_APP)


def test_deep_metadata_is_refused_stored_nowhere_and_listings_stay_up(served: Served) -> None:
    for field in ("metadata", "input"):
        payload = {"agent": "echo", "input": "hi", "metadata": {}} | {field: nested(500)}
        status, body = request(served, "POST", "/v1/runs", json.dumps(payload).encode())
        assert status == 400 and "deeper than 32" in body["error"]["message"], body
    status, body = request(served, "POST", "/v1/threads", json.dumps({"metadata": nested(500)}).encode())
    assert status == 400, body
    assert stored_runs(served) == 0
    assert request(served, "GET", "/v1/runs") == (200, [])
    assert request(served, "GET", "/v1/threads") == (200, [])
    assert_still_serving(served)


def test_a_20_mb_input_is_413_and_stored_nowhere(served: Served) -> None:
    body = json.dumps({"agent": "echo", "input": "x" * (20 * MIB)}).encode()
    status, out = request(served, "POST", "/v1/runs", body)
    assert status == 413 and out["error"]["type"] == "request_too_large", out
    assert "1048576" in out["error"]["message"]

    def chunked() -> Iterator[bytes]:  # the same, without a Content-Length
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    status, out = request(served, "POST", "/v1/runs", chunked())
    assert status == 413 and out["error"]["type"] == "request_too_large", out
    status, out = headers_only(
        served, "POST /v1/runs HTTP/1.1\nHost: x\nAuthorization: Bearer key-a-op\nContent-Length: 1073741824\n"
    )
    assert status == 413 and out["error"]["type"] == "request_too_large"
    assert stored_runs(served) == 0
    assert_still_serving(served)


def test_a_webhook_with_a_huge_body_and_a_bad_signature_is_refused_on_a_bounded_read(served: Served) -> None:
    before = peak_rss_kib(served)
    chunk = b" " * (256 * 1024)

    def endless() -> Iterator[bytes]:  # 64 MiB, chunked, signed with the wrong secret
        yield b"{"
        for _ in range(256):
            yield chunk
        yield b"}"

    bad = {"X-Bastion-Signature": sign("not-the-secret", b"{}")}
    status, out = request(served, "POST", "/v1/triggers/ticket", endless(), key=None, headers=bad)
    assert status == 413, out
    grew_mib = (peak_rss_kib(served) - before) / 1024
    assert grew_mib < 16, f"peak RSS grew {grew_mib:.1f} MiB for a 64 MiB body"
    # Without a signature the body is never read: the answer comes with the body unsent.
    status, out = headers_only(served, "POST /v1/triggers/ticket HTTP/1.1\nHost: x\nContent-Length: 900000\n")
    assert status == 400 and "X-Bastion-Signature" in out["error"]["message"]
    deep = json.dumps(nested(100)).encode()
    signed = {"X-Bastion-Signature": sign(WEBHOOK_SECRET, deep)}
    status, out = request(served, "POST", "/v1/triggers/ticket", deep, key=None, headers=signed)
    assert status == 400 and "deeper" in out["error"]["message"]
    assert stored_runs(served) == 0
    good = json.dumps({"text": "late parcel"}).encode()
    signed = {"X-Bastion-Signature": sign(WEBHOOK_SECRET, good)}
    assert request(served, "POST", "/v1/triggers/ticket", good, key=None, headers=signed)[0] == 202
    assert_still_serving(served)


UI_ATTACKS = [
    "/ui/%00",
    "/ui/index.html%00",
    "/ui/%2e%2e",
    "/ui/..%2f..%2fetc%2fpasswd",
    "/ui/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/ui/..%5c..%5cetc%5cpasswd",
    "/ui/.%2e/server/_app.py",
    "/ui/%252e%252e%252fetc%252fpasswd",
]


def test_ui_nul_and_traversal_are_4xx(served: Served) -> None:
    for path in UI_ATTACKS:  # one server for all: each must leave it serving
        status, body = request(served, "GET", path, key=None)
        assert 400 <= status < 500, (path, status, body)
        assert "root:" not in str(body) and "create_app" not in str(body)
        assert request(served, "GET", "/ui/app.js", key=None)[0] == 200
    assert_still_serving(served)


def test_the_proxy_refuses_an_oversized_body_in_openai_format(served: Served) -> None:
    head = "POST /openai/v1/chat/completions HTTP/1.1\nHost: x\nContent-Type: application/json\n"
    status, out = headers_only(served, head + f"Content-Length: {32 * MIB + 1}\n")
    assert status == 413
    assert out["error"]["code"] == "request_too_large" and out["error"]["type"] == "invalid_request_error"
    # Over the API's 1 MiB but under the proxy's 32 MiB: the proxy's own rules apply (no key: 401).
    status, out = request(served, "POST", "/openai/v1/chat/completions", b" " * (2 * MIB), key=None)
    assert status == 401, out
    assert_still_serving(served)


# -- the documented settings, set exactly as documented ----------------------------------------


def documented_env() -> dict[str, str]:
    """`BASTION_X=value` examples from the limits table in docs/runtime.md."""
    section = DOCS.read_text().split("## Limits at the HTTP edge", 1)[1].split("\n## ", 1)[0]
    pairs = dict(re.findall(r"\| `(BASTION_[A-Z_]+)=([^`]+)` \|", section))
    assert set(pairs) == {"BASTION_MAX_BODY_BYTES", "BASTION_MAX_JSON_DEPTH", "BASTION_PROXY_MAX_BODY_BYTES"}
    return pairs


def documented_toml() -> str:
    section = DOCS.read_text().split("## Limits at the HTTP edge", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def check_documented_limits(served: Served) -> None:
    """The examples say 2 MiB body, depth 16, 8 MiB proxy body."""
    near = json.dumps({"metadata": {"note": "x" * int(1.5 * MIB)}}).encode()  # over the default 1 MiB
    assert request(served, "POST", "/v1/threads", near)[0] == 201
    over = json.dumps({"agent": "echo", "input": "x" * (2 * MIB)}).encode()
    assert request(served, "POST", "/v1/runs", over)[0] == 413
    assert request(served, "POST", "/v1/threads", json.dumps({"metadata": nested(15)}).encode())[0] == 201
    status, out = request(served, "POST", "/v1/threads", json.dumps({"metadata": nested(16)}).encode())
    assert status == 400 and "deeper than 16" in out["error"]["message"]
    head = "POST /openai/v1/chat/completions HTTP/1.1\nHost: x\n"
    assert headers_only(served, head + f"Content-Length: {8 * MIB + 1}\n")[0] == 413
    assert_still_serving(served)


def test_documented_env_settings_start_serve_and_take_effect(bastion_server: ServerFactory) -> None:
    # Together with the documented settings of other layers, each exactly as their docs show it.
    others = {
        "BASTION_CAPTURE_CONTENT": "span_attributes",  # docs/observability.md
        "BASTION_TRACE_FORMAT": "openinference",  # docs/observability.md
        "BASTION_OTLP_ENDPOINT": "",  # docs/observability.md: "" disables export
        "BASTION_TIERS": '{"cheap": "openai:gpt-4o-mini", "strong": "anthropic:claude-sonnet-4-5"}',  # gateway-proxy.md
        "BASTION_CACHE_ENABLED": "false",  # docs/gateway-core.md
    }
    served = bastion_server(EDGE_APP, env={**documented_env(), **others})
    check_documented_limits(served)
    # The tracing settings took effect: the run's root span has its content and its OpenInference kind.
    body = json.dumps({"agent": "echo", "input": "hello there", "wait": True}).encode()
    status, run = request(served, "POST", "/v1/runs", body)
    assert status == 201 and run["status"] == "completed", run
    status, trace = request(served, "GET", f"/v1/runs/{run['id']}/trace")
    assert status == 200, trace
    root = next(s for s in trace["spans"] if s["name"] == "invoke_agent echo")
    assert root["attributes"]["openinference.span.kind"] == "AGENT"
    assert root["attributes"]["input.value"] == "hello there"


def test_documented_toml_settings_start_serve_and_take_effect(bastion_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "bastion.toml").write_text(documented_toml())  # `bastion serve` starts in tmp_path
    check_documented_limits(bastion_server(EDGE_APP))
