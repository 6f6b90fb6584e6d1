"""An MCP stdio server whose one tool fetches a URL (through HTTP_PROXY when one is set) and
another that tries a direct TCP connection; used to test the sandbox's egress allowlist."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from mcp.server.mcpserver import MCPServer

server = MCPServer("fetcher", version="1.0.0")


@server.tool(description="Fetch a URL and return its status and body.")
def fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode()}"
    except OSError as e:
        return f"error {type(e).__name__}"


@server.tool(description="Open a TCP connection directly, without the proxy.")
def direct(host: str, port: int) -> str:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as e:
        return f"blocked {type(e).__name__}"


if __name__ == "__main__":
    server.run("stdio")
