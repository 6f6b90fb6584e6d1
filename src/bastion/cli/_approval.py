"""Finding a tool approval request inside interrupt payloads."""

from __future__ import annotations

from typing import Any


def find_approval(value: Any) -> dict[str, Any] | None:
    """The tool's approval request, wherever nested agents wrapped it."""
    if isinstance(value, dict):
        if value.get("type") == "tool_approval":
            return value  # pyright: ignore[reportUnknownVariableType]
        children = list(value.values())  # pyright: ignore[reportUnknownVariableType]
    elif isinstance(value, list):
        children = value  # pyright: ignore[reportUnknownVariableType]
    else:
        return None
    for child in children:  # pyright: ignore[reportUnknownVariableType]
        found = find_approval(child)
        if found is not None:
            return found
    return None
