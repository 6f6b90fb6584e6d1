"""The batch APIs of `FakeOpenAIServer`: OpenAI's Batch API (files and batches) and Anthropic's
Message Batches, with the faults batches meet in production.

    srv.batches.configure(BatchFaults(polls=2))                 # two "in progress" polls, then done
    srv.batches.configure(BatchFaults(fail={"r1"}))             # r1 errors, the rest succeed
    srv.batches.configure(BatchFaults(expire=True, complete=3)) # the window closes after 3 requests
    srv.batches.configure(BatchFaults(hold=True)); ...; srv.batches.release()

A batch advances only when it is polled (no timers): it ends on the poll after `polls`
"in progress" answers, unless `hold` keeps it running until the test calls `release()`. Each
request is answered as the synchronous route would answer it (scripted replies in order,
else the echo), when the batch ends.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from bastion.testing._fake_server import FakeOpenAIServer, _Answer  # pyright: ignore[reportPrivateUsage]

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BatchFaults:
    """How the next batches behave (see the module docstring)."""

    polls: int = 0  # status polls answered "in progress" before the batch ends
    hold: bool = False  # stay in progress until `FakeBatches.release()`
    expire: bool = False  # the completion window closes: only the first `complete` requests ran
    complete: int = 0
    fail: frozenset[str] | set[str] = frozenset()  # custom ids answered with an error
    reverse: bool = False  # results in reverse order (neither API promises the input order)


@dataclass(slots=True)
class _Batch:
    id: str
    kind: str  # "openai" | "anthropic"
    requests: list[tuple[str, JSON]]
    faults: BatchFaults
    metadata: JSON = field(default_factory=dict[str, Any])
    input_file_id: str = ""
    polls: int = 0
    held: bool = False
    ended: bool = False
    status: str = "in_progress"
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: list[JSON] = field(default_factory=list[JSON])  # Anthropic result lines
    counts: Counter[str] = field(default_factory=Counter[str])
    created: int = field(default_factory=lambda: int(time.time()))


class FakeBatches:
    """Batch state and routes of one `FakeOpenAIServer` (its `batches` attribute)."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self._server = server
        self.faults = BatchFaults()
        self.batches: dict[str, _Batch] = {}
        self.files: dict[str, bytes] = {}
        self.counts: Counter[str] = Counter()  # "upload", "create", "poll", "results" requests
        self._ids = itertools.count(1)
        self._polled = asyncio.Event()

    async def wait_for_polls(self, n: int, timeout: float = 10.0) -> None:
        """Wait until batches were polled `n` times in all (a client is waiting on one)."""
        async with asyncio.timeout(timeout):
            while self.counts["poll"] < n:
                self._polled.clear()
                await self._polled.wait()

    def install(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._openai_create)
        app.router.add_get("/v1/batches", self._openai_list)
        app.router.add_get("/v1/batches/{id}", self._openai_get)
        app.router.add_post("/v1/messages/batches", self._anthropic_create)
        app.router.add_get("/v1/messages/batches/{id}", self._anthropic_get)
        app.router.add_get("/v1/messages/batches/{id}/results", self._anthropic_results)

    def configure(self, faults: BatchFaults) -> None:
        """How batches created from now on behave."""
        self.faults = faults

    def release(self) -> None:
        """Let held batches end on their next poll."""
        for batch in self.batches.values():
            batch.held = False

    def reset(self) -> None:
        self.faults = BatchFaults()
        self.batches.clear()
        self.files.clear()
        self.counts.clear()

    @property
    def submitted(self) -> int:
        """Batches created (both APIs)."""
        return self.counts["create"]

    # --- OpenAI --------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        self.counts["upload"] += 1
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return _bad("upload a multipart form with purpose=batch and a 'file' part")
        content = upload.file.read()
        fid = f"file-fake{next(self._ids)}"
        self.files[fid] = content
        return web.json_response({"id": fid, "object": "file", "bytes": len(content), "purpose": "batch"})

    async def _file_content(self, request: web.Request) -> web.Response:
        self.counts["results"] += 1
        content = self.files.get(request.match_info["id"])
        if content is None:
            return _bad("no such file", 404)
        return web.Response(body=content, content_type="application/jsonl")

    async def _openai_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        content = self.files.get(body.get("input_file_id", ""))
        if content is None or body.get("endpoint") != "/v1/chat/completions":
            return _bad("input_file_id must name an uploaded file and endpoint must be /v1/chat/completions")
        lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        self.counts["create"] += 1
        bid = f"batch_fake{next(self._ids)}"
        batch = _Batch(bid, "openai", [(str(x["custom_id"]), x["body"]) for x in lines], self.faults)
        batch.metadata = body.get("metadata") or {}
        batch.input_file_id = body["input_file_id"]
        batch.held = self.faults.hold
        self.batches[bid] = batch
        return web.json_response(self._openai_view(batch))

    async def _openai_list(self, request: web.Request) -> web.Response:
        data = [self._openai_view(b) for b in reversed(self.batches.values()) if b.kind == "openai"]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def _openai_get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.kind != "openai":
            return _bad("no such batch", 404)
        self._advance(batch)
        return web.json_response(self._openai_view(batch))

    def _openai_view(self, b: _Batch) -> JSON:
        return {
            "id": b.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": b.input_file_id,
            "completion_window": "24h",
            "status": b.status,
            "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id,
            "created_at": b.created,
            "request_counts": {
                "total": len(b.requests),
                "completed": b.counts["completed"],
                "failed": b.counts["failed"],
            },
            "metadata": b.metadata,
        }

    # --- Anthropic -----------------------------------------------------------------------------

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return _bad("body must have a non-empty 'requests' list of {custom_id, params}")
        self.counts["create"] += 1
        bid = f"msgbatch_fake{next(self._ids)}"
        batch = _Batch(bid, "anthropic", [(str(r["custom_id"]), r["params"]) for r in requests], self.faults)
        batch.held = self.faults.hold
        self.batches[bid] = batch
        return web.json_response(self._anthropic_view(batch))

    async def _anthropic_get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.kind != "anthropic":
            return _bad("no such batch", 404)
        self._advance(batch)
        return web.json_response(self._anthropic_view(batch))

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        self.counts["results"] += 1
        batch = self.batches.get(request.match_info["id"])
        if batch is None or not batch.ended:
            return _bad("no results: the batch has not ended", 404)
        text = "".join(json.dumps(line) + "\n" for line in batch.results)
        return web.Response(text=text, content_type="application/binary")

    def _anthropic_view(self, b: _Batch) -> JSON:
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": "ended" if b.ended else "in_progress",
            "request_counts": {
                "processing": 0 if b.ended else len(b.requests),
                "succeeded": b.counts["completed"],
                "errored": b.counts["failed"],
                "canceled": 0,
                "expired": b.counts["expired"],
            },
            "created_at": b.created,
            "ended_at": b.created if b.ended else None,
            "results_url": f"{self._server.base_url}/messages/batches/{b.id}/results" if b.ended else None,
        }

    # --- running a batch -----------------------------------------------------------------------

    def _advance(self, batch: _Batch) -> None:
        self.counts["poll"] += 1
        self._polled.set()
        if batch.ended or batch.held:
            return
        batch.polls += 1
        if batch.polls > batch.faults.polls:
            self._finish(batch)

    def _finish(self, b: _Batch) -> None:
        faults = b.faults
        out: list[JSON] = []
        errors: list[JSON] = []
        for n, (cid, body) in enumerate(b.requests):
            if faults.expire and n >= faults.complete:
                b.counts["expired"] += 1
                if b.kind == "openai":
                    message = "This request could not be executed before the completion window expired."
                    errors.append(_openai_line(cid, None, {"code": "batch_expired", "message": message}))
                else:
                    b.results.append({"custom_id": cid, "result": {"type": "expired"}})
            elif cid in faults.fail:
                b.counts["failed"] += 1
                error = {"type": "invalid_request_error", "message": f"injected failure of {cid}"}
                if b.kind == "openai":
                    errors.append(_openai_line(cid, {"status_code": 400, "body": {"error": error}}, None))
                else:
                    wrapped = {"type": "error", "error": error}
                    b.results.append({"custom_id": cid, "result": {"type": "errored", "error": wrapped}})
            else:
                b.counts["completed"] += 1
                if b.kind == "openai":
                    response = {"status_code": 200, "request_id": f"req_{n}", "body": self._openai_body(body)}
                    out.append(_openai_line(cid, response, None))
                else:
                    message = self._anthropic_body(body)
                    b.results.append({"custom_id": cid, "result": {"type": "succeeded", "message": message}})
        if faults.reverse:
            out.reverse()
            errors.reverse()
            b.results.reverse()
        if b.kind == "openai":
            b.output_file_id = self._file(out) if out else None
            b.error_file_id = self._file(errors) if errors else None
            b.status = "expired" if faults.expire else "completed"
        b.ended = True

    def _file(self, lines: list[JSON]) -> str:
        fid = f"file-fake{next(self._ids)}"
        self.files[fid] = "".join(json.dumps(line) + "\n" for line in lines).encode()
        return fid

    def _answer(self, body: JSON, shape: Any, schema: Any, forced: JSON | None) -> _Answer:
        size = len(json.dumps(body))
        return self._server._answer(body, shape, schema, forced, size)  # pyright: ignore[reportPrivateUsage]

    def _openai_body(self, body: JSON) -> JSON:
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
        a = self._answer(body, "openai", schema, None)
        message: JSON = {"role": "assistant", "content": a.text or None}
        if a.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in a.calls
            ]
        u = a.usage
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": a.finish}],
            "usage": {
                "prompt_tokens": u.input_tokens,
                "completion_tokens": u.output_tokens,
                "total_tokens": u.input_tokens + u.output_tokens,
            },
        }

    def _anthropic_body(self, body: JSON) -> JSON:
        forced: JSON | None = None
        choice = body.get("tool_choice") or {}
        if choice.get("type") == "tool":
            forced = next((t for t in body.get("tools") or () if t.get("name") == choice.get("name")), None)
        a = self._answer(body, "anthropic", None, forced)
        content: list[JSON] = [{"type": "text", "text": a.text}] if a.text else []
        content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in a.calls]
        stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
        return {
            "id": f"msg_fake{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-fake"),
            "content": content,
            "stop_reason": stop[a.finish],
            "stop_sequence": None,
            "usage": {"input_tokens": a.usage.input_tokens, "output_tokens": a.usage.output_tokens},
        }


def _openai_line(cid: str, response: JSON | None, error: JSON | None) -> JSON:
    return {"id": f"batch_req_{cid}", "custom_id": cid, "response": response, "error": error}


def _bad(message: str, status: int = 400) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


__all__ = ["BatchFaults", "FakeBatches"]
