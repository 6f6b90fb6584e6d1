"""Starting one MCP server: a bounded handshake, and one clear error naming the server when it
does not come up (a missing command, a process that exits, a handshake that never finishes),
instead of the transport's nested task-group tracebacks.

A stdio server's stderr goes through a pipe: each line is logged on the `bastion.tools.mcp`
logger (naming the server) and the last lines are kept, so a failed start can quote them,
redacted.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from bastion.errors import ConfigError, ToolError

if TYPE_CHECKING:
    from bastion.tools.mcp._client import MCPServerConfig
    from mcp import Client

logger = logging.getLogger("bastion.tools.mcp")
_TAIL_LINES = 20


class StderrTail:
    """A pipe for a server's stderr: lines are logged and the last few kept."""

    def __init__(self, server: str) -> None:
        read_fd, write_fd = os.pipe()
        self.server = server
        self.writer = os.fdopen(write_fd, "w")  # handed to the child; ours is closed once it runs
        self._lines: deque[str] = deque(maxlen=_TAIL_LINES)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), name=f"mcp-stderr-{server}", daemon=True)
        self._thread.start()

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip()
                self._lines.append(line)
                logger.info("MCP server %r: %s", self.server, line)

    def release(self) -> None:
        """Close our copy of the write end: the child keeps its own, and EOF comes when it exits."""
        if not self.writer.closed:
            self.writer.close()

    def tail(self, wait: float = 2.0) -> str:
        """The last lines written, after waiting (bounded) for the stopped process's last bytes."""
        self.release()
        self._thread.join(wait)
        return "\n".join(self._lines)


def _redacted(text: str, config: MCPServerConfig) -> str:
    from bastion.tracing import redact

    for value in (config.env or {}).values():
        if len(value) >= 4:  # the server's own credentials, whatever their shape
            text = text.replace(value, "[REDACTED]")
    return redact(text)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        group: BaseExceptionGroup[BaseException] = error  # pyright: ignore[reportUnknownVariableType]
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [error]


def startup_error(config: MCPServerConfig, error: BaseException, stderr: str) -> Exception:
    """One error for a server that did not start: what happened, the stderr tail, what to do."""
    where = _redacted(f"MCP server {config.name!r} ({config.origin})", config)  # args may hold tokens
    tail = f"\nLast lines of its stderr:\n{_redacted(stderr, config)}" if stderr.strip() else ""
    leaves = _leaves(error)
    missing = next((e for e in leaves if isinstance(e, FileNotFoundError | PermissionError)), None)
    if missing is not None and config.command is not None:
        reason = "was not found" if isinstance(missing, FileNotFoundError) else "is not executable"
        return ConfigError(
            f"{where} could not start: {config.command[0]!r} {reason}. Fix command= (an absolute "
            f"path to the server's interpreter or executable is safest).{tail}"
        )
    if isinstance(error, TimeoutError):
        return ToolError(
            f"{where} did not finish the MCP handshake within {config.startup_timeout:g}s; check that it "
            f"speaks MCP on {'stdio' if config.command else 'this URL'}, or raise startup_timeout=.{tail}",
            tool=config.name,
        )
    detail = "; ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in leaves))
    if "Connection closed" in detail:
        hint = "it exited or closed its output before the handshake; run the command by hand to see why"
    elif "timed out" in detail:
        hint = f"it did not answer within timeout={config.timeout:g}s; check that it speaks MCP, or raise timeout="
    else:
        hint = "check the command or URL, and the server's own logs"
    return ToolError(_redacted(f"{where} failed to start ({detail}): {hint}.", config) + tail, tool=config.name)


async def connect(config: MCPServerConfig, target: Any, stack: AsyncExitStack) -> Client:
    """Enter an MCP client for `target` (stdio parameters or a URL) on `stack`, within the
    server's `startup_timeout`; raise `startup_error(...)` if it does not come up."""
    import anyio
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from mcp import Client

    tail: StderrTail | None = None
    transport: Any = target
    if isinstance(target, StdioServerParameters):
        tail = StderrTail(config.name)
        transport = stdio_client(target, errlog=tail.writer)
    client = Client(transport, read_timeout_seconds=config.timeout)
    # An anyio scope, not asyncio.timeout: the transport's shutdown is shielded against anyio
    # cancellation only, and a native cancel landing in it would leave the server running. The
    # scope stays open (deadline lifted) as long as the client, so the two nest properly.
    server = AsyncExitStack()
    scope = server.enter_context(anyio.CancelScope(deadline=anyio.current_time() + config.startup_timeout))
    try:
        entered = await server.enter_async_context(client)
    except BaseException as e:
        # Unwinding through the scope absorbs its own cancellation (the timeout) and nothing else.
        if not await server.__aexit__(type(e), e, e.__traceback__):
            if not isinstance(e, Exception):
                raise  # the caller's cancellation, or an interpreter exit
        failure: BaseException = TimeoutError() if scope.cancelled_caught else e
        raise startup_error(config, failure, tail.tail() if tail else "") from None
    finally:
        if tail is not None:
            tail.release()
    scope.deadline = math.inf
    await stack.enter_async_context(server)
    return entered


__all__ = ["StderrTail", "connect", "startup_error"]
