"""Sandbox escapes, attempted by code a real Agent runs through its `run_python` tool on a real
`bastion serve` whose environment holds secrets: read them from any `/proc/*/environ`, ptrace a
process outside the program, use a descriptor inherited from the server, fill `/dev` or
`/dev/shm`, and reach the host's loopback around the egress proxy."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

HERE = Path(__file__).parent
APP = f"{HERE / 'sandbox_app.py'}:build"
Served = Any  # conftest.Served

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)"),
]

SECRETS = {"OPENAI_API_KEY": "sk-canary-3f9a1c0e7d", "BASTION_SECRET_CANARY": "bastion-secret-canary-51b2"}
DB_PASSWORD = "canary-pw-8e41"
CANARY_VALUES = [*SECRETS.values(), DB_PASSWORD, "canary"]


def with_password(pg_url: str) -> str:
    """The test server trusts local connections, so a password in the URL is accepted (and must
    never be readable from a sandbox)."""
    scheme, rest = pg_url.split("://", 1)
    user = rest.split(":", 1)[0].split("@", 1)[0]
    return f"{scheme}://{user}:{DB_PASSWORD}@{rest.split('@', 1)[1]}"


ESCAPE = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
report = {"env": dict(os.environ), "procs": {}, "ptrace": {}, "fds": [], "writes": {}}
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    entry = {}
    for name in ("environ", "cmdline"):
        try:
            entry[name] = open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace")
        except OSError as e:
            entry[name] = "denied " + type(e).__name__
    report["procs"][pid] = entry
    if int(pid) != os.getpid():
        rc = libc.ptrace(16, int(pid), None, None)  # PTRACE_ATTACH
        report["ptrace"][pid] = "ATTACHED" if rc == 0 else os.strerror(ctypes.get_errno())
for fd in range(1024):
    try:
        os.fstat(fd); report["fds"].append(fd)
    except OSError:
        pass
for d in ("/dev", "/dev/shm", "/work", "/tmp"):
    total = 0
    try:
        for i in range(400):  # up to 400 MB per place, 1 MB files (RLIMIT_FSIZE is per file)
            with open(f"{d}/f{i}", "wb") as f:
                f.write(b"x" * (1024 * 1024))
            total += 1
        why = "no limit"
    except OSError as e:
        why = os.strerror(e.errno)
    report["writes"][d] = [total, why]
print(json.dumps(report))
"""


def call(served: Served, path: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(
        served.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": "Bearer key-a-op", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=90) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def run_code(served: Served, agent: str, code: str, thread: str) -> str:
    status, out = call(
        served, "/v1/runs", {"agent": agent, "input": code, "thread_id": thread, "wait": True, "timeout": 60}
    )
    assert status == 201 and out["status"] == "completed", out
    return out["output"]


def tool_result(output: str) -> dict[str, Any]:
    """The agent answers with the tool message it saw: the sandbox's JSON result, wrapped in
    whatever spotlighting marks it as untrusted data (the wrapping is not this test's concern)."""
    start = output.index('{"exit_code"')
    result, _ = json.JSONDecoder().raw_decode(output[start:])
    return result


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_code_run_by_an_agent_cannot_read_secrets_ptrace_or_fill_memory(
    bastion_server: Callable[..., Served], request: pytest.FixtureRequest, database: str
) -> None:
    # The server holds a model API key, a Bastion secret and (on PostgreSQL) a database URL
    # with a password, all in its environment.
    env = dict(SECRETS)
    if database == "postgres":
        env["BASTION_DATABASE_URL"] = with_password(request.getfixturevalue("pg_url"))
    served = bastion_server(APP, env=env)
    host_env = Path(f"/proc/{served.proc.pid}/environ").read_bytes()
    assert all(value.encode() in host_env for value in env.values())  # the server does hold them
    output = run_code(served, "coder", ESCAPE, "escape-1")
    for value in CANARY_VALUES:
        assert value not in output, f"{value!r} leaked into the sandbox"
    report = json.loads(tool_result(output)["stdout"])
    assert list(report["procs"]) == ["1"]  # only the program itself: no bwrap, no server
    assert report["ptrace"] == {}
    assert report["fds"] == [0, 1, 2]
    assert report["writes"]["/dev"] == [0, "Read-only file system"]
    for place, cap_mb in {"/dev/shm": 8, "/tmp": 8, "/work": 64}.items():
        written, why = report["writes"][place]
        assert why == "No space left on device" and written <= cap_mb, (place, written, why)


class _Hello(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(f"{self.headers['Host']}{self.path}")
        body = b"hello from the allowed host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def host_servers() -> Iterator[tuple[int, int]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Hello) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    _Hello.hits = []
    yield servers[0].server_address[1], servers[1].server_address[1]
    for s in servers:
        s.shutdown()
        s.server_close()


def test_egress_allowlist_on_a_served_agent_is_enforced_and_audited(
    bastion_server: Callable[..., Served], host_servers: tuple[int, int]
) -> None:
    allowed, blocked = host_servers
    served = bastion_server(APP, env={**SECRETS, "EGRESS_ALLOW": f"localhost:{allowed}"})
    code = f"""
import json, socket, urllib.request, urllib.error
out = {{}}
for url in ["http://localhost:{allowed}/ok", "http://127.0.0.1:{blocked}/secret"]:
    try:
        out[url] = urllib.request.urlopen(url, timeout=5).read().decode()
    except urllib.error.HTTPError as e:
        out[url] = e.code
try:
    socket.create_connection(("127.0.0.1", {blocked}), timeout=2); out["direct"] = "CONNECTED"
except OSError as e:
    out["direct"] = type(e).__name__
print(json.dumps(out))
"""
    out = json.loads(tool_result(run_code(served, "fetcher", code, "egress-1"))["stdout"])
    assert out[f"http://localhost:{allowed}/ok"] == "hello from the allowed host"
    assert out[f"http://127.0.0.1:{blocked}/secret"] == 403
    assert out["direct"] != "CONNECTED"
    assert _Hello.hits == [f"localhost:{allowed}/ok"]  # the blocked server never saw a byte
    served.stop()

    from bastion.policy import AuditLog

    log = AuditLog(served.home / "egress-audit.db")
    rows = [(e.event, e.tool, e.detail["host"], e.detail["port"]) for e in log.entries()]
    assert rows == [("allow", "run_python", "localhost", allowed), ("deny", "run_python", "127.0.0.1", blocked)]
    assert log.verify().ok
    log.close()
