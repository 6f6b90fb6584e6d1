"""A small Server-Sent Events parser over an aiohttp body (no per-line size limit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """Yield `(event, data)` for each SSE event; `event` is `"message"` when unnamed.

    Reads raw chunks and splits them itself because `StreamReader.readline` refuses lines
    over 64 KiB, and a single `data:` line can carry a large tool-call argument.
    """
    buffer = b""
    event = ""
    data: list[str] = []
    async for chunk in content.iter_any():
        buffer += chunk
        if b"\n" not in chunk:
            continue
        lines = buffer.split(b"\n")
        buffer = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event = ""
                data = []
                continue
            if line[0] == ":":
                continue
            name, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
    if buffer.strip():
        name, _, value = buffer.decode("utf-8", "replace").rstrip("\r").partition(":")
        if name == "data":
            data.append(value[1:] if value[:1] == " " else value)
    if data:
        yield event or "message", "\n".join(data)


__all__ = ["iter_sse"]
