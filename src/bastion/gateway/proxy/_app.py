"""The OpenAI-compatible proxy: an ASGI app in front of a gateway.

Clients use any OpenAI SDK with a virtual key; every call goes through the gateway (routing,
budgets, retries, cost, cache) as the key's tenant. The hot path is kept lean: the body is
read once and validated by pydantic-core straight from bytes, answers are serialised with
pydantic-core, and there is no middleware.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from bastion.errors import BastionError, UnknownModelError
from bastion.gateway._budget import BudgetStore
from bastion.gateway.proxy import _embeddings as emb
from bastion.gateway.proxy import _responses as resp
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
from bastion.gateway.proxy._response_store import ResponseStore, StoredResponse, store_for
from bastion.types import (
    Message,
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
        embedders: Mapping[str, Any] | None = None,
        responses: ResponseStore | None = None,
    ) -> None:
        self.gateway = gateway
        self.keys = keys
        self.models = models
        self.budget_hook = budget_hook
        self.max_body_bytes = max_body_bytes
        self.embedders = dict(embedders or {})
        self._responses = responses
        self._owns_responses = responses is None
        self._registered: set[str] = set()

    @property
    def responses(self) -> ResponseStore:
        # Opened on first use: a deployment that never serves /v1/responses gets no file or table.
        if self._responses is None:
            self._responses = store_for(self.keys)
        return self._responses

    def close(self) -> None:
        if self._owns_responses and self._responses is not None:
            self._responses.close()
            self._responses = None

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
        if key is None or not key.usable():
            # Never echo the presented key: it may be a real secret pasted by mistake.
            return ErrorReply(
                401,
                "invalid API key: this virtual key does not exist, was revoked or expired; ask your admin to mint one",
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
            core = to_model_request(body, self._context(key))
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

    @staticmethod
    def _context(key: VirtualKey) -> RunContext:
        """Who a call is for: the same budget scopes and attribution on every endpoint."""
        return RunContext(
            tenant=key.tenant,
            user=key.user,
            team=key.team,
            session=key_session(key),
            tags={"virtual_key": key.key_id},
        )

    @staticmethod
    def _model_refused(key: VirtualKey, model: str) -> Response:
        return _error(
            ErrorReply(
                403,
                f"this API key may not use model {model!r}; allowed: {sorted(key.models or ())}",
                "permission_error",
                "model_not_allowed",
                "model",
            )
        )

    # --- Responses API ------------------------------------------------------------------------

    async def responses_create(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        try:
            body = resp.parse_responses_body(await self._read_body(request))
            if not key.allows(body.model):
                return self._model_refused(key, body.model)
            history: list[Message] = []
            if body.previous_response_id is not None:
                previous = await self.responses.get(key.tenant, body.previous_response_id)
                if previous is None:  # another tenant's id looks exactly like a missing one
                    return _error(_response_not_found(body.previous_response_id, "previous_response_id"))
                history = previous.messages
            conversation = resp.input_messages(body, history)
            core = resp.to_model_request(body, self._context(key), conversation)
        except BadRequest as e:
            return _error(ErrorReply(400, e.message, "invalid_request_error", e.code, e.param))
        except _TooLarge as e:
            return _error(_too_large(e))
        shell = resp.ResponseShell(new_id("resp_"), body)
        if body.stream:
            return await self._responses_stream(core, body, shell, key, conversation)
        try:
            response = await self.gateway.request(core, model=body.model)
        except Exception as e:
            return self._failure(e)
        out = shell.final(response)
        await self._store(body, key, shell, conversation, response, out)
        return _json(200, out, _usage_headers(response, shell.response_id))

    async def _store(
        self,
        body: resp.ResponsesBody,
        key: VirtualKey,
        shell: resp.ResponseShell,
        conversation: list[Message],
        response: ModelResponse,
        out: dict[str, Any],
    ) -> None:
        if body.store is False:
            return
        record = StoredResponse(shell.response_id, key.tenant, [*conversation, response.message], out)
        await self.responses.put(record)

    async def _responses_stream(
        self,
        core: ModelRequest,
        body: resp.ResponsesBody,
        shell: resp.ResponseShell,
        key: VirtualKey,
        conversation: list[Message],
    ) -> Response:
        events = self.gateway.stream(core, model=body.model)
        try:  # as for chat: failures before any output keep their HTTP status
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        except Exception as e:
            await _aclose(events)
            return self._failure(e)

        async def frames() -> AsyncIterator[bytes]:
            writer = resp.EventWriter(shell)
            try:
                for e in writer.start():
                    yield resp.sse(e)
                event = first
                while event is not None:
                    if isinstance(event, TextDelta):
                        out = writer.text(event.text) if event.text else []
                    elif isinstance(event, ToolCallDelta):
                        out = writer.tool_call(event)
                    else:
                        out = writer.finish(event.response)
                        await self._store(body, key, shell, conversation, event.response, out[-1]["response"])
                    for e in out:
                        yield resp.sse(e)
                    if not isinstance(event, TextDelta | ToolCallDelta):
                        break
                    event = await anext(events, None)
                else:
                    raise BastionError("the model stream ended without a final response")
            except Exception as e:
                reply = error_reply(e)
                if reply.status >= 500 and not isinstance(e, BastionError):
                    log.exception("unexpected error while streaming a response", exc_info=e)
                yield resp.sse(writer.error(reply.body()["error"]))
            finally:
                await _aclose(events)

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"x-request-id": shell.response_id, "cache-control": "no-cache"},
        )

    async def responses_get(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        response_id = request.path_params["response_id"]
        stored = await self.responses.get(key.tenant, response_id)
        if stored is None:
            return _error(_response_not_found(response_id))
        return _json(200, stored.response)

    async def responses_delete(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        response_id = request.path_params["response_id"]
        if not await self.responses.delete(key.tenant, response_id):
            return _error(_response_not_found(response_id))
        return _json(200, {"id": response_id, "object": "response", "deleted": True})

    # --- Embeddings API -----------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        key = await self.authenticate(request)
        if isinstance(key, ErrorReply):
            return _error(key)
        try:
            body, texts = emb.parse_embeddings_body(await self._read_body(request))
            if not key.allows(body.model):
                return self._model_refused(key, body.model)
            context = self._context(key)
            if body.user and context.user is None:
                context.user = body.user
            candidates = emb.resolve_embedders(body.model, self.gateway, self.embedders)
            result, cost = await emb.embed_charged(self.gateway, candidates, texts, body.dimensions, context)
        except BadRequest as e:
            return _error(ErrorReply(400, e.message, "invalid_request_error", e.code, e.param))
        except _TooLarge as e:
            return _error(_too_large(e))
        except Exception as e:
            return self._failure(e)
        request_id = new_id("emb-")
        headers = {
            "x-request-id": request_id,
            "x-bastion-model": public_model_name(result.model),
            "x-bastion-input-tokens": str(result.input_tokens),
        }
        if cost is not None:
            headers["x-bastion-cost-usd"] = f"{cost:.8f}"
        return _json(200, emb.embeddings_json(body, result), headers)

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


def _too_large(e: _TooLarge) -> ErrorReply:
    message = f"request body is larger than {e.limit} bytes; send less input"
    return ErrorReply(413, message, "invalid_request_error", "request_too_large")


def _response_not_found(response_id: str, param: str | None = None) -> ErrorReply:
    return ErrorReply(
        404,
        f"no stored response with id {response_id!r} for this API key's tenant (it was never stored, was "
        "created with store=false, was deleted, or belongs to someone else)",
        "invalid_request_error",
        "previous_response_not_found" if param else "response_not_found",
        param,
    )


SUPPORTED = (
    "POST /v1/chat/completions, POST /v1/responses, GET|DELETE /v1/responses/{id}, POST /v1/embeddings, "
    "GET /v1/models, GET /v1/models/{id}"
)


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
    budget_store: Callable[[], BudgetStore] | None = None,
    max_body_bytes: int = 32 * 1024 * 1024,
    title: str = "Bastion OpenAI-compatible proxy",
    embedders: Mapping[str, Any] | None = None,
    responses: ResponseStore | None = None,
) -> ProxyApp:
    """An ASGI app serving `POST /v1/chat/completions`, `POST /v1/responses` (+ `GET`/`DELETE
    /v1/responses/{id}`), `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/{id}`;
    any other path gets an OpenAI-style 404 naming these.

    `embedders` maps embeddings model names to in-process embedders (`bastion.memory`); other
    names embed through the gateway's route to an OpenAI-compatible provider. `responses`
    stores Responses-API conversations for `previous_response_id`; by default beside the key
    store (`responses.db` next to a SQLite key file, the same PostgreSQL database, or memory).
    Call `app.close()` when done with it.

    `models` lists what `/v1/models` shows; by default the gateway's tiers, deployment aliases
    and registered models. A key's own limits are enforced by the gateway's budgets (see
    `GatewayKeyBudgets`; a gateway without a `Budget` gets one whose store `budget_store()` makes,
    in memory by default); `budget_hook` replaces that registration. Bodies larger than
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
    hook = budget_hook if budget_hook is not None else GatewayKeyBudgets(gateway, budget_store)
    proxy = _Proxy(gateway, keys, list_models, hook, max_body_bytes, embedders, responses)
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
    app.add_api_route(
        "/v1/responses", proxy.responses_create, methods=["POST"], openapi_extra=_schema(resp.ResponsesBody)
    )
    app.add_api_route("/v1/responses/{response_id}", proxy.responses_get, methods=["GET"])
    app.add_api_route("/v1/responses/{response_id}", proxy.responses_delete, methods=["DELETE"])
    app.add_api_route("/v1/embeddings", proxy.embeddings, methods=["POST"], openapi_extra=_schema(emb.EmbeddingsBody))

    async def unknown_path(request: Request) -> Response:
        # Last route: any path the others do not serve. A path they serve with another method
        # matches them partially: that is a 405, not a 404.
        allowed = sorted(
            {
                m
                for r in app.router.routes
                if r is not fallback and isinstance(r, APIRoute) and r.matches(request.scope)[0] == Match.PARTIAL
                for m in r.methods or ()
            }
        )
        where = f"{request.method} {request.url.path}"
        if allowed:
            return _error(
                ErrorReply(
                    405,
                    f"method not allowed: {where}; this path accepts {', '.join(allowed)}. "
                    f"Bastion's proxy supports: {SUPPORTED}",
                    "invalid_request_error",
                    "method_not_allowed",
                    headers={"allow": ", ".join(allowed)},
                )
            )
        return _error(
            ErrorReply(
                404,
                f"invalid URL ({where}): Bastion's proxy does not serve this endpoint. "
                f"Bastion's proxy supports: {SUPPORTED}",
                "invalid_request_error",
                "unknown_url",
            )
        )

    app.add_api_route("/{path:path}", unknown_path, methods=list(_ALL_METHODS), include_in_schema=False)
    fallback = app.router.routes[-1]

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

    def close(self) -> None:
        """Close the stores the proxy opened itself (the Responses store); not the key store."""
        self.proxy.close()

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
_ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _schema(model: type[Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


__all__ = ["BudgetHook", "ProxyApp", "ProxyGateway", "create_proxy_app"]
