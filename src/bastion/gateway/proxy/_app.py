"""The OpenAI-compatible proxy: an ASGI app in front of a gateway.

Clients use any OpenAI SDK with a virtual key; every call goes through the gateway (routing,
budgets, retries, cost, cache) as the key's tenant. The hot path is kept lean: the body is
read once and validated by pydantic-core straight from bytes, answers are serialised with
pydantic-core, and there is no middleware.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, Protocol, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from bastion.errors import BastionError, UnknownModelError
from bastion.gateway.proxy._budgets import GatewayKeyBudgets, key_session
from bastion.gateway.proxy._codec import (
    BadRequest,
    ChatCompletionBody,
    ChunkWriter,
    completion_json,
    parse_body,
    to_model_request,
)
from bastion.gateway.proxy._errors import ErrorReply, error_reply
from bastion.gateway.proxy._keys import KeyStore, VirtualKey, hash_key
from bastion.types import (
    ModelRequest,
    ModelResponse,
    RunContext,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    new_id,
)

log = logging.getLogger("bastion.gateway.proxy")


class ProxyGateway(Protocol):
    """What the proxy needs from a gateway (`bastion.gateway.Gateway` implements it)."""

    async def request(self, request: ModelRequest, *, model: str | None = None) -> ModelResponse: ...

    def stream(self, request: ModelRequest, *, model: str | None = None) -> AsyncIterator[StreamEvent]: ...


BudgetHook = Callable[[VirtualKey], None]
"""Called once per key (on its first request) to register its limits with the gateway's budgets."""


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(body), status_code=status, media_type="application/json", headers=headers)


def _error(reply: ErrorReply) -> Response:
    return _json(reply.status, reply.body(), reply.headers)


def _usage_headers(response: ModelResponse, completion_id: str) -> dict[str, str]:
    headers = {
        "x-request-id": completion_id,
        "x-bastion-model": public_model_name(response.model),
        "x-bastion-input-tokens": str(response.usage.input_tokens),
        "x-bastion-output-tokens": str(response.usage.output_tokens),
        "x-bastion-cached": "true" if response.cached else "false",
    }
    if response.cost_usd is not None:
        headers["x-bastion-cost-usd"] = f"{response.cost_usd:.8f}"
    return headers


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class _Proxy:
    def __init__(
        self,
        gateway: ProxyGateway,
        keys: KeyStore,
        models: Callable[[], Iterable[str]],
        budget_hook: BudgetHook | None,
        max_body_bytes: int,
    ) -> None:
        self.gateway = gateway
        self.keys = keys
        self.models = models
        self.budget_hook = budget_hook
        self.max_body_bytes = max_body_bytes
        self._registered: set[str] = set()

    async def _read_body(self, request: Request) -> bytes:
        # Bounded read: a huge (or endless chunked) body must not exhaust the server's memory.
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def authenticate(self, request: Request) -> VirtualKey | ErrorReply:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return ErrorReply(
                401,
                "missing API key: send your Bastion virtual key as `Authorization: Bearer <key>`",
                "invalid_request_error",
                "invalid_api_key",
            )
        key = await self.keys.get(hash_key(token))
        if key is None or key.revoked:
            # Never echo the presented key: it may be a real secret pasted by mistake.
            return ErrorReply(
                401,
                "invalid API key: this virtual key does not exist or was revoked; ask your admin to mint one",
                "invalid_request_error",
                "invalid_api_key",
            )
        if self.budget_hook is not None and key.key_id not in self._registered:
            self.budget_hook(key)
            self._registered.add(key.key_id)
        return key

    async def chat_completions(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        try:
            body = parse_body(await self._read_body(request))
            if not key.allows(body.model):
                return _error(
                    ErrorReply(
                        403,
                        f"this API key may not use model {body.model!r}; allowed: {sorted(key.models or ())}",
                        "permission_error",
                        "model_not_allowed",
                        "model",
                    )
                )
            context = RunContext(
                tenant=key.tenant,
                user=key.user,
                team=key.team,
                session=key_session(key),
                tags={"virtual_key": key.key_id},
            )
            core = to_model_request(body, context)
        except BadRequest as e:
            return _error(ErrorReply(400, e.message, "invalid_request_error", e.code, e.param))
        except _TooLarge as e:
            message = f"request body is larger than {e.limit} bytes; send fewer or smaller messages"
            return _error(ErrorReply(413, message, "invalid_request_error", "request_too_large"))
        completion_id = new_id("chatcmpl-")
        if body.stream:
            return await self._stream(core, body, completion_id)
        try:
            response = await self.gateway.request(core, model=body.model)
        except Exception as e:
            return self._failure(e)
        return _json(
            200,
            completion_json(response, completion_id=completion_id, model=body.model),
            _usage_headers(response, completion_id),
        )

    def _failure(self, exc: Exception) -> Response:
        reply = error_reply(exc)
        if reply.status >= 500 and not isinstance(exc, BastionError):
            log.exception("unexpected error in the proxy", exc_info=exc)
        return _error(reply)

    async def _stream(self, core: ModelRequest, body: ChatCompletionBody, completion_id: str) -> Response:
        events = self.gateway.stream(core, model=body.model)
        # Pull the first event before answering so that failures before any output (unknown
        # model, budget, upstream down) still get their proper status instead of a 200 stream.
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        except Exception as e:
            await _aclose(events)
            return self._failure(e)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = ChunkWriter(completion_id=completion_id, model=body.model, include_usage=include_usage)
        return StreamingResponse(
            self._sse(first, events, writer),
            media_type="text/event-stream",
            headers={"x-request-id": completion_id, "cache-control": "no-cache"},
        )

    async def _sse(
        self, first: StreamEvent | None, events: AsyncIterator[StreamEvent], writer: ChunkWriter
    ) -> AsyncIterator[bytes]:
        try:
            yield _sse(writer.role())
            event = first
            while event is not None:
                if isinstance(event, TextDelta):
                    if event.text:
                        yield _sse(writer.text(event.text))
                elif isinstance(event, ToolCallDelta):
                    yield _sse(writer.tool_call(event))
                else:
                    yield _sse(writer.finish(event.response))
                    if writer.include_usage:
                        yield _sse(writer.usage(event.response.usage))
                    break
                event = await anext(events, None)
            else:
                raise BastionError("the model stream ended without a final response")
            yield b"data: [DONE]\n\n"
        except Exception as e:
            # Headers are gone: report the failure in-band, as OpenAI does, and end the stream.
            reply = error_reply(e)
            if reply.status >= 500 and not isinstance(e, BastionError):
                log.exception("unexpected error while streaming", exc_info=e)
            yield _sse(reply.body())
        finally:
            # Runs on client disconnect too (the generator is closed): release the upstream stream.
            await _aclose(events)

    async def list_models(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        names = sorted({m for m in self.models() if key.allows(m)})
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "bastion"} for m in names]
        return _json(200, {"object": "list", "data": data})

    async def retrieve_model(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        name = request.path_params["model"]
        if name not in set(self.models()) or not key.allows(name):
            return _error(error_reply(UnknownModelError(f"model {name!r} does not exist or this key may not use it")))
        return _json(200, {"id": name, "object": "model", "created": 0, "owned_by": "bastion"})


def _sse(obj: Any) -> bytes:
    return b"data: " + to_json(obj) + b"\n\n"


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.debug("closing an upstream stream failed", exc_info=True)


def public_model_name(name: str) -> str:
    """A model name safe to show clients: `openai-compat:` targets carry an internal URL."""
    if name.startswith("openai-compat:"):
        return "openai-compat:" + name.rpartition("#")[2]
    return name


def _default_models(gateway: object) -> Callable[[], Iterable[str]]:
    def models() -> Iterable[str]:
        fn = getattr(gateway, "model_names", None)
        if callable(fn):
            return cast("Iterable[str]", fn())
        # Until the gateway publishes its names: tiers, deployment aliases, registered models.
        router = getattr(gateway, "_router", None)
        names: list[str] = []
        for attr in ("_tiers", "_deployments", "_models"):
            table = getattr(router, attr, None)
            if isinstance(table, dict):
                names.extend(str(k) for k in cast("dict[Any, Any]", table))
        return names

    return models


async def _health() -> Response:
    """Liveness for load balancers; no key needed, reveals nothing."""
    return _json(200, {"status": "ok"})


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncGenerator[None]:
    yield
    # The server's loop is ending: close the pooled provider connections made on it.
    from bastion.gateway._http import aclose_http_sessions

    await aclose_http_sessions()


def create_proxy_app(
    gateway: ProxyGateway,
    *,
    keys: KeyStore,
    models: Iterable[str] | Callable[[], Iterable[str]] | None = None,
    budget_hook: BudgetHook | None = None,
    max_body_bytes: int = 32 * 1024 * 1024,
    title: str = "Bastion OpenAI-compatible proxy",
) -> ProxyApp:
    """An ASGI app serving `POST /v1/chat/completions`, `GET /v1/models` and `GET /v1/models/{id}`.

    `models` lists what `/v1/models` shows; by default the gateway's tiers, deployment aliases
    and registered models. A key's own limits are enforced by the gateway's budgets (see
    `GatewayKeyBudgets`); `budget_hook` replaces that registration. Bodies larger than
    `max_body_bytes` are refused with 413 before they are read in full. Serve it with any ASGI server, e.g.
    `uvicorn.run(app, host="127.0.0.1", port=8700)`. `app.fastapi` is the FastAPI app behind
    it (OpenAPI schema, extra routes).
    """
    if callable(models):
        list_models: Callable[[], Iterable[str]] = models
    elif models is not None:
        fixed = tuple(models)
        list_models = lambda: fixed  # noqa: E731
    else:
        list_models = _default_models(gateway)
    hook = budget_hook if budget_hook is not None else GatewayKeyBudgets(gateway)
    proxy = _Proxy(gateway, keys, list_models, hook, max_body_bytes)
    app = FastAPI(title=title, docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.proxy = proxy

    # The body is validated by hand (from bytes, one pass) rather than by FastAPI's dependency
    # machinery; the schema is still published for clients and fuzzers.
    app.add_api_route(
        _CHAT_PATH,
        proxy.chat_completions,
        methods=["POST"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ChatCompletionBody.model_json_schema()}},
            }
        },
    )
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/v1/models", proxy.list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model}", proxy.retrieve_model, methods=["GET"])

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error(ErrorReply(exc.status_code, str(exc.detail), kind, headers=dict(exc.headers or {})))

    async def validation_error(request: Request, exc: Exception) -> Response:
        return _error(ErrorReply(400, f"invalid request: {exc}", "invalid_request_error"))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error in the proxy", exc_info=exc)
        return _error(error_reply(exc))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
    return ProxyApp(proxy, app)


class ProxyApp:
    """The proxy's ASGI entry point.

    `POST /v1/chat/completions` at the root is served straight from here: FastAPI's routing and
    dependency solving cost more per request (~100 µs here) than the rest of the proxy together.
    Every other request, and the same route under a mount prefix, goes to the FastAPI app.
    """

    def __init__(self, proxy: _Proxy, fastapi: FastAPI) -> None:
        self.proxy = proxy
        self.fastapi = fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == _CHAT_PATH and scope["method"] == "POST":
            try:
                response = await self.proxy.chat_completions(Request(scope, receive))
            except ClientDisconnect:
                return
            except Exception as e:  # the FastAPI path has the same catch-all handler
                log.exception("unexpected error in the proxy", exc_info=e)
                response = _error(error_reply(e))
            await response(scope, receive, send)
            return
        await self.fastapi(scope, receive, send)


_CHAT_PATH = "/v1/chat/completions"

__all__ = ["BudgetHook", "ProxyApp", "ProxyGateway", "create_proxy_app"]
