"""The runtime server: HTTP API + web UI + the gateway's OpenAI-compatible proxy, one process.

Every route is tenant-scoped by the caller's API key; a tenant can never name another tenant's
run, thread, trace, cost or memory (lookups include the tenant, so a foreign id is a 404).
"""

# No `from __future__ import annotations`: FastAPI must see the route annotations (which use
# aliases local to `create_app`) as objects, not strings.
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic_core import to_json

from bastion.config import redact_credentials
from bastion.errors import BastionError, UserError
from bastion.runtime import RunConflictError, RunNotFoundError, Runtime, ThreadNotFoundError, Webhook
from bastion.server._auth import ApiKeyStore, Principal, Role
from bastion.server._fast import FastCreateRun, bearer_key
from bastion.server._limits import BodyLimitMiddleware, EdgeLimits, check_json_depth, parse_json_body
from bastion.server._schemas import Approval, CreateRun, CreateThread, ErrorOut, ForkThread, ResumeRun, RunOut

log = logging.getLogger("bastion.server")
UI_DIR = Path(__file__).with_name("ui")

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 404: {"model": ErrorOut},
    409: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
}  # fmt: skip
_UI_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a bundled asset's plain file name


def _rows_json(rows: Iterable[Any], dump: Callable[[Any], bytes], kind: str) -> Response:
    """A JSON array serialised row by row: a row that cannot be serialised (stored before the
    edge checked depth, say) is skipped and logged instead of failing the whole listing."""
    parts: list[bytes] = []
    for row in rows:
        try:
            parts.append(dump(row))
        except (ValueError, TypeError, RecursionError) as e:
            key = getattr(row, "id", None) or (row.get("thread_id") if isinstance(row, dict) else None)
            log.warning("skipping %s %s in a listing: %s", kind, key, redact_credentials(str(e)))
    return Response(b"[" + b",".join(parts) + b"]", media_type="application/json")


async def _json_depth_guard(request: Request) -> None:
    """Refuse a JSON body nested deeper than the limit before any route stores it."""
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is not None:
        limits: EdgeLimits = request.app.state.limits
        check_json_depth(await request.body(), limits.max_json_depth)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency resolving the caller's API key to a `Principal` with at least `role`."""

    async def dependency(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
        key = bearer_key(authorization)
        if key is None:
            raise HTTPException(
                401, "missing API key: send 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
            )
        keys: ApiKeyStore = request.app.state.keys
        principal = await keys.lookup(key)
        if principal is None:
            raise HTTPException(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
        if not principal.can(role):
            raise HTTPException(403, f"this key's role {principal.role!r} cannot do this; it needs {role!r}")
        return principal

    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


Extension = Callable[[FastAPI], None]
"""Adds routes for an optional component (traces, costs, memory, evals); its routes take a
`Viewer`/`Operator` parameter so they are authenticated and tenant-scoped."""


def create_app(
    runtime: Runtime,
    keys: ApiKeyStore,
    *,
    proxy: Any = None,
    webhooks: list[Webhook] | None = None,
    extensions: list[Extension] | None = None,
    metrics: Callable[[], Awaitable[str] | str] | None = None,
    manage_runtime: bool = True,
    limits: EdgeLimits | None = None,
) -> FastAPI:
    """The FastAPI app. `proxy` (from `bastion.gateway.proxy.create_proxy_app`) is mounted at
    `/openai` (clients use `base_url=http://host:port/openai/v1`). `limits` bound request
    bodies (size, JSON depth); the defaults are `EdgeLimits()`."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                await runtime.stop()

    app = FastAPI(
        title="Bastion", version="0.1.0", lifespan=lifespan, responses=ERRORS,
        dependencies=[Depends(_json_depth_guard)],
    )  # fmt: skip
    limits = limits or EdgeLimits()
    app.state.limits = limits
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    app.state.keys = keys
    hooks = {h.name: h for h in webhooks or []}

    # -- errors: 4xx with a clear message, never a traceback ---------------------------------

    @app.exception_handler(RunNotFoundError)
    @app.exception_handler(ThreadNotFoundError)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc), "not_found")

    @app.exception_handler(RunConflictError)
    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return _error(409, str(exc), "conflict")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(400, str(exc), "invalid_request")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _error(422, f"invalid request: {problems}", "invalid_request")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kinds = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "request_too_large"}
        response = _error(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "invalid_request"))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # JSON like every other error, without internals; the traceback goes to the (redacting) log.
        return _error(500, "internal error; the server log has the details", "internal_error")

    @app.exception_handler(BastionError)
    async def runtime_error(request: Request, exc: Exception) -> JSONResponse:
        message = redact_credentials(str(exc))  # a database error may quote its connection URL
        log.warning("request failed: %s", message)
        return _error(503, message, "unavailable")

    # -- health -------------------------------------------------------------------------------

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["health"])
    async def ready() -> JSONResponse:
        try:
            await runtime.store.list("__readiness__", limit=1)
        except Exception as e:  # the database is the dependency that matters
            return _error(503, redact_credentials(f"not ready: {e}"), "unavailable")
        return JSONResponse({"status": "ready", "agents": sorted(runtime.agents)})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus() -> Response:
        text = ""
        if metrics is not None:
            out = metrics()
            text = out if isinstance(out, str) else await out
        return Response(text, media_type="text/plain; version=0.0.4")

    # -- agents, threads ----------------------------------------------------------------------

    @app.get("/v1/agents", tags=["agents"])
    async def list_agents(principal: Viewer) -> list[dict[str, Any]]:
        return [
            {"name": name, "description": getattr(agent, "description", "") or ""}
            for name, agent in sorted(runtime.agents.items())
        ]

    @app.post("/v1/threads", tags=["threads"], status_code=201)
    async def create_thread(body: CreateThread, principal: Operator) -> dict[str, Any]:
        from bastion.types import new_sortable_id

        thread_id = body.thread_id or new_sortable_id("thread_")
        await runtime.store.upsert_thread(principal.tenant, thread_id, body.metadata)
        return {"thread_id": thread_id, "metadata": body.metadata}

    @app.get("/v1/threads", tags=["threads"], response_model=list[dict[str, Any]])
    async def list_threads(principal: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
        return _rows_json(await runtime.store.list_threads(principal.tenant, limit), to_json, "thread")

    # Thread routes answer 404 for another tenant's thread exactly as for a missing one.

    @app.get("/v1/threads/{thread_id}/runs", tags=["threads"], response_model=list[RunOut])
    async def thread_runs(thread_id: str, principal: Viewer) -> Response:
        runs = await runtime.list_runs(tenant=principal.tenant, thread_id=thread_id)
        if not runs and not await runtime.store.has_thread(principal.tenant, thread_id):
            raise ThreadNotFoundError(f"thread {thread_id!r} not found for this tenant")
        return _rows_json(runs, lambda r: to_json(RunOut.of(r)), "run")

    @app.get("/v1/threads/{thread_id}/history", tags=["threads"])
    async def thread_history(thread_id: str, principal: Viewer) -> list[dict[str, Any]]:
        return await runtime.thread_history(thread_id, tenant=principal.tenant)

    @app.post("/v1/threads/{thread_id}/fork", tags=["threads"], status_code=201)
    async def fork_thread(thread_id: str, body: ForkThread, principal: Operator) -> dict[str, Any]:
        new = await runtime.fork_thread(
            thread_id, tenant=principal.tenant, checkpoint_id=body.checkpoint_id, new_thread_id=body.thread_id
        )
        return {"thread_id": new, "forked_from": thread_id, "checkpoint_id": body.checkpoint_id}

    @app.delete("/v1/threads/{thread_id}", tags=["threads"], status_code=204)
    async def delete_thread(thread_id: str, principal: Operator) -> Response:
        await runtime.delete_thread(thread_id, tenant=principal.tenant)
        return Response(status_code=204)

    # -- runs ---------------------------------------------------------------------------------

    async def start_run(body: CreateRun, principal: Principal) -> RunOut:
        run = await runtime.create_run(
            tenant=principal.tenant, agent=body.agent, input=body.input, thread_id=body.thread_id,
            metadata=body.metadata, multitask=body.multitask_strategy,
        )  # fmt: skip
        if body.wait:
            try:
                run = await runtime.wait(run.id, tenant=principal.tenant, timeout=body.timeout)
            except TimeoutError:
                run = await runtime.get_run(run.id, tenant=principal.tenant)
        return RunOut.of(run)

    @app.post("/v1/runs", tags=["runs"], status_code=201)
    async def create_run(body: CreateRun, principal: Operator) -> RunOut:
        return await start_run(body, principal)

    # The hot path: served first by a direct route that hands anything unusual to the one above.
    fallback = next(r for r in app.router.routes if getattr(r, "endpoint", None) is create_run)
    app.router.routes.insert(0, FastCreateRun("/v1/runs", fallback, start_run, keys, limits))

    @app.get("/v1/runs", tags=["runs"], response_model=list[RunOut])
    async def list_runs(
        principal: Viewer,
        thread_id: str | None = None,
        agent: str | None = None,
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        runs = await runtime.list_runs(
            tenant=principal.tenant, thread_id=thread_id, agent=agent, status=status, limit=limit
        )
        return _rows_json(runs, lambda r: to_json(RunOut.of(r)), "run")

    @app.get("/v1/runs/{run_id}", tags=["runs"])
    async def get_run(run_id: str, principal: Viewer) -> RunOut:
        return RunOut.of(await runtime.get_run(run_id, tenant=principal.tenant))

    @app.get("/v1/runs/{run_id}/events", tags=["runs"])
    async def run_events(
        run_id: str, principal: Viewer, after: Annotated[int, Query(ge=0)] = 0
    ) -> list[dict[str, Any]]:
        await runtime.get_run(run_id, tenant=principal.tenant)
        return [{"seq": s, "kind": k, "data": d} for s, k, d in await runtime.store.events(run_id, after)]

    @app.get("/v1/runs/{run_id}/stream", tags=["runs"], response_class=StreamingResponse)
    async def stream_run(
        run_id: str, principal: Viewer, last_event_id: Annotated[str | None, Header()] = None
    ) -> StreamingResponse:
        await runtime.get_run(run_id, tenant=principal.tenant)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0

        async def events() -> AsyncIterator[bytes]:
            async for seq, kind, data in runtime.stream(run_id, tenant=principal.tenant, after=after):
                yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()
            yield b"event: end\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/runs/{run_id}/cancel", tags=["runs"])
    async def cancel_run(run_id: str, principal: Operator) -> RunOut:
        return RunOut.of(await runtime.cancel(run_id, tenant=principal.tenant))

    @app.post("/v1/runs/{run_id}/resume", tags=["runs"])
    async def resume_run(run_id: str, body: ResumeRun, principal: Operator) -> RunOut:
        return RunOut.of(await runtime.resume(run_id, tenant=principal.tenant, decision=body.decision))

    # -- approvals inbox ----------------------------------------------------------------------

    @app.get("/v1/approvals", tags=["approvals"], response_model=list[Approval])
    async def approvals(principal: Viewer) -> Response:
        runs = await runtime.list_runs(tenant=principal.tenant, status="interrupted", limit=500)
        return _rows_json(
            runs,
            lambda r: to_json(
                Approval(
                    run_id=r.id, thread_id=r.thread_id, agent=r.agent, interrupts=r.interrupts, created_at=r.updated_at
                )
            ),
            "run",
        )

    @app.post("/v1/approvals/{run_id}", tags=["approvals"])
    async def decide(run_id: str, body: ResumeRun, principal: Operator) -> RunOut:
        return RunOut.of(await runtime.resume(run_id, tenant=principal.tenant, decision=body.decision))

    # -- webhook triggers (authenticated by their HMAC signature, not an API key) -------------

    @app.post("/v1/triggers/{name}", tags=["triggers"], status_code=202)
    async def trigger(name: str, request: Request) -> RunOut:
        hook = hooks.get(name)
        if hook is None:
            raise HTTPException(404, f"no webhook trigger named {name!r}")
        # The signature is checked as the body streams in, bounded by the size limit; a request
        # without one is refused before its body is read.
        body = await hook.read_verified(request.stream(), request.headers.get("x-bastion-signature"))
        payload = parse_json_body(body, limits.max_json_depth, "webhook body")
        try:
            input = hook.to_input(payload)
        except Exception as e:  # the sender's payload does not fit the template: a 400, not a 500
            raise UserError(f"webhook {name!r}: the payload does not fit its input template: {e!r}") from None
        run = await runtime.create_run(
            tenant=hook.tenant, agent=hook.agent, input=input,
            metadata={"trigger": f"webhook:{name}"}, multitask="enqueue",
        )  # fmt: skip
        return RunOut.of(run)

    for extend in extensions or []:
        extend(app)

    if proxy is not None:
        app.mount("/openai", proxy)

    # -- web UI -------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def ui_index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(name: str) -> FileResponse:
        # Plain file names only: NUL bytes, dot-files, `..` and separators never reach the filesystem.
        if not _UI_NAME.fullmatch(name):
            raise HTTPException(404, "no such UI asset")
        path = (UI_DIR / name).resolve()
        if path.parent != UI_DIR.resolve() or not path.is_file():
            raise HTTPException(404, "no such UI asset")
        return FileResponse(path)

    return app
