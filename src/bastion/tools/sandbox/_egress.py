"""Egress allowlist: a host-side HTTP proxy that sandboxes reach over a bind-mounted unix socket.

A sandbox keeps its own network namespace (nothing routes out of it). When a tool or MCP
server is given an `EgressPolicy`, one `EgressProxy` listens on a fresh unix socket on the host;
the socket is bind-mounted into the sandbox, where the sandbox's init (`_forwarder.py`) offers
it as `http://127.0.0.1:3128` and sets `HTTP_PROXY`/`HTTPS_PROXY`. The proxy speaks HTTP
CONNECT (for TLS) and plain absolute-form HTTP, checks the target against the allowlist,
resolves DNS here on the host, connects, and reports every attempt, allowed or not, to the
`audit` callable. It is not a TLS interceptor: after CONNECT the bytes are opaque.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.policy import AuditLog

PROXY_PORT = 3128  # inside the sandbox's own network namespace, so it never clashes
SOCKET_IN_SANDBOX = "/run/bastion-egress.sock"
_HEAD_LIMIT = 64 * 1024
_HEAD_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te"}

Decision = Literal["allowed", "blocked", "failed"]


@dataclass(frozen=True, slots=True)
class EgressEvent:
    """One connection attempt through the proxy (what the audit callable receives)."""

    tool: str
    method: str  # CONNECT, GET, POST, ... or "?" when the request could not be parsed
    host: str
    port: int
    decision: Decision
    reason: str
    addresses: tuple[str, ...] = ()  # what the host's DNS resolved (allowed attempts only)
    ts: float = field(default_factory=time.time)


AuditSink = Callable[[EgressEvent], object]


@dataclass(frozen=True, slots=True)
class _Rule:
    host: str  # lower case; "*.example.com" matches subdomains only
    port: int | None  # None: 80 and 443

    def matches(self, host: str, port: int) -> bool:
        if self.port is None and port not in (80, 443):
            return False
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host


def _parse_rule(entry: str) -> _Rule:
    text = entry.strip().lower().rstrip(".")
    if not text or "/" in text or "@" in text:
        raise ConfigError(
            f"egress allowlist entry {entry!r} must be a host or host:port, e.g. 'api.example.com', "
            "'api.example.com:8443', '*.example.com' or '127.0.0.1:9000'"
        )
    host, port = text, None
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    elif text.count(":") == 1:
        host, _, raw = text.partition(":")
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ConfigError(f"egress allowlist entry {entry!r}: the port must be a number between 1 and 65535")
        port = int(raw)
    if host == "*" or (host.startswith("*") and not host.startswith("*.")) or "*" in host[1:]:
        raise ConfigError(f"egress allowlist entry {entry!r}: only a leading '*.' wildcard is allowed")
    return _Rule(host, port)


@dataclass(slots=True)
class EgressPolicy:
    """Which hosts a sandboxed tool or MCP server may reach, and where attempts are reported.

    `allow` entries: `"api.example.com"` (ports 80 and 443), `"api.example.com:8443"`,
    `"*.example.com"` (subdomains), `"127.0.0.1:9000"` (an address only when listed as one).
    """

    allow: list[str]
    audit: AuditSink | None = None
    _rules: list[_Rule] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.allow, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ConfigError("EgressPolicy(allow=...) takes a list of hosts, e.g. ['api.example.com']")
        self._rules = [_parse_rule(e) for e in self.allow]

    def permits(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        return any(rule.matches(host, port) for rule in self._rules)


def audit_log_sink(log: AuditLog) -> AuditSink:
    """Record egress attempts in Bastion's hash-chained audit log (`allow` / `deny` entries)."""
    from bastion.policy import AuditEntry

    def record(event: EgressEvent) -> None:
        log.append(
            AuditEntry(
                event="allow" if event.decision == "allowed" else "deny",
                tool=event.tool,
                reasons=[f"egress: {event.reason}"],
                detail={
                    "kind": "egress",
                    "method": event.method,
                    "host": event.host,
                    "port": event.port,
                    "decision": event.decision,
                    "addresses": list(event.addresses),
                },
                ts=event.ts,
            )
        )

    return record


def _split_host_port(authority: str, default: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default
    host, sep, port = authority.rpartition(":")
    if not sep:
        return authority, default
    return host, int(port)


class EgressProxy:
    """One proxy on a fresh unix socket; `async with` it around the sandbox that uses it."""

    def __init__(self, policy: EgressPolicy, *, tool: str = "sandbox") -> None:
        self.policy = policy
        self.tool = tool
        self.events: list[EgressEvent] = []
        self._dir: str | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def socket_path(self) -> str:
        if self._dir is None:
            raise ConfigError("EgressProxy is not started; use `async with EgressProxy(...) as proxy:`")
        return os.path.join(self._dir, "egress.sock")

    async def __aenter__(self) -> EgressProxy:
        # The sandbox runs as an unprivileged per-call uid: it must traverse the directory (not
        # list it: the name is random) and connect to the socket.
        self._dir = tempfile.mkdtemp(prefix="bastion-egress-")
        os.chmod(self._dir, 0o711)
        self._server = await asyncio.start_unix_server(self._handle, path=self.socket_path, limit=_HEAD_LIMIT)
        os.chmod(self.socket_path, 0o666)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _record(self, event: EgressEvent) -> None:
        self.events.append(event)
        if self.policy.audit is not None:
            self.policy.audit(event)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # pyright: ignore[reportArgumentType]
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # pyright: ignore[reportArgumentType]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            self._record(EgressEvent(self.tool, "?", "", 0, "blocked", "malformed request line"))
            return await _reply(writer, 400, "malformed request line")
        method, target, version = parts
        try:
            if method == "CONNECT":
                host, port = _split_host_port(target, 443)
                path = ""
            else:
                url = urlsplit(target)
                if url.scheme != "http" or not url.hostname:
                    self._record(EgressEvent(self.tool, method, "", 0, "blocked", "not an absolute http:// URL"))
                    return await _reply(writer, 400, "send absolute http:// URLs or CONNECT host:port")
                host, port = url.hostname, url.port or 80
                path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        except ValueError:
            self._record(EgressEvent(self.tool, method, target[:200], 0, "blocked", "unparsable target"))
            return await _reply(writer, 400, "unparsable target")
        if not self.policy.permits(host, port):
            self._record(EgressEvent(self.tool, method, host, port, "blocked", "host not in the egress allowlist"))
            return await _reply(writer, 403, f"{host}:{port} is not in this tool's egress allowlist")
        upstream = await self._connect(method, host, port)
        if upstream is None:
            return await _reply(writer, 502, f"could not connect to {host}:{port}")
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                # One request per connection: the next one on a kept-alive connection could name
                # another host, and would reach this upstream unchecked.
                kept = [h for h in lines[1:] if h and h.split(":", 1)[0].strip().lower() not in _HOP_HEADERS]
                up_writer.write(
                    "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")
                )
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()

    async def _connect(
        self, method: str, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), _CONNECT_TIMEOUT_S)
        except (TimeoutError, OSError) as e:
            self._record(EgressEvent(self.tool, method, host, port, "failed", f"DNS lookup failed: {e}"))
            return None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        last: BaseException | None = None
        for address in addresses:
            try:
                conn = await asyncio.wait_for(asyncio.open_connection(address, port), _CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError) as e:
                last = e
                continue
            self._record(EgressEvent(self.tool, method, host, port, "allowed", "in the egress allowlist", addresses))
            return conn
        self._record(EgressEvent(self.tool, method, host, port, "failed", f"connect failed: {last}", addresses))
        return None


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, RuntimeError):
        pass


async def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}
    body = f"bastion egress proxy: {text}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()


def sandbox_env() -> dict[str, str]:
    """The proxy variables set inside a sandbox that has egress (most HTTP clients honour them)."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    env = {"BASTION_EGRESS_SOCKET": SOCKET_IN_SANDBOX, "NO_PROXY": "", "no_proxy": ""}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = url
    return env
