"""MCP client: servers' tools behind integrity pins, lint and the same tool gateway."""

from bastion.tools.mcp._client import BlockedTool, MCPServerConfig, MCPTool, MCPToolset
from bastion.tools.mcp._lint import lint_description
from bastion.tools.mcp._lock import MCPLock, definition_hash

__all__ = [
    "BlockedTool",
    "MCPLock",
    "MCPServerConfig",
    "MCPTool",
    "MCPToolset",
    "definition_hash",
    "lint_description",
]
