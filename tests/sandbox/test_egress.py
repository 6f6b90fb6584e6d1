"""The egress allowlist: real servers on 127.0.0.1, a real sandbox, a real host-side proxy."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.policy import AuditLog
from bastion.tools.mcp import MCPServerConfig, MCPToolset
from bastion.tools.sandbox import EgressEvent, EgressPolicy, Sandbox, SandboxLimits, audit_log_sink, sandbox_tools

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
FETCH_SERVER = str(Path(__file__).with_name("mcp_fetch_server.py"))


@dataclass
class HostServer:
    """A plain HTTP/1.1 server on the host's loopback that records what reached it."""

    name: str
    port: int = 0
    requests: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head.decode().split("\r\n")[0])
        body = f"hello from {self.name}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()


@dataclass
class Servers:
    allowed: HostServer
    blocked: HostServer
    echo_port: int


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    allowed, blocked = HostServer("allowed"), HostServer("blocked")

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    a = await asyncio.start_server(allowed.handle, "127.0.0.1", 0)
    b = await asyncio.start_server(blocked.handle, "127.0.0.1", 0)
    e = await asyncio.start_server(echo, "127.0.0.1", 0)
    allowed.port = a.sockets[0].getsockname()[1]
    blocked.port = b.sockets[0].getsockname()[1]
    async with a, b, e:
        yield Servers(allowed, blocked, e.sockets[0].getsockname()[1])


def fetch_program(*urls: str) -> str:
    return f"""
import json, urllib.request, urllib.error
out = {{}}
for url in {list(urls)!r}:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            out[url] = [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        out[url] = [e.code, e.read().decode()]
    except OSError as e:
        out[url] = ["error", type(e).__name__]
print(json.dumps(out))
"""


# -- the policy ----------------------------------------------------------------------------------


def test_allowlist_rules() -> None:
    policy = EgressPolicy(["api.example.com", "*.svc.example.org", "127.0.0.1:9000", "Files.Example.com:8443"])
    assert policy.permits("api.example.com", 443) and policy.permits("API.example.com.", 80)
    assert not policy.permits("api.example.com", 8080)  # no port named: 80 and 443 only
    assert not policy.permits("evil.api.example.com", 443) and not policy.permits("example.com", 443)
    assert policy.permits("a.svc.example.org", 443) and not policy.permits("svc.example.org", 443)
    assert not policy.permits("svc.example.org.evil.com", 443)
    assert policy.permits("127.0.0.1", 9000) and not policy.permits("127.0.0.1", 9001)
    assert not policy.permits("localhost", 9000)  # a name is not its address, nor the reverse
    assert policy.permits("files.example.com", 8443)
    for bad in ["*", "http://x.com", "x.com:0", "x.com:http", "a*.x.com", "user@x.com", ""]:
        with pytest.raises(ConfigError):
            EgressPolicy([bad])
    with pytest.raises(ConfigError, match="list of hosts"):
        EgressPolicy("api.example.com")  # type: ignore[arg-type]


# -- the sandbox -----------------------------------------------------------------------------------


@pytest.mark.sandbox
@needs_bwrap
async def test_allowed_host_blocked_host_and_direct_socket(servers: Servers) -> None:
    events: list[EgressEvent] = []
    # Allowed by NAME: the sandbox has no DNS, so "localhost" can only be resolved by the host.
    policy = EgressPolicy([f"localhost:{servers.allowed.port}"], audit=events.append)
    box = Sandbox(SandboxLimits(wall_timeout=15), egress=policy)
    allowed_url = f"http://localhost:{servers.allowed.port}/data?x=1"
    blocked_url = f"http://127.0.0.1:{servers.blocked.port}/secret"
    program = (
        fetch_program(allowed_url, blocked_url)
        + f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {servers.allowed.port}), timeout=2); print("DIRECT CONNECTED")
except OSError as e:
    print("direct blocked", type(e).__name__)
"""
    )
    r = await box.run_python(program)
    assert r.exit_code == 0, r.stderr
    first, direct = r.stdout.splitlines()
    out = json.loads(first)
    assert out[allowed_url] == [200, "hello from allowed"]
    assert out[blocked_url][0] == 403 and "not in this tool's egress allowlist" in out[blocked_url][1]
    assert direct.startswith("direct blocked")
    # The allowed server got an origin-form request; the blocked one was never contacted.
    assert servers.allowed.requests == ["GET /data?x=1 HTTP/1.1"]
    assert servers.blocked.requests == []
    assert [(e.tool, e.method, e.host, e.port, e.decision) for e in events] == [
        ("run_python", "GET", "localhost", servers.allowed.port, "allowed"),
        ("run_python", "GET", "127.0.0.1", servers.blocked.port, "blocked"),
    ]
    assert "127.0.0.1" in events[0].addresses  # resolved on the host


@pytest.mark.sandbox
@needs_bwrap
async def test_connect_tunnel_to_allowed_host_only(servers: Servers) -> None:
    events: list[EgressEvent] = []
    box = Sandbox(egress=EgressPolicy([f"127.0.0.1:{servers.echo_port}"], audit=events.append))
    program = f"""
import socket
def tunnel(port, payload):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
    s.sendall(f"CONNECT 127.0.0.1:{{port}} HTTP/1.1\\r\\nHost: 127.0.0.1:{{port}}\\r\\n\\r\\n".encode())
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += s.recv(1)
    status = head.split()[1].decode()
    if status != "200":
        return status, ""
    s.sendall(payload); s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(1024):
        data += chunk
    return status, data.decode()
print(tunnel({servers.echo_port}, b"through the tunnel"))
print(tunnel({servers.blocked.port}, b"nope"))
"""
    r = await box.run_python(program)
    assert r.stdout.splitlines() == ["('200', 'THROUGH THE TUNNEL')", "('403', '')"], r.stderr
    assert [(e.method, e.port, e.decision) for e in events] == [
        ("CONNECT", servers.echo_port, "allowed"),
        ("CONNECT", servers.blocked.port, "blocked"),
    ]
    assert servers.blocked.requests == []


@pytest.mark.sandbox
@needs_bwrap
async def test_no_policy_means_no_proxy_and_no_network(servers: Servers) -> None:
    r = await Sandbox().run_python(fetch_program(f"http://127.0.0.1:{servers.allowed.port}/"))
    (result,) = json.loads(r.stdout).values()
    assert result == ["error", "URLError"] and servers.allowed.requests == []


@pytest.mark.sandbox
@needs_bwrap
async def test_attempts_are_recorded_in_the_audit_log(servers: Servers, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    (run_python, _) = sandbox_tools(
        egress=EgressPolicy([f"127.0.0.1:{servers.allowed.port}"], audit=audit_log_sink(log))
    )
    urls = [f"http://127.0.0.1:{servers.allowed.port}/", f"http://127.0.0.1:{servers.blocked.port}/"]
    out = await run_python.invoke({"code": fetch_program(*urls)})
    assert [v[0] for v in json.loads(out["stdout"]).values()] == [200, 403]
    entries = log.entries()
    assert [(e.event, e.tool, e.detail["host"], e.detail["port"]) for e in entries] == [
        ("allow", "run_python", "127.0.0.1", servers.allowed.port),
        ("deny", "run_python", "127.0.0.1", servers.blocked.port),
    ]
    assert all(e.detail["kind"] == "egress" for e in entries)
    assert log.verify().ok
    log.close()


@pytest.mark.sandbox
@needs_bwrap
async def test_keep_alive_cannot_smuggle_a_second_host(servers: Servers) -> None:
    # A second absolute-form request on the same proxy connection must not reach any host
    # unchecked: the proxy forwards one request per connection (Connection: close).
    box = Sandbox(egress=EgressPolicy([f"127.0.0.1:{servers.allowed.port}"]))
    a, b = servers.allowed.port, servers.blocked.port
    program = f"""
import socket
s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
s.sendall(b"GET http://127.0.0.1:{a}/one HTTP/1.1\\r\\nHost: 127.0.0.1:{a}\\r\\nConnection: keep-alive\\r\\n\\r\\n"
          b"GET http://127.0.0.1:{b}/two HTTP/1.1\\r\\nHost: 127.0.0.1:{b}\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.count(b"HTTP/1.1 200"), data.count(b"hello from"))
"""
    r = await box.run_python(program)
    assert r.stdout.split() == ["1", "1"], (r.stdout, r.stderr)
    assert servers.allowed.requests == ["GET /one HTTP/1.1"] and servers.blocked.requests == []


@pytest.mark.sandbox
@needs_bwrap
async def test_mcp_stdio_server_reaches_only_its_allowlist(servers: Servers, tmp_path: Path) -> None:
    events: list[EgressEvent] = []
    config = MCPServerConfig(
        "fetcher",
        command=[sys.executable, FETCH_SERVER],
        sandbox=True,
        egress=EgressPolicy([f"localhost:{servers.allowed.port}"], audit=events.append),
    )
    async with MCPToolset([config], lock=tmp_path / "mcp.lock", trust_on_first_use=True) as ts:
        fetch = next(t for t in ts.tools if t.name == "fetcher.fetch")
        direct = next(t for t in ts.tools if t.name == "fetcher.direct")
        ok = await fetch.invoke({"url": f"http://localhost:{servers.allowed.port}/x"})
        denied = await fetch.invoke({"url": f"http://127.0.0.1:{servers.blocked.port}/x"})
        raw = await direct.invoke({"host": "127.0.0.1", "port": servers.allowed.port})
    assert ok == {"result": "200 hello from allowed"}
    assert denied["result"].startswith("403 ")
    assert raw["result"].startswith("blocked")
    assert [(e.tool, e.host, e.decision) for e in events] == [
        ("fetcher", "localhost", "allowed"),
        ("fetcher", "127.0.0.1", "blocked"),
    ]
    assert servers.blocked.requests == []


def test_egress_needs_a_sandboxed_mcp_server() -> None:
    with pytest.raises(ConfigError, match="needs sandbox=True"):
        MCPServerConfig("x", command=["python", "s.py"], egress=EgressPolicy(["example.com"]))


@pytest.mark.sandbox
@needs_bwrap
async def test_concurrent_sandboxes_each_get_their_own_proxy(servers: Servers) -> None:
    # Each call has its own proxy socket and seccomp pipe; a descriptor closed twice under
    # concurrency once broke a neighbour's call.
    events: list[EgressEvent] = []
    box = Sandbox(egress=EgressPolicy([f"127.0.0.1:{servers.allowed.port}"], audit=events.append))
    url = f"http://127.0.0.1:{servers.allowed.port}/n"
    code = f"import urllib.request\nfor _ in range(3): print(urllib.request.urlopen({url!r}).read().decode())"
    results = await asyncio.gather(*[box.run_python(code) for _ in range(8)])
    assert [r.stdout.split() for r in results] == [["hello", "from", "allowed"] * 3] * 8
    assert len(events) == 24 and {e.decision for e in events} == {"allowed"}
