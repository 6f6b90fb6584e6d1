"""The MCP lockfile: what was approved, so a changed server or tool definition is noticed.

```json
{"v": 1, "servers": {"files": {"origin": "stdio:python server.py", "version": "1.2.0",
  "tools": {"read_file": "<sha256 of the canonical definition>"}}}}
```
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.tools._tool import canonical_json

LOCK_VERSION = 1


def definition_hash(tool: dict[str, Any]) -> str:
    """sha256 of the parts of a tool definition that a model or the gateway relies on."""
    keep = {k: tool.get(k) for k in ("name", "description", "inputSchema", "outputSchema", "annotations")}
    return hashlib.sha256(canonical_json(keep).encode()).hexdigest()


@dataclass(slots=True)
class ServerPin:
    origin: str
    version: str
    tools: dict[str, str] = field(default_factory=dict)


class MCPLock:
    """Pins per server: where it comes from, its version, and each tool's definition hash."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.servers: dict[str, ServerPin] = {}
        if self.path and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("v") != LOCK_VERSION:
                raise ValueError(f"unsupported lock version {data.get('v')!r}")
            for name, pin in data["servers"].items():
                self.servers[name] = ServerPin(pin["origin"], pin["version"], dict(pin["tools"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"MCP lockfile {path} is invalid ({e}); fix it or delete it and re-approve the servers"
            ) from e

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "v": LOCK_VERSION,
            "servers": {
                name: {"origin": p.origin, "version": p.version, "tools": dict(sorted(p.tools.items()))}
                for name, p in sorted(self.servers.items())
            },
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def pin_server(self, server: str, origin: str, version: str) -> ServerPin:
        pin = self.servers.get(server)
        if pin is None or pin.origin != origin or pin.version != version:
            pin = ServerPin(origin, version, dict(pin.tools) if pin else {})
            self.servers[server] = pin
        return pin

    def approve(self, server: str, tool: str, digest: str) -> None:
        """Record `digest` as the approved definition of `server.tool` (after a human review)."""
        pin = self.servers.get(server)
        if pin is None:
            raise ConfigError(f"MCP server {server!r} is not pinned; connect it once before approving tools")
        pin.tools[tool] = digest
        self.save()
