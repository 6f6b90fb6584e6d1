"""A direct route for `POST /v1/runs`, the API's hot path (create a run, and often wait for it).

FastAPI's per-request machinery (dependency solving, parameter extraction, response-model
validation) costs more CPU than creating the run. This route sits first in the router and
serves a well-formed request itself, with the same parts as the FastAPI route: the same key
lookup and role check, the same JSON depth limit, the same `CreateRun` model validating the
parsed body, the same handler, the same `RunOut` body and status. Anything else — no key or a
bad one, a body that does not validate, another content type — goes to the FastAPI route with
the body replayed, which answers it exactly as before. The body limit applies to both (it is
enforced on `receive`, outside the router); the OpenAPI schema is the FastAPI route's.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Message, Receive, Scope, Send

from bastion.server._auth import ApiKeyStore, Principal
from bastion.server._limits import EdgeLimits, json_too_deep
from bastion.server._schemas import CreateRun, RunOut

Handler = Callable[[CreateRun, Principal], Awaitable[RunOut]]


def bearer_key(authorization: str | None) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header; None without one."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip()


def _is_json(content_type: str) -> bool:
    """What FastAPI parses as JSON: `application/json` or `application/*+json` (any parameters)."""
    mime = content_type.partition(";")[0].strip().lower()
    main, _, sub = mime.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class FastCreateRun(BaseRoute):
    """Serves `POST /v1/runs` as `fallback` (the FastAPI route) would, without its machinery;
    hands every request it does not accept to `fallback`."""

    def __init__(self, path: str, fallback: BaseRoute, handler: Handler, keys: ApiKeyStore, limits: EdgeLimits) -> None:
        self.path = path
        self.fallback = fallback
        self.handler = handler
        self.keys = keys
        self.limits = limits

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        # The path is plain (no parameters): compared directly, as FastAPI's matching per request
        # cost as much as the rest of this route. The fallback's own child scope is set on fallback.
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == scope.get("root_path", "") + self.path
        ):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages: list[Message] = []
        more = True
        while more:
            message = await receive()  # bounded by the body limit middleware
            messages.append(message)
            if message["type"] != "http.request":
                break
            more = message.get("more_body", False)
        accepted = await self._accept(scope, messages)
        if accepted is None:
            match, child = self.fallback.matches(scope)
            if match is not Match.FULL:  # pragma: no cover - the same path, by construction
                raise RuntimeError(f"the fallback route does not serve {scope['path']!r}")
            scope.update(child)
            await self.fallback.handle(scope, _replay(messages, receive), send)
            return
        out = await self.handler(*accepted)
        body = to_json(out)
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _accept(self, scope: Scope, messages: list[Message]) -> tuple[CreateRun, Principal] | None:
        """The validated body and the caller, if the request is one this route serves."""
        if messages[-1]["type"] != "http.request":
            return None  # the client went away: let the FastAPI route meet that
        authorization: str | None = None
        content_type: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
        key = bearer_key(authorization)
        if not key or content_type is None or not _is_json(content_type):
            return None
        raw = b"".join(m.get("body", b"") for m in messages)
        if not raw or json_too_deep(raw, self.limits.max_json_depth):
            return None
        try:
            body = CreateRun.model_validate(json.loads(raw))
        except (ValueError, RecursionError, ValidationError):
            return None
        principal = await self.keys.lookup(key)
        if principal is None or not principal.can("operator"):
            return None
        return body, principal


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that hands out `messages` again, then whatever `receive` brings."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


__all__ = ["FastCreateRun", "bearer_key"]
