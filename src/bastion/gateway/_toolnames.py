"""Tool names that providers accept, mapped reversibly from the names Bastion uses.

OpenAI and Anthropic reject any tool name outside `^[a-zA-Z0-9_-]{1,64}$` with a 400, yet
Bastion's canonical names may hold other characters (MCP tools are `server.tool`). Policies,
grants, audit and traces keep the canonical name; only the wire sees the provider name, and
the wire formats map the model's answer back.

The mapping: a legal name is itself; otherwise `.` becomes `__` and any other illegal
character `_` (`files.read` -> `files__read`). When that form would be longer than 64
characters or would collide with another name offered in the same request, it is cut and
given a short hash of the canonical name (`<prefix>_<8 hex>`), so it stays deterministic.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bastion.types import ModelRequest

MAX_LENGTH = 64
_LEGAL = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ILLEGAL_CHAR = re.compile(r"[^A-Za-z0-9_-]")


def is_provider_legal(name: str) -> bool:
    """Whether OpenAI and Anthropic accept `name` as a tool name as it is."""
    return _LEGAL.fullmatch(name) is not None


def _readable(name: str) -> str:
    return _ILLEGAL_CHAR.sub("_", name.replace(".", "__")) or "tool"


def _hashed(name: str, salt: int = 0) -> str:
    digest = hashlib.sha256(f"{name}#{salt}".encode() if salt else name.encode()).hexdigest()[:8]
    return f"{_readable(name)[: MAX_LENGTH - 9]}_{digest}"


def provider_tool_name(name: str) -> str:
    """The provider-legal form of one tool name, without regard to other tools (use
    `ToolNames` to map a set of names so two never meet on the same provider name)."""
    if is_provider_legal(name):
        return name
    readable = _readable(name)
    return readable if len(readable) <= MAX_LENGTH else _hashed(name)


class ToolNames:
    """A reversible mapping between canonical tool names and provider names for one set of
    tools. Legal names map to themselves; names outside the set map by `provider_tool_name`
    forwards and to themselves backwards."""

    __slots__ = ("_back", "_forward")

    def __init__(self, names: Iterable[str]) -> None:
        unique = list(dict.fromkeys(names))
        self._forward: dict[str, str] = {}
        self._back: dict[str, str] = {}
        # Legal names are what their authors chose and what a client may already hold: they
        # keep their name, and mapped names step aside when they would collide.
        taken = {n for n in unique if is_provider_legal(n)}
        for name in sorted(n for n in unique if n not in taken):
            mapped = provider_tool_name(name)
            salt = 0
            while mapped in taken:
                mapped = _hashed(name, salt)
                salt += 1
            taken.add(mapped)
            self._forward[name] = mapped
            self._back[mapped] = name

    @property
    def identity(self) -> bool:
        """True when every name in the set is already legal."""
        return not self._forward

    def provider(self, name: str) -> str:
        """The name to send to a provider."""
        mapped = self._forward.get(name)
        if mapped is not None:
            return mapped
        return name if is_provider_legal(name) else provider_tool_name(name)

    def canonical(self, name: str) -> str:
        """The canonical name for a name a provider sent back (unknown names are unchanged)."""
        return self._back.get(name, name)

    def items(self) -> list[tuple[str, str]]:
        """`(canonical, provider)` pairs of the names that were mapped."""
        return list(self._forward.items())


@lru_cache(maxsize=512)
def _cached(names: tuple[str, ...]) -> ToolNames:
    return ToolNames(names)


def tool_names(names: Iterable[str]) -> ToolNames:
    """`ToolNames` for a set of names, cached: the wire formats call this on every request."""
    return _cached(tuple(names))


def request_tool_names(request: ModelRequest) -> ToolNames:
    """The mapping for one model request: its tools and its structured-output name (sent as a
    tool by some formats, and held to the same rule by OpenAI's `json_schema.name`)."""
    names = [t.name for t in request.tools]
    if request.output is not None:
        names.append(request.output.name)
    return tool_names(names)


__all__ = ["MAX_LENGTH", "ToolNames", "is_provider_legal", "provider_tool_name", "request_tool_names", "tool_names"]
