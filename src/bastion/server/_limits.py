"""Limits at the HTTP edge: body size and JSON nesting depth, checked before anything is stored.

A body larger than the limit is refused with 413 on its `Content-Length` alone, and a body
without one (chunked) is counted as it streams in and refused as soon as it passes the limit,
so the server never holds more than the limit of one request. Depth is checked on the raw
bytes before parsing: a run stored with metadata nested 500 deep once made every listing of
its tenant fail to serialise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROXY_PREFIX = "/openai"


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """`max_body_bytes` for the API, `proxy_max_body_bytes` for the OpenAI-compatible proxy
    under `/openai`, `max_json_depth` for every JSON body (settings: `BASTION_MAX_BODY_BYTES`,
    `BASTION_PROXY_MAX_BODY_BYTES`, `BASTION_MAX_JSON_DEPTH`)."""

    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    proxy_max_body_bytes: int = 32 * 1024 * 1024

    @classmethod
    def from_settings(cls) -> EdgeLimits:
        from bastion.config import get_settings

        s = get_settings()
        return cls(int(s.max_body_bytes), s.max_json_depth, int(s.proxy_max_body_bytes))


class BodyTooLarge(HTTPException):
    """The request body passed the limit while it was being read (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_message(limit))
        self.limit = limit


def too_large_message(limit: int) -> str:
    return (
        f"request body is larger than {limit} bytes; send less (the server's limit is "
        "BASTION_MAX_BODY_BYTES, or BASTION_PROXY_MAX_BODY_BYTES for /openai)"
    )


# A JSON string with its escapes (unrolled, so it runs in linear time).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_KEEP = b"[]{}"
_DROP = bytes(c for c in range(256) if c not in _KEEP)
_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")


def json_too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether the JSON text `raw` nests arrays/objects deeper than `max_depth`.

    Works on bytes at C speed (no parse, no recursion): strings are cut out, the brackets left
    become parentheses, and each pass removes the innermost pairs, so depth d empties in d
    passes. Malformed JSON answers False: the parser rejects it right after."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # cannot nest deeper than it has openers: the common case costs two counts
    brackets = _STRING.sub(b"", raw).translate(_AS_PARENS, _DROP)
    for _ in range(max_depth):
        shorter = brackets.replace(b"()", b"")
        if not shorter or len(shorter) == len(brackets):
            return False
        brackets = shorter
    return True


def check_json_depth(raw: bytes, max_depth: int) -> None:
    """Raise a 400 `HTTPException` if `raw` nests deeper than `max_depth`."""
    if json_too_deep(raw, max_depth):
        raise HTTPException(
            400,
            f"request body nests objects/arrays deeper than {max_depth} levels; flatten it "
            "(the server's limit is BASTION_MAX_JSON_DEPTH)",
        )


def parse_json_body(raw: bytes, max_depth: int, what: str = "request body") -> Any:
    """Parse an untrusted JSON body after the depth check; a 400 on anything malformed."""
    check_json_depth(raw, max_depth)
    try:
        return json.loads(raw or b"{}")
    except (ValueError, RecursionError) as e:
        raise HTTPException(400, f"{what} is not valid JSON: {e}") from None


def _error_body(limit: int, openai_style: bool) -> bytes:
    message = too_large_message(limit)
    if openai_style:
        error: dict[str, Any] = {
            "message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large",
        }  # fmt: skip
    else:
        error = {"message": message, "type": "request_too_large"}
    return json.dumps({"error": error}).encode()


async def _send_413(send: Send, limit: int, openai_style: bool) -> None:
    body = _error_body(limit, openai_style)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            # No `Connection: close`: closing while the client still sends makes its kernel drop
            # our answer (RST). uvicorn discards the rest of the body unbuffered instead.
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Pure ASGI: 413 on a declared `Content-Length` over the limit before the app runs;
    otherwise counts streamed bytes and raises `BodyTooLarge` (an `HTTPException`, so the app's
    handler answers it) at the first chunk past the limit. The proxy under `/openai` reads its
    bodies with its own bounded reader (same limit, OpenAI-style errors), so there the
    exception is raised only if it reads on past the limit."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        proxied = path == PROXY_PREFIX or path.startswith(PROXY_PREFIX + "/")
        limit = self.limits.proxy_max_body_bytes if proxied else self.limits.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await _send_413(send, limit, proxied)
                    return
                break
        received = 0
        tripped = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, tripped
            if tripped:  # the proxy did not stop at its own limit (a route reading without one)
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not proxied:
                        raise BodyTooLarge(limit)
                    # The proxy's bounded reader sees this chunk and answers in OpenAI's format;
                    # only a further read trips here. Either way at most one chunk past the limit.
                    tripped = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_413(send, limit, proxied)  # raised where no exception handler answered it
