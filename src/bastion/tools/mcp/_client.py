"""MCP servers as Bastion tools, behind integrity pins.

Each server's tools become `Tool`s named `server.tool`, executed through the same tool gateway
as local tools. A tool is exposed only if its definition matches the lockfile (or is pinned on
first use when `trust_on_first_use=True`) and its description passes the poisoning lint;
everything else is listed in `MCPToolset.blocked` with the reason and how to approve it.
"""

from __future__ import annotations

import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.errors import ConfigError, MissingExtraError, ToolArgumentsError, ToolError
from bastion.tools._tool import Tool
from bastion.tools.mcp._lint import lint_description
from bastion.tools.mcp._lock import MCPLock, definition_hash
from bastion.tools.mcp._paths import server_paths
from bastion.tools.mcp._startup import connect
from bastion.types import SideEffect

if TYPE_CHECKING:
    from bastion.tools.sandbox import EgressPolicy
    from mcp import Client


@dataclass(slots=True)
class MCPServerConfig:
    """One MCP server: either `command` (stdio) or `url` (streamable HTTP)."""

    name: str
    command: list[str] | None = None
    url: str | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    sandbox: bool = False  # stdio only: run the server in bubblewrap with no network
    sandbox_paths: list[str] = field(default_factory=list)  # extra read-only paths it needs
    egress: EgressPolicy | None = None  # sandbox only: hosts it may reach through Bastion's proxy
    timeout: float = 30.0
    startup_timeout: float = 15.0  # bound on starting the server and finishing the MCP handshake

    def __post_init__(self) -> None:
        if not self.name or "." in self.name:
            raise ConfigError(f"MCP server name {self.name!r} must be non-empty and contain no '.'")
        if (self.command is None) == (self.url is None):
            raise ConfigError(f"MCP server {self.name!r}: give exactly one of command= (stdio) or url= (HTTP)")
        if self.sandbox and self.command is None:
            raise ConfigError(f"MCP server {self.name!r}: sandbox=True applies to stdio servers only")
        if self.egress is not None and not self.sandbox:
            raise ConfigError(
                f"MCP server {self.name!r}: an egress allowlist needs sandbox=True (unsandboxed, nothing enforces it)"
            )

    @property
    def origin(self) -> str:
        return f"stdio:{' '.join(self.command)}" if self.command else f"http:{self.url}"


@dataclass(slots=True)
class BlockedTool:
    name: str
    reason: str
    digest: str


class MCPTool(Tool):
    """A tool served by an MCP server; arguments are checked against its JSON schema."""

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        validator = jsonschema.Draft202012Validator(self.parameters)
        problems = [
            {"path": ".".join(str(p) for p in e.absolute_path), "error": e.message}
            for e in validator.iter_errors(arguments)
        ]
        if problems:
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: "
                + "; ".join(f"{p['path'] or '<root>'}: {p['error']}" for p in problems),
                tool=self.name,
                details=problems,
            )
        return arguments


def _side_effect(annotations: dict[str, Any]) -> SideEffect:
    if annotations.get("readOnlyHint"):
        return "read"
    if annotations.get("destructiveHint"):
        return "irreversible"
    return "write"


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


async def _sandboxed_command(config: MCPServerConfig, stack: AsyncExitStack) -> list[str]:
    """Wrap a stdio server in bubblewrap: no network (or only its egress allowlist, through a
    proxy that lives as long as `stack`), read-only system and interpreter paths."""
    from bastion.tools.sandbox import EgressProxy, SandboxLimits
    from bastion.tools.sandbox._bwrap import (
        Sandbox,
        _tool_paths,  # pyright: ignore[reportPrivateUsage]
        egress_args,
        writable_mounts,
    )

    Sandbox.check()
    bwrap, _ = _tool_paths()
    assert config.command is not None
    # Our interpreter (the egress forwarder runs on it), and whatever the server's command needs:
    # its interpreter's venv, base installation and sys.path, its script's directory.
    paths = {sys.prefix, sys.base_prefix, *await server_paths(config.command, config.env), *config.sandbox_paths}
    binds: list[str] = []
    for p in sorted(paths):
        if not p.startswith("/usr"):
            binds += ["--ro-bind", p, p]
    options: list[str] = []
    prefix: list[str] = []
    if config.egress is not None:
        proxy = await stack.enter_async_context(EgressProxy(config.egress, tool=config.name))
        options, prefix = egress_args(proxy.socket_path, sys.executable)
        options.append("--as-pid-1")  # the forwarder is init, so no bwrap process is visible
    return [
        bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--proc", "/proc", *writable_mounts(SandboxLimits()),
        *binds, *options, "--chdir", "/tmp", "--",
        *prefix, *config.command,
    ]  # fmt: skip


class MCPToolset:
    """Connect to MCP servers and expose their pinned, lint-clean tools.

    ```python
    async with MCPToolset([MCPServerConfig("files", command=["python", "srv.py"])], lock="mcp.lock") as ts:
        agent = Agent(model=..., tools=ts.tools)
    ```
    """

    def __init__(
        self,
        servers: list[MCPServerConfig],
        *,
        lock: MCPLock | str | Path | None = None,
        trust_on_first_use: bool = False,
        block_poisoned: bool = True,
    ) -> None:
        names = [s.name for s in servers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"MCP server names must be unique; duplicated: {dupes}")
        self.servers = servers
        self.lock = lock if isinstance(lock, MCPLock) else MCPLock(lock)
        self.trust_on_first_use = trust_on_first_use
        self.block_poisoned = block_poisoned
        self.tools: list[Tool] = []
        self.blocked: list[BlockedTool] = []
        self.lint_findings: dict[str, list[str]] = {}
        self._clients: dict[str, Client] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> MCPToolset:
        try:
            from mcp.client.stdio import StdioServerParameters
        except ImportError as e:  # pragma: no cover - mcp is a core dependency
            raise MissingExtraError("all", "mcp", "MCP servers") from e
        try:
            for config in self.servers:
                if config.command is not None:
                    command = await _sandboxed_command(config, self._stack) if config.sandbox else config.command
                    target: Any = StdioServerParameters(
                        command=command[0], args=command[1:], env=config.env, cwd=config.cwd
                    )
                else:
                    target = config.url
                self._clients[config.name] = await connect(config, target, self._stack)
                await self._load_tools(config, self._clients[config.name])
        except BaseException:
            await self._stack.aclose()
            raise
        self.lock.save()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _load_tools(self, config: MCPServerConfig, client: Client) -> None:
        info = client.server_info
        version = (info.version if info else None) or "unknown"
        known = config.name in self.lock.servers
        previous = self.lock.servers.get(config.name)
        changed_server = previous is not None and (previous.origin, previous.version) != (
            config.origin,
            version,
        )
        pin = self.lock.pin_server(config.name, config.origin, version)
        listing = await client.list_tools()
        bare_names = {t.name.split(".", 1)[1] for t in self.tools}
        for mcp_tool in listing.tools:
            definition = mcp_tool.model_dump(by_alias=True, exclude_none=True, mode="json")
            digest = definition_hash(definition)
            full = f"{config.name}.{mcp_tool.name}"
            findings = lint_description(mcp_tool.description or "")
            if findings:
                self.lint_findings[full] = findings
            pinned = pin.tools.get(mcp_tool.name)
            reason = ""
            if findings and self.block_poisoned:
                reason = f"description matches poisoning patterns {findings}"
            elif mcp_tool.name in bare_names:
                reason = "name collides with a tool of another MCP server (shadowing); rename or drop one server"
            elif changed_server and pinned is not None:
                was = f"{previous.origin} v{previous.version}" if previous else "?"
                reason = f"server changed from {was} to {config.origin} v{version}; review and re-approve its tools"
            elif pinned is None and not (self.trust_on_first_use and not known):
                reason = "not in the MCP lockfile; review the definition and approve it"
            elif pinned is not None and pinned != digest:
                reason = "definition changed since it was approved (possible rug pull); review and re-approve"
            if reason:
                self.blocked.append(BlockedTool(full, reason, digest))
                if changed_server and pinned is not None:
                    pin.tools[mcp_tool.name] = pinned  # keep the old pin until a human approves
                continue
            pin.tools[mcp_tool.name] = digest
            self.tools.append(self._make_tool(config, client, definition))

    def _make_tool(self, config: MCPServerConfig, client: Client, definition: dict[str, Any]) -> Tool:
        remote_name = definition["name"]
        annotations = definition.get("annotations") or {}

        async def call(**arguments: Any) -> Any:
            result = await client.call_tool(remote_name, arguments, read_timeout_seconds=config.timeout)
            texts = [getattr(c, "text", "") for c in result.content]
            if result.is_error:
                raise ToolError("; ".join(texts) or "MCP tool failed", tool=f"{config.name}.{remote_name}")
            if result.structured_content is not None:
                return result.structured_content
            return "\n".join(texts)

        return MCPTool(
            name=f"{config.name}.{remote_name}",
            description=definition.get("description") or remote_name,
            parameters=_strip_titles(definition.get("inputSchema") or {"type": "object"}),
            fn=call,
            side_effect=_side_effect(annotations),
            idempotent=bool(annotations.get("idempotentHint") or annotations.get("readOnlyHint")),
            timeout=config.timeout,
            trust="untrusted",
            is_async=True,
        )

    def approve(self, full_name: str) -> None:
        """Approve a blocked tool's current definition (after review); takes effect on reconnect."""
        for b in self.blocked:
            if b.name == full_name:
                server, tool_name = full_name.split(".", 1)
                self.lock.approve(server, tool_name, b.digest)
                return
        raise ConfigError(f"{full_name!r} is not blocked; blocked tools: {[b.name for b in self.blocked]}")
