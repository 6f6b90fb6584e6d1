"""`FakeOpenAIServer`: a real HTTP server on 127.0.0.1 that speaks the model APIs for tests
and benchmarks, and misbehaves on request.

It answers OpenAI Chat Completions (`POST /v1/chat/completions`, streamed or not),
`GET /v1/models`, `POST /v1/embeddings` (deterministic vectors), Anthropic Messages
(`POST /v1/messages`) and Gemini (`POST /v1beta/models/{m}:generateContent` and
`:streamGenerateContent?alt=sse`, `POST /v1beta/cachedContents`; usage reports prompt-cache
reads and writes as each provider does, see `PromptCaches`), and both batch APIs (OpenAI files + batches, Anthropic
Message Batches; faults in `srv.batches`, see `_fake_batch.py`). By default it echoes the last user message; scripted
replies (text, tool calls, JSON objects) are served in order; faults (`Fault`) come from a
per-request header `X-Fake-Fault: <spec>`, a queue (`srv.fail(...)`) or a standing fault
(`srv.always(...)`), in that order of precedence.

    async with FakeOpenAIServer() as srv:
        srv.reply("hi", ToolCall("search", {"q": "x"}))
        srv.fail(Fault.error(503), times=2)      # next two requests: 503, then the replies
        model = srv.model()                     # an openai-compat Model pointed at it

As its own process (benchmarks keep the upstream off the measured process):
`python -m bastion.testing._fake_server --port 9000` prints its base URL and serves until
killed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from aiohttp import web

from bastion.types import ToolCall, Usage

if TYPE_CHECKING:
    from bastion.gateway import Model

JSON = dict[str, Any]
Shape: TypeAlias = Literal["openai", "anthropic", "gemini"]
FaultKind: TypeAlias = Literal[
    "status", "rate_limit", "context_length", "slow", "hang", "malformed", "disconnect", "truncate", "garbage_sse"
]


@dataclass(frozen=True, slots=True)
class Fault:
    """One way to misbehave. Build with the class methods; `Fault.parse("503")` reads the
    short form used by the `X-Fake-Fault` header."""

    kind: FaultKind
    status: int = 500
    delay: float = 0.0  # seconds before answering (slow)
    chunk_delay: float = 0.0  # seconds between stream chunks (slow)
    retry_after: str | None = None  # Retry-After header value (rate_limit)
    body: str | None = None
    after_chunks: int = 1  # stream chunks sent before a disconnect
    bound: float = 30.0  # a hang ends after this many seconds (or when the client leaves)

    @classmethod
    def error(cls, status: int = 500, body: str | None = None) -> Fault:
        return cls("status", status=status, body=body)

    @classmethod
    def raw(cls, body: str | dict[str, Any], status: int = 200) -> Fault:
        """Answer with exactly this JSON body (e.g. a hand-made provider response)."""
        return cls("status", status=status, body=body if isinstance(body, str) else json.dumps(body))

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = 1.0) -> Fault:
        value = None if retry_after is None else (retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        return cls("rate_limit", status=429, retry_after=value)

    @classmethod
    def context_length(cls) -> Fault:
        return cls("context_length", status=400)

    @classmethod
    def slow(cls, delay: float = 0.0, *, chunk_delay: float = 0.0) -> Fault:
        return cls("slow", delay=delay, chunk_delay=chunk_delay)

    @classmethod
    def hang(cls, bound: float = 30.0) -> Fault:
        return cls("hang", bound=bound)

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def disconnect(cls, after_chunks: int = 1) -> Fault:
        return cls("disconnect", after_chunks=after_chunks)

    @classmethod
    def truncate(cls, after_chunks: int = 1) -> Fault:
        """End a stream cleanly after `after_chunks` chunks, without its final event."""
        return cls("truncate", after_chunks=after_chunks)

    @classmethod
    def garbage_sse(cls) -> Fault:
        return cls("garbage_sse")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """`"503"`, `"429"`, `"429:2.5"`, `"context_length"`, `"slow:0.2"`, `"hang"`, `"hang:5"`,
        `"malformed"`, `"disconnect"`, `"disconnect:3"`, `"truncate:2"`, `"garbage_sse"`."""
        head, _, arg = spec.strip().partition(":")
        try:
            if head.isdigit():
                status = int(head)
                return cls.rate_limit(arg or None) if status == 429 else cls.error(status)
            if head == "slow":
                return cls.slow(float(arg or 0.1))
            if head == "hang":
                return cls.hang(float(arg or 30.0))
            if head in ("disconnect", "truncate"):
                return getattr(cls, head)(int(arg or 1))
            if head in ("malformed", "garbage_sse", "context_length"):
                return getattr(cls, head)()
        except ValueError:
            pass
        raise ValueError(
            f"unknown fault spec {spec!r}; use e.g. '503', '429:2', 'context_length', 'slow:0.2', "
            "'hang:5', 'malformed', 'disconnect:2' or 'garbage_sse'"
        )


@dataclass(slots=True)
class FakeReply:
    """A scripted answer with full control over usage and the finish reason."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None


ScriptItem: TypeAlias = "str | ToolCall | list[ToolCall] | dict[str, Any] | FakeReply | Fault"


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


# --- helpers ---------------------------------------------------------------------------------


def _example_for_schema(schema: Any, depth: int = 0) -> Any:
    """A small value that satisfies common JSON schemas (used when no reply was scripted)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _example_for_schema(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties") or {}
        return {k: _example_for_schema(v, depth + 1) for k, v in props.items()}
    return {"string": "example", "integer": 1, "number": 1.0, "boolean": True, "array": [], "null": None}.get(
        str(kind), "example"
    )


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _output_cap(body: JSON, shape: Shape) -> int | None:
    """The request's cap on output tokens (`max_completion_tokens`, `max_tokens`, `maxOutputTokens`)."""
    if shape == "gemini":
        config = body.get("generationConfig")
        caps = [config.get("maxOutputTokens")] if isinstance(config, dict) else []
    else:
        caps = [body.get("max_completion_tokens"), body.get("max_tokens")]
    ints = [c for c in caps if isinstance(c, int) and not isinstance(c, bool) and c >= 0]
    return min(ints) if ints else None


def _chunks(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def _halves(s: str) -> list[str]:
    mid = len(s) // 2
    return [s[:mid], s[mid:]] if mid else [s]


_ERROR_BODY = json.dumps({"error": {"message": "injected fault", "type": "server_error", "code": None}})
_CONTEXT_BODY = json.dumps(
    {
        "error": {
            "message": "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
)


@dataclass(slots=True)
class _Answer:
    text: str
    calls: list[ToolCall]
    usage: Usage
    finish: str  # normalised: stop, length, tool_calls, content_filter


class FakeOpenAIServer:
    """A scriptable model API server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, record: bool = True, strict_names: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.record = record
        # OpenAI and Anthropic answer 400 to a tool name outside ^[a-zA-Z0-9_-]{1,64}$.
        self.strict_names = strict_names
        self.requests: list[RecordedRequest] = []
        self.counts: Counter[str] = Counter()
        self.disconnects = 0  # handlers that ended because the client went away
        self._replies: deque[ScriptItem] = deque()
        self._faults: deque[Fault] = deque()
        self._standing: Fault | None = None
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self.model_ids = ["fake-model", "fake-embedding"]
        self._left: asyncio.Event | None = None
        from bastion.testing._fake_batch import FakeBatches

        self.batches = FakeBatches(self)  # the batch APIs' state and faults
        self.prompt_caches = PromptCaches()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeOpenAIServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1beta/models/{tail:.+}", self._gemini)
        app.router.add_post("/v1beta/cachedContents", self._gemini_cache)
        self.batches.install(app)
        # handler_cancellation: a hang ends as soon as the client disconnects.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        self._left = asyncio.Event()
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # pyright: ignore[reportPrivateUsage]
        if server is not None and self.port == 0:
            self.port = server.sockets[0].getsockname()[1]  # pyright: ignore[reportAttributeAccessIssue]
        return self

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI (and Anthropic) base URL, ending with `/v1`."""
        return f"{self.root_url}/v1"

    @property
    def gemini_base_url(self) -> str:
        return f"{self.root_url}/v1beta"

    # --- scripting ---------------------------------------------------------------------------

    def reply(self, *items: ScriptItem) -> None:
        """Queue replies: text, a tool call, a list of tool calls, a dict (sent as JSON
        text, or as the forced tool's input on the Anthropic route), a `FakeReply`, or a
        `Fault` to inject at that point of the script."""
        self._replies.extend(items)

    def fail(self, *faults: Fault, times: int = 1) -> None:
        """Inject `faults` on the next requests (each repeated `times`), before any reply."""
        for fault in faults:
            self._faults.extend([fault] * times)

    def always(self, fault: Fault | None) -> None:
        """A fault for every request that has no queued one (`None` clears it)."""
        self._standing = fault

    def reset(self) -> None:
        self._replies.clear()
        self._faults.clear()
        self._standing = None
        self.requests.clear()
        self.counts.clear()
        self.disconnects = 0
        self.batches.reset()
        self.prompt_caches.clear()

    @property
    def count(self) -> int:
        """Requests received on the model routes."""
        return sum(self.counts.values())

    async def wait_for_disconnects(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until `n` hanging requests ended because their client went away."""
        assert self._left is not None, "start the server first"
        async with asyncio.timeout(timeout):
            while self.disconnects < n:
                await self._left.wait()
                self._left.clear()

    @property
    def pending_replies(self) -> int:
        return len(self._replies)

    def model(self, name: str = "fake-model", **overrides: Any) -> Model:
        """An OpenAI-compatible `Model` pointed at this server."""
        from bastion.gateway import resolve_model

        return resolve_model(f"openai-compat:{self.base_url}#{name}", **overrides)

    def anthropic_model(self, name: str = "claude-fake", **overrides: Any) -> Model:
        from bastion.gateway import resolve_model

        overrides.setdefault("api_key", "test-key")
        return resolve_model(f"anthropic:{name}", base_url=self.base_url, **overrides)

    def gemini_model(self, name: str = "gemini-fake", **overrides: Any) -> Model:
        from bastion.gateway import resolve_model

        overrides.setdefault("api_key", "test-key")
        return resolve_model(f"gemini:{name}", base_url=self.gemini_base_url, **overrides)

    # --- request plumbing --------------------------------------------------------------------

    async def _read(self, request: web.Request, route: str) -> Any:
        self.counts[route] += 1
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path_qs, dict(request.headers), body))
        return body

    def _pick_fault(self, request: web.Request) -> Fault | None:
        spec = request.headers.get("X-Fake-Fault")
        if spec:
            try:
                return Fault.parse(spec)
            except ValueError as e:
                return Fault.error(400, json.dumps({"error": {"message": str(e), "type": "invalid_request_error"}}))
        if self._faults:
            return self._faults.popleft()
        if self._replies and isinstance(self._replies[0], Fault):
            return self._replies.popleft()  # type: ignore[return-value]
        return self._standing

    async def _apply_fault(self, fault: Fault | None, request: web.Request, stream: bool) -> web.StreamResponse | None:
        """Answer with the fault, or None to go on with a normal reply (after any delay)."""
        if fault is None:
            return None
        kind = fault.kind
        if kind == "slow":
            if fault.delay:
                await asyncio.sleep(fault.delay)
            return None
        if kind == "status":
            return web.Response(status=fault.status, text=fault.body or _ERROR_BODY, content_type="application/json")
        if kind == "rate_limit":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            body = {"error": {"message": "Rate limit reached; slow down.", "type": "rate_limit_error"}}
            return web.Response(status=429, text=json.dumps(body), headers=headers, content_type="application/json")
        if kind == "context_length":
            return web.Response(status=400, text=_CONTEXT_BODY, content_type="application/json")
        if kind == "hang":
            try:
                await asyncio.sleep(fault.bound)
            except asyncio.CancelledError:
                self.disconnects += 1
                if self._left is not None:
                    self._left.set()
                raise
            return web.Response(status=504, text=_ERROR_BODY, content_type="application/json")
        if kind == "malformed":
            if stream:
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write(b'data: {"choices": [{"delta": \n\n')
                await resp.write_eof()
                return resp
            return web.Response(status=200, text='{"id": "x", "choices": [', content_type="application/json")
        if kind == "garbage_sse":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: <html><body>502 Bad Gateway</body></html>\n\n")
            await resp.write_eof()
            return resp
        # disconnect/truncate: mid-stream for streams (handled by the writers), at once otherwise
        if kind == "truncate" and not stream:
            return web.Response(status=200, text='{"id": "x"', content_type="application/json")
        if not stream:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        return None

    def _answer(
        self,
        body: JSON,
        shape: Shape,
        schema: Any,
        forced_tool: JSON | None,
        prompt_bytes: int,
        cached: tuple[int, int] = (0, 0),  # prompt tokens read from / written to the prompt cache
    ) -> _Answer:
        # A fault at the head of the script belongs to the next request, not to this one.
        item: Any = self._replies.popleft() if self._replies and not isinstance(self._replies[0], Fault) else None
        usage: Usage | None = None
        finish: str | None = None
        calls: list[ToolCall] = []
        text = ""
        if item is None:
            if forced_tool is not None:
                calls = [ToolCall(forced_tool["name"], _example_for_schema(forced_tool.get("input_schema")))]
            elif schema is not None:
                text = json.dumps(_example_for_schema(schema))
            else:
                text = _last_user_text(body, shape)
        elif isinstance(item, str):
            text = item
        elif isinstance(item, ToolCall):
            calls = [item]
        elif isinstance(item, list):
            calls = list(item)
        elif isinstance(item, dict):
            if forced_tool is not None:
                calls = [ToolCall(forced_tool["name"], item)]
            else:
                text = json.dumps(item)
        elif isinstance(item, FakeReply):
            text, calls, usage, finish = item.text, list(item.tool_calls), item.usage, item.finish_reason
        if usage is None:
            out = _tokens(text) + sum(_tokens(json.dumps(c.arguments)) for c in calls)
            # Honour the output cap as providers do: cut the text, report at most the cap, finish
            # "length". (A FakeReply's own usage is reported as given: a provider that overspends.)
            cap = _output_cap(body, shape)
            if cap is not None and out > cap:
                text, out, finish = text[: cap * 4], cap, "length"
            usage = Usage(
                input_tokens=max(1, prompt_bytes // 4, sum(cached)),
                output_tokens=out,
                cache_read_tokens=cached[0],
                cache_write_tokens=cached[1],
                requests=1,
            )
        return _Answer(text, calls, usage, finish or ("tool_calls" if calls else "stop"))

    # --- OpenAI ------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, "chat")
        if not isinstance(body, dict) or "messages" not in body:
            return _bad_request("body must be a JSON object with 'messages'")
        if self.strict_names:
            named = [(f"tools[{i}].function.name", (t.get("function") or {}).get("name")) for i, t in _tools(body)]
            choice = body.get("tool_choice")
            if isinstance(choice, dict):
                named.append(("tool_choice.function.name", (choice.get("function") or {}).get("name")))
            bad = _illegal_name(named)
            if bad is not None:
                return _bad_request(bad)
        stream = bool(body.get("stream"))
        fault = self._pick_fault(request)
        early = await self._apply_fault(fault, request, stream)
        if early is not None:
            return early
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
        hit = self.prompt_caches.openai(body, request.headers.get("Authorization", ""))
        answer = self._answer(body, "openai", schema, None, request.content_length or 0, (hit, 0))
        model = body.get("model", "fake-model")
        rid = f"chatcmpl-fake-{next(self._ids)}"
        finish = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}[
            answer.finish
        ]
        u = answer.usage
        usage = {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.input_tokens + u.output_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        }
        if not stream:
            message: JSON = {"role": "assistant", "content": answer.text or None}
            if answer.calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in answer.calls
                ]
            payload = {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
            return web.Response(body=json.dumps(payload).encode(), content_type="application/json")

        def chunk(delta: JSON, finish_reason: str | None = None) -> JSON:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        events: list[JSON] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in _chunks(answer.text)]
        for i, c in enumerate(answer.calls):
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {"index": i, "id": c.id, "type": "function", "function": {"name": c.name, "arguments": ""}}
                        ]
                    }
                )
            )
            events += [
                chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                for part in _halves(json.dumps(c.arguments))
            ]
        events.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": rid, "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
        frames = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        return await self._write_stream(request, frames, fault)

    async def _write_stream(self, request: web.Request, frames: list[bytes], fault: Fault | None) -> web.StreamResponse:
        cut = fault.after_chunks if fault is not None and fault.kind in ("disconnect", "truncate") else None
        if cut == 0 and fault is not None and fault.kind == "disconnect":
            if request.transport is not None:
                request.transport.abort()  # before any byte of the response
            raise asyncio.CancelledError
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        gap = fault.chunk_delay if fault is not None and fault.kind == "slow" else 0.0
        if cut is None and not gap:
            await resp.write(b"".join(frames))
            await resp.write_eof()
            return resp
        for i, frame in enumerate(frames):
            if cut is not None and i >= cut:
                if fault is not None and fault.kind == "truncate":
                    break
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            await resp.write(frame)
            if gap:
                await asyncio.sleep(gap)
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        self.counts["models"] += 1
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "bastion-fake"} for m in self.model_ids]
        return web.json_response({"object": "list", "data": data})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, "embeddings")
        if not isinstance(body, dict) or "input" not in body:
            return _bad_request("body must be a JSON object with 'input'")
        early = await self._apply_fault(self._pick_fault(request), request, False)
        if early is not None:
            return early
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or 16)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(str(text), dims)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(_tokens(str(t)) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # --- Anthropic ---------------------------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, "anthropic")
        if not isinstance(body, dict) or "messages" not in body or "max_tokens" not in body:
            return _bad_request("body must be a JSON object with 'messages' and 'max_tokens'")
        if self.strict_names:
            bad = _illegal_name([(f"tools.{i}.custom.name", t.get("name")) for i, t in _tools(body)])
            if bad is not None:
                return _bad_request(bad)
        stream = bool(body.get("stream"))
        fault = self._pick_fault(request)
        early = await self._apply_fault(fault, request, stream)
        if early is not None:
            return early
        forced: JSON | None = None
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "tool":
            forced = next((t for t in body.get("tools") or () if t.get("name") == choice.get("name")), None)
        cached = self.prompt_caches.anthropic(body, request.headers.get("x-api-key", ""))
        answer = self._answer(body, "anthropic", None, forced, request.content_length or 0, cached)
        u = answer.usage
        usage = {
            "input_tokens": u.input_tokens - u.cache_read_tokens - u.cache_write_tokens,
            "output_tokens": u.output_tokens,
            "cache_read_input_tokens": u.cache_read_tokens,
            "cache_creation_input_tokens": u.cache_write_tokens,
        }
        stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}[
            answer.finish
        ]
        mid = f"msg_fake{next(self._ids)}"
        model = body.get("model", "claude-fake")
        content: list[JSON] = [{"type": "text", "text": answer.text}] if answer.text else []
        content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in answer.calls]
        if not stream:
            return web.json_response(
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        start_usage = {**usage, "output_tokens": 1}
        events: list[tuple[str, JSON]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": mid,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "usage": start_usage,
                    },
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        index = 0
        if answer.text:
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                )
            )
            for piece in _chunks(answer.text):
                events.append(
                    (
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        for c in answer.calls:
            block = {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}
            events.append(
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            )
            for part in _halves(json.dumps(c.arguments)):
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": part},
                        },
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": u.output_tokens},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        frames = [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]
        return await self._write_stream(request, frames, fault)

    # --- Gemini ------------------------------------------------------------------------------

    async def _gemini_cache(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request, "gemini_cache")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _bad_request("body must be a JSON object with 'model'")
        ttl = str(body.get("ttl") or "3600s")
        seconds = float(ttl[:-1]) if ttl.endswith("s") and ttl[:-1].replace(".", "", 1).isdigit() else 3600.0
        content = {k: v for k, v in body.items() if k not in ("model", "ttl", "displayName")}
        tokens = len(json.dumps(content, sort_keys=True)) // 4
        name = self.prompt_caches.gemini_put(tokens, seconds, request.headers.get("x-goog-api-key", ""))
        return web.json_response({"name": name, "model": body["model"], "usageMetadata": {"totalTokenCount": tokens}})

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        model, _, method = tail.rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            raise web.HTTPNotFound(text=f"unknown Gemini method {tail!r}")
        body = await self._read(request, "gemini")
        if not isinstance(body, dict) or "contents" not in body:
            return _bad_request("body must be a JSON object with 'contents'")
        stream = method == "streamGenerateContent"
        fault = self._pick_fault(request)
        early = await self._apply_fault(fault, request, stream)
        if early is not None:
            return early
        config = body.get("generationConfig") or {}
        schema = config.get("responseSchema") or config.get("responseJsonSchema")
        cached = 0
        if "cachedContent" in body:
            clash = [k for k in ("systemInstruction", "tools", "toolConfig") if k in body]
            if clash:
                return _bad_request(
                    f"CachedContent can not be used with GenerateContent request setting {', '.join(clash)}; "
                    "move them to the CachedContent and then retry"
                )
            found = self.prompt_caches.gemini_get(str(body["cachedContent"]), request.headers.get("x-goog-api-key", ""))
            if found is None:
                error = {"code": 403, "message": "CachedContent not found (or permission denied)"}
                return web.json_response({"error": {**error, "status": "PERMISSION_DENIED"}}, status=403)
            cached = found
        answer = self._answer(body, "gemini", schema, None, (request.content_length or 0) + cached * 4, (cached, 0))
        u = answer.usage
        usage = {
            "promptTokenCount": u.input_tokens,
            "candidatesTokenCount": u.output_tokens - u.reasoning_tokens,
            "totalTokenCount": u.input_tokens + u.output_tokens,
            "cachedContentTokenCount": u.cache_read_tokens,
            "thoughtsTokenCount": u.reasoning_tokens,
        }
        finish = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}[
            answer.finish
        ]
        calls = [{"functionCall": {"name": c.name, "args": c.arguments}} for c in answer.calls]
        rid = f"fake-{next(self._ids)}"
        if not stream:
            parts: list[JSON] = ([{"text": answer.text}] if answer.text else []) + calls
            return web.json_response(
                {
                    "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": rid,
                }
            )
        pieces = _chunks(answer.text)
        chunks: list[JSON] = [
            {"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}], "responseId": rid}
            for p in pieces
        ]
        if calls:
            chunks.append(
                {"candidates": [{"content": {"role": "model", "parts": calls}, "index": 0}], "responseId": rid}
            )
        last: JSON = {
            "candidates": [{"content": {"role": "model", "parts": []}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": rid,
        }
        if chunks:
            chunks[-1] = {**chunks[-1], "usageMetadata": usage}
            chunks[-1]["candidates"][0]["finishReason"] = finish
        else:
            chunks.append(last)
        frames = [b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks]
        return await self._write_stream(request, frames, fault)


class PromptCaches:
    """Provider-side prompt caches, reported in usage the way the providers report them.

    Anthropic: only prefixes ending at a `cache_control` breakpoint are written (when at least
    the model's minimum, see `anthropic_min_tokens`); a later request reads the longest one
    found at a block boundary up to 20 blocks before one of its breakpoints. OpenAI: a request
    with a `prompt_cache_key` reads the longest prefix (1024 tokens, then steps of 128) it
    shares with a recent request of the same key. Without a key nothing is read: the fake
    plays a busy fleet, where requests that share only an agent's system prompt are spread
    over many machines. Gemini: `POST /v1beta/cachedContents` creates a resource whose tokens
    a request naming it as `cachedContent` reads. Caches are per API key (a provider's
    organisation) and live `ttl` seconds from their last use (Gemini: from creation, its
    body's `ttl`). `clear()` ends them all. Tokens are counted as 4 characters of canonical JSON.
    """

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._anthropic: dict[str, float] = {}  # prefix digest -> expiry
        self._openai: dict[str, list[tuple[float, str]]] = {}  # org + key -> (expiry, rendered prompt)
        self._gemini: dict[str, tuple[str, int, float]] = {}  # name -> (org, tokens, expiry)
        self._gemini_ids = itertools.count(1)

    def clear(self) -> None:
        self._anthropic.clear()
        self._openai.clear()
        self._gemini.clear()

    def gemini_put(self, tokens: int, ttl: float, org: str) -> str:
        name = f"cachedContents/fake{next(self._gemini_ids)}"
        self._gemini[name] = (org, tokens, time.monotonic() + ttl)
        return name

    def gemini_get(self, name: str, org: str) -> int | None:
        """The tokens of a live cachedContents resource of this org, or None (gone, or not yours)."""
        found = self._gemini.get(name)
        if found is None or found[0] != org or found[2] <= time.monotonic():
            return None
        return found[1]

    def anthropic(self, body: JSON, org: str) -> tuple[int, int]:
        """(tokens read, tokens written) for a Messages request."""
        from bastion.gateway.formats import anthropic_min_tokens

        blocks: list[Any] = [t for _, t in _tools(body)]
        system = body.get("system")
        blocks += [system] if isinstance(system, str) else system if isinstance(system, list) else []
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            blocks += [content] if isinstance(content, str) else content if isinstance(content, list) else []
        running = hashlib.sha256(f"{org}\x00{body.get('model')}".encode())
        digests: list[str] = []
        sizes: list[int] = []  # cumulative tokens up to and including each block
        marks: list[int] = []
        total = 0
        for i, block in enumerate(blocks):
            plain = {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block
            rendered = json.dumps(plain, sort_keys=True)
            running.update(rendered.encode())
            total += len(rendered) // 4
            digests.append(running.hexdigest())
            sizes.append(total)
            if isinstance(block, dict) and "cache_control" in block:
                marks.append(i)
        now = time.monotonic()
        read = 0
        for mark in marks:
            for j in range(mark, max(-1, mark - 21), -1):
                if self._anthropic.get(digests[j], 0.0) > now:
                    self._anthropic[digests[j]] = now + self.ttl
                    read = max(read, sizes[j])
                    break
        minimum = anthropic_min_tokens(str(body.get("model", "")))
        cacheable = [m for m in marks if sizes[m] >= minimum]
        for mark in cacheable:
            self._anthropic[digests[mark]] = now + self.ttl
        written = max(0, sizes[cacheable[-1]] - read) if cacheable else 0
        return read, written

    def openai(self, body: JSON, org: str) -> int:
        """Cached tokens for a Chat Completions request."""
        key = body.get("prompt_cache_key")
        if not isinstance(key, str):
            return 0
        head = json.dumps([body.get("tools"), body.get("response_format")], sort_keys=True)
        prompt = head + "".join(json.dumps(m, sort_keys=True) for m in body.get("messages") or ())
        now = time.monotonic()
        slot = f"{org}\x00{body.get('model')}\x00{key}"
        recent = [(t, p) for t, p in self._openai.get(slot, []) if t > now]
        best = max((_common_prefix(prompt, p) for _, p in recent), default=0) // 4
        self._openai[slot] = [*recent[-15:], (now + self.ttl, prompt)]
        return 0 if best < 1024 else 1024 + (best - 1024) // 128 * 128


def _common_prefix(a: str, b: str) -> int:
    """The length of the common prefix of `a` and `b` (binary search over C-speed compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _tools(body: JSON) -> list[tuple[int, JSON]]:
    tools = body.get("tools")
    return [(i, t) for i, t in enumerate(tools) if isinstance(t, dict)] if isinstance(tools, list) else []


def _illegal_name(named: list[tuple[str, Any]]) -> str | None:
    """The provider's message for the first tool name outside the rule, or None."""
    for where, name in named:
        if not isinstance(name, str) or _TOOL_NAME.fullmatch(name) is None:
            return f"Invalid '{where}': {name!r} does not match pattern '^[a-zA-Z0-9_-]{{1,64}}$'."
    return None


def _bad_request(message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.Response(status=400, text=json.dumps(body), content_type="application/json")


def _last_user_text(body: JSON, shape: Shape) -> str:
    if shape == "gemini":
        for content in reversed(body.get("contents") or []):
            if content.get("role", "user") == "user":
                texts = [p["text"] for p in content.get("parts") or () if "text" in p]
                if texts:
                    return "".join(texts)
        return "ok"
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content or "ok"
        if isinstance(content, list):
            texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
            if texts:
                return "".join(texts)
    return "ok"


def fake_embedding(text: str, dims: int = 16) -> list[float]:
    """A deterministic unit vector for `text` (same text, same vector, in every process)."""
    digest = b""
    counter = 0
    while len(digest) < dims * 2:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [int.from_bytes(digest[2 * i : 2 * i + 2], "big") / 65535.0 - 0.5 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


async def _serve(host: str, port: int, record: bool) -> None:
    import signal

    server = FakeOpenAIServer(host=host, port=port, record=record)
    await server.start()
    print(server.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.aclose()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible model server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--record", action="store_true", help="keep every request in memory")
    args = parser.parse_args(argv)
    try:
        import uvloop  # pyright: ignore[reportMissingImports]

        uvloop.install()  # pyright: ignore[reportUnknownMemberType]
    except ImportError:
        pass
    asyncio.run(_serve(args.host, args.port, args.record))


__all__ = ["FakeOpenAIServer", "FakeReply", "Fault", "PromptCaches", "RecordedRequest", "fake_embedding"]


if __name__ == "__main__":
    main()
